package catalog

import "testing"

func TestTableSharesSplitsSizeByRows(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int64
		counts map[string]int64
		want   map[string]int64
	}{
		{"one tenant has it all", 8192, map[string]int64{"a": 10}, map[string]int64{"a": 8192}},
		{"in proportion", 1000, map[string]int64{"a": 1, "b": 3}, map[string]int64{"a": 250, "b": 750}},
		{"rounded down", 10, map[string]int64{"a": 1, "b": 2}, map[string]int64{"a": 3, "b": 6}},
		{"no rows: nobody is charged", 16384, map[string]int64{}, map[string]int64{}},
		{"large tables do not overflow", 1 << 50, map[string]int64{"a": 1 << 40, "b": 1 << 40}, map[string]int64{"a": 1 << 49, "b": 1 << 49}},
	} {
		got := tableShares(tc.size, tc.counts)
		if len(got) != len(tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
			continue
		}
		for id, w := range tc.want {
			if got[id] != w {
				t.Errorf("%s: tenant %s gets %d bytes, want %d", tc.name, id, got[id], w)
			}
		}
	}
}

func TestStorageQuotaLevels(t *testing.T) {
	n := func(v int64) *int64 { return &v }
	const mb = 1 << 20
	for _, tc := range []struct {
		name  string
		used  *int64
		limit int64
		want  QuotaLevel
	}{
		{"not measured", nil, 10, QuotaUnder},
		{"no limit", n(100 * mb), 0, QuotaUnder},
		{"below 80%", n(8*mb - 1), 10, QuotaUnder},
		{"at 80%", n(8 * mb), 10, QuotaWarning},
		{"exactly at the quota is not over it", n(10 * mb), 10, QuotaWarning},
		{"one byte over", n(10*mb + 1), 10, QuotaOver},
	} {
		if got := StorageQuota(tc.used, tc.limit); got != tc.want {
			t.Errorf("%s: StorageQuota = %v, want %v", tc.name, got, tc.want)
		}
	}
}
