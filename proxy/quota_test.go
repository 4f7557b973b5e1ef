package proxy

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/policy"
)

func quotaTenant(usedBytes int64, limitMB int64) *catalog.Tenant {
	t := &catalog.Tenant{Subdomain: "acme"}
	t.StorageBytes = &usedBytes
	t.Limits.StorageMB = limitMB
	return t
}

// TestQuotaDecision: which transactions of a tenant start read-only, and
// which client messages the proxy refuses, with what.
func TestQuotaDecision(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	s := &Server{policy: policy.New(), log: zap.New(core)}
	var err error
	if s.metrics, err = newMetrics(prometheus.NewRegistry(), func() float64 { return 0 }); err != nil {
		t.Fatal(err)
	}
	tl := &tenantLimits{}
	query := func(sql string) []byte { return queryMessage(sql) }

	s.applyQuota(quotaTenant(9<<20, 10), tl)
	if k := s.quotaStart(tl, pgwire.Query, []byte("INSERT INTO t VALUES (1)"), true); k != quotaNone {
		t.Fatalf("at 90%%: %v; want quotaNone", k)
	}
	if err := s.quotaRefusal("acme", tl, quotaNone, pgwire.Query, query("INSERT INTO t VALUES (1)")); err != nil {
		t.Fatalf("at 90%%, INSERT refused: %v", err)
	}

	s.applyQuota(quotaTenant(12<<20+1<<19, 10), tl)
	for _, tc := range []struct {
		sql   string
		alone bool
		want  quotaTx
	}{
		{"SELECT 1", true, quotaReadOnly},
		{"DELETE FROM t WHERE a < 3", true, quotaFrees},
		{"DELETE FROM t WHERE a < 3", false, quotaReadOnly},
		{"DELETE FROM t WHERE f(a)", true, quotaReadOnly},
	} {
		if k := s.quotaStart(tl, pgwire.Query, []byte(tc.sql), tc.alone); k != tc.want {
			t.Errorf("over the quota, %q (alone %v) starts as %v; want %v", tc.sql, tc.alone, k, tc.want)
		}
	}
	if k := s.quotaStart(tl, pgwire.Parse, []byte("DELETE FROM t"), true); k != quotaReadOnly {
		t.Errorf("a delete in the extended protocol starts as %v; want read-only", k)
	}
	for _, tc := range []struct {
		kind    quotaTx
		sql     string
		refused bool
	}{
		{quotaReadOnly, "SELECT * FROM t", false},
		{quotaReadOnly, "INSERT INTO t VALUES (1)", true},
		{quotaReadOnly, "SET default_transaction_read_only = off", true},
		{quotaReadOnly, "DELETE FROM t", true},
		{quotaFrees, "DELETE FROM t WHERE a < now()", true},
		{quotaFrees, "DELETE FROM t", false},
		{quotaFrees, "SELECT 1", true},
		{quotaStale, "SELECT 1", true},
	} {
		err := s.quotaRefusal("acme", tl, tc.kind, pgwire.Query, query(tc.sql))
		if (err != nil) != tc.refused {
			t.Errorf("%q in a %v transaction: %v; want refused %v", tc.sql, tc.kind, err, tc.refused)
			continue
		}
		var e *pgerr.Error
		if err != nil && (!errors.As(err, &e) || e.Code != pgerr.CodeReadOnly || e.Hint != `tenant "acme" is over its storage quota (12.5 MB of 10 MB); delete data or raise storage_mb`) {
			t.Errorf("%q: %#v; want 25006 with the quota's hint", tc.sql, err)
		}
	}
	if got := testutil.ToFloat64(s.metrics.quota.readOnly.WithLabelValues("acme")); got != 1 {
		t.Errorf("tenantproxy_read_only_tenants{tenant=acme} = %v; want 1", got)
	}
	if got := testutil.ToFloat64(s.metrics.quota.limit.WithLabelValues("acme")); got != 10<<20 {
		t.Errorf("tenantproxy_tenant_storage_limit_bytes{tenant=acme} = %v; want %d", got, 10<<20)
	}

	// The tenant's sessions all left and one came back: no new warning.
	s.applyQuota(quotaTenant(12<<20+1<<19, 10), &tenantLimits{})
	s.applyQuota(quotaTenant(1<<20, 10), tl)
	if k := s.quotaStart(tl, pgwire.Query, []byte("INSERT INTO t VALUES (1)"), true); k != quotaNone {
		t.Fatalf("back under: %v; want quotaNone", k)
	}
	var lines []string
	for _, l := range logs.All() {
		lines = append(lines, l.Level.String()+" "+l.Message+" "+l.ContextMap()["tenant"].(string))
	}
	want := []string{
		"warn tenant over 80% of its storage quota acme",
		"warn tenant over its storage quota: read-only until back under acme",
		"info tenant back under its storage quota acme",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("logs:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
