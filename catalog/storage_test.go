package catalog

import "testing"

func TestRowBytesChargesDataAndTupleOverhead(t *testing.T) {
	for _, tc := range []struct{ rows, data, want int64 }{
		{0, 0, 0},
		{1, 4, 32},
		{1000, 100_000, 128_000},
	} {
		if got := rowBytes(tc.rows, tc.data); got != tc.want {
			t.Errorf("rowBytes(%d rows, %d bytes) = %d; want %d", tc.rows, tc.data, got, tc.want)
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
