package test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// transparencyScript exercises what a relay could get wrong: result sets
// of several sizes, errors mid-result and mid-transaction, warnings,
// COPY in both directions, multi-statement queries, empty queries and
// prepared statements. Table t is created beforehand, outside the
// proxy: the statement policy decides whether a tenant may run DDL.
const transparencyScript = `
INSERT INTO t SELECT g, repeat('x', g % 300) FROM generate_series(1, 5000) g;
SELECT count(*), sum(length(body)) FROM t;
SELECT id, body FROM t WHERE id % 1000 = 0 ORDER BY id;
SELECT 1 / (id - 2500) FROM t ORDER BY id;
BEGIN;
SELECT 1;
SELECT nosuchcolumn FROM t;
SELECT 2;
ROLLBACK;
ROLLBACK;
COPY (SELECT id, body FROM t WHERE id < 4) TO STDOUT;
COPY t FROM STDIN;
9001	copied in
9002	\N
\.
SELECT * FROM t WHERE id > 9000 ORDER BY id;
SELECT 1 \; SELECT 2 \; SELECT 3;
;
PREPARE q(int) AS SELECT body FROM t WHERE id = $1;
EXECUTE q(9001);
DEALLOCATE q;
DELETE FROM t;
`

// TestTransparency runs the same psql script directly against the
// database-tier tenant's database and through the proxy, and requires
// the same output, byte for byte.
func TestTransparency(t *testing.T) {
	e := newProxyEnv(t)
	_, addr := e.startProxy(t, proxy.Config{})
	ctx := ctxT(t)
	// The tenant owns its database's schema: its table is its own.
	if _, err := connect(t, dsn(addr, "alice.umbrella", tenantPassword)).Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY, body text)"); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "script.sql")
	if err := os.WriteFile(script, []byte(transparencyScript), 0o644); err != nil {
		t.Fatal(err)
	}
	psql := clientTool(t, "psql")
	args := []string{"-X", "-a", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=verbose", "-f", script}
	// Both run as the tenant's login role, so ownership and permissions
	// match.
	direct, _ := runErr(psql, append([]string{e.tenantLoginDSN(t, "umbrella", e.objectName(t, "umbrella"))}, args...)...)
	proxied, _ := runErr(psql, append([]string{dsn(addr, "alice.umbrella", tenantPassword)}, args...)...)
	if direct != proxied {
		t.Fatalf("output differs\n--- direct\n%s\n--- through the proxy\n%s", direct, proxied)
	}
	t.Logf("%d bytes of identical output", len(direct))
}
