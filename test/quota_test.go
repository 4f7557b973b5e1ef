package test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// quotaEnv is limitsEnv with storage measured on demand, as serve's
// --storage-interval would.
type quotaEnv struct{ *limitsEnv }

// measure measures every tenant's storage now and returns sub's.
func (e quotaEnv) measure(t *testing.T, sub string) int64 {
	t.Helper()
	ctx := ctxT(t)
	if measured, err := e.cat.MeasureStorage(ctx, 0); err != nil || !measured {
		t.Fatalf("MeasureStorage = %v, %v; want a round measured", measured, err)
	}
	tn, err := e.cat.Show(ctx, sub)
	if err != nil {
		t.Fatal(err)
	}
	if tn.StorageBytes == nil || tn.StorageMeasuredAt == nil {
		t.Fatalf("tenant %s: no storage figure after a measuring round", sub)
	}
	return *tn.StorageBytes
}

// fill inserts about 4 MB into users: 2,500 rows of 1.5 kB, under the
// size PostgreSQL compresses.
func fill(c *pgx.Conn) error {
	_, err := c.Exec(context.Background(), `INSERT INTO users (username, display_name)
		SELECT 'fill' || g, (SELECT string_agg(md5((g * 100 + i)::text), '') FROM generate_series(1, 48) i)
		FROM generate_series(1, 2500) g ON CONFLICT DO NOTHING`)
	return err
}

const insertOne = "INSERT INTO users (username) VALUES ('one' || (random() * 1e9)::bigint)"

// within5s runs f every 100 ms until it returns nil, for up to 5 s
// (the limits refresh once a second), and fails with its last error.
func within5s(t *testing.T, what string, f func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = f(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// readOnlyError checks err is 25006 with the quota's hint.
func readOnlyError(err error, sub string) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		return errors.New("got " + sqlstateOf(err) + "; want 25006")
	}
	if !strings.Contains(pgErr.Hint, `tenant "`+sub+`" is over its storage quota (`) || !strings.Contains(pgErr.Hint, "raise storage_mb") {
		return errors.New("25006 without the quota's hint: " + pgErr.Message + " / HINT: " + pgErr.Hint)
	}
	return nil
}

// TestStorageQuotaReadOnly: in each tier and pool mode, a tenant filled
// past its storage_mb becomes read-only (INSERT: 25006 with a hint naming
// the quota; SELECT works), cannot make its transactions read-write
// again, may delete, and is writable again once measured back under;
// another tenant writes throughout.
func TestStorageQuotaReadOnly(t *testing.T) {
	e := quotaEnv{newLimitsEnv(t)}
	for _, sub := range []string{"acme", "initech", "umbrella"} {
		for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
			t.Run(sub+"/"+mode, func(t *testing.T) { testStorageQuota(t, e, mode, sub) })
		}
	}
}

func testStorageQuota(t *testing.T, e quotaEnv, mode, sub string) {
	ctx := ctxT(t)
	c, other := e.connect(t, mode, sub), e.connect(t, mode, "globex")
	if sub == "umbrella" {
		// Made while writable; PostgreSQL refuses its write once read-only.
		if _, err := c.Exec(ctx, `CREATE OR REPLACE FUNCTION w() RETURNS int LANGUAGE sql
			AS $$INSERT INTO users (username) VALUES ('fn' || (random() * 1e9)::bigint) RETURNING 1$$`); err != nil {
			t.Fatalf("CREATE FUNCTION: %v", err)
		}
	}
	// In transaction mode, a client pinned to its server connection while
	// its tenant is writable: the proxy cannot make that connection
	// read-only, so it runs nothing until it reconnects.
	var pinned *pgx.Conn
	if mode == proxy.PoolTransaction {
		pinned = e.connect(t, mode, sub)
		if _, err := pinned.Exec(ctx, "PREPARE p AS SELECT 1", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("PREPARE: %v", err)
		}
	}
	// Prepared while writable, these would run at a Bind, which shows no
	// SQL, first thing in a read-only transaction, where PostgreSQL still
	// lets it become read-write: refused for every tenant.
	for _, sql := range []string{"SET transaction_read_only = off", "BEGIN READ WRITE"} {
		if _, err := c.Prepare(ctx, "rw", sql); sqlstateOf(err) != "42501" {
			t.Fatalf("preparing %q: %v; want 42501", sql, err)
		}
	}
	quotaMB := e.measure(t, sub)>>20 + 2
	e.limit(t, sub, catalog.LimitStorageMB, val(float64(quotaMB)))
	t.Cleanup(func() {
		// A failed run leaves the next one what it found.
		e.limit(t, sub, catalog.LimitStorageMB, nil)
		e.connect(t, mode, sub).Exec(ctx, "DELETE FROM users WHERE username LIKE 'fill%'", pgx.QueryExecModeSimpleProtocol) //nolint:errcheck // best effort
	})
	within5s(t, "fill", func() error { return fill(c) })
	if used := e.measure(t, sub); used <= quotaMB<<20 {
		t.Fatalf("%s measured at %d bytes after the fill; want over its quota of %d MB", sub, used, quotaMB)
	}
	within5s(t, "INSERT over the quota", func() error {
		_, err := c.Exec(ctx, insertOne)
		return readOnlyError(err, sub)
	})
	if pinned != nil {
		if _, err := pinned.Exec(ctx, "EXECUTE p", pgx.QueryExecModeSimpleProtocol); readOnlyError(err, sub) != nil {
			t.Fatalf("a client pinned before the tenant went read-only: %v; want 25006 (reconnect)", err)
		}
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil || n < 2500 {
		t.Fatalf("SELECT while read-only: %d rows, %v", n, err)
	}
	if _, err := other.Exec(ctx, insertOne); err != nil {
		t.Fatalf("globex, under its quota, INSERT: %v", err)
	}
	tryBypasses(t, c, sub)
	if sub == "umbrella" {
		if _, err := c.Exec(ctx, "SELECT w()"); sqlstateOf(err) != "25006" {
			t.Fatalf("a function's INSERT while read-only: %v; want 25006", err)
		}
	}

	if mode == proxy.PoolTransaction {
		// PREPARE (tryBypasses) pinned c to its server connection, which
		// then runs only read-only transactions, deletes included.
		_, err := c.Exec(ctx, "DELETE FROM users WHERE username LIKE 'fill%'", pgx.QueryExecModeSimpleProtocol)
		if readOnlyError(err, sub) != nil {
			t.Fatalf("DELETE from a pinned client: %v; want 25006 with the quota's hint", err)
		}
		c = e.connect(t, mode, sub)
	}
	if _, err := c.Exec(ctx, "DELETE FROM users WHERE username LIKE 'fill%'", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("DELETE while read-only: %v", err)
	}
	e.reclaim(t, c, sub)
	if used := e.measure(t, sub); used > quotaMB<<20 {
		t.Fatalf("%s measured at %d bytes after the delete; want under its quota of %d MB", sub, used, quotaMB)
	}
	within5s(t, "INSERT back under the quota", func() error {
		_, err := c.Exec(ctx, insertOne)
		return err
	})
	if _, err := c.Exec(ctx, insertOne, pgx.QueryExecModeExec); err != nil {
		t.Fatalf("INSERT in the extended protocol back under the quota: %v", err)
	}
	usage, err := e.cat.Usage(ctx, sub, time.Now().Add(-time.Hour))
	if err != nil || len(usage) == 0 || usage[len(usage)-1].StorageMB == nil || *usage[len(usage)-1].StorageMB <= quotaMB {
		t.Fatalf("%s's usage this hour: %+v, %v; want storage_mb over its quota of %d (the hour's highest)", sub, usage, err, quotaMB)
	}
}

// reclaim returns the space of the rows sub deleted to the file system,
// which the schema and database tiers measure (the shared tier counts
// rows): a database-tier tenant may VACUUM FULL itself, as VACUUM runs in
// a read-only transaction; a schema-tier tenant, which may not, has the
// operator run it (or autovacuum truncate the table's empty end).
func (e quotaEnv) reclaim(t *testing.T, c *pgx.Conn, sub string) {
	t.Helper()
	var err error
	switch sub {
	case "umbrella":
		_, err = c.Exec(ctxT(t), "VACUUM FULL users", pgx.QueryExecModeSimpleProtocol)
	case "initech":
		err = e.cluster.Exec(ctxT(t), migrations.SchemaDatabase, "VACUUM FULL "+pgx.Identifier{e.objectName(t, sub), "users"}.Sanitize())
	}
	if err != nil {
		t.Fatalf("VACUUM: %v", err)
	}
}

// tryBypasses tries, on c of read-only tenant sub, the ways to a
// read-write transaction: each is refused or has no effect: an INSERT
// after each still gets 25006, and the tenant's rows stay as they were.
// A write the proxy cannot see (a prepared statement's; for the database
// tier, which may create functions, a function's) shows whether
// PostgreSQL's read-only transaction still holds.
func tryBypasses(t *testing.T, c *pgx.Conn, sub string) {
	t.Helper()
	ctx := ctxT(t)
	hidden := "EXECUTE ins"
	if sub == "umbrella" {
		hidden = "SELECT w()"
	}
	var before, after int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&before); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "PREPARE ins AS "+insertOne, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("PREPARE: %v", err)
	}
	for _, sql := range [][]string{
		{"SET transaction_read_only = off", hidden},
		{"SET default_transaction_read_only = off", hidden},
		{"RESET default_transaction_read_only", hidden},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", hidden},
		{"SELECT set_config('default_transaction_read_only', 'off', false)", hidden},
		{"SET transaction_read_only = off; " + hidden},
		{"BEGIN READ WRITE; " + hidden + "; COMMIT"},
		{"START TRANSACTION READ WRITE", hidden, "COMMIT"},
		{"BEGIN", "SET TRANSACTION READ WRITE", hidden, "COMMIT"},
		{"BEGIN; SET LOCAL transaction_read_only = off; " + hidden + "; COMMIT"},
		{"SELECT 1; COMMIT; " + hidden},
		{"DELETE FROM users WHERE false; " + insertOne},
		{"WITH x AS (" + insertOne + " RETURNING id) DELETE FROM users WHERE id IN (SELECT id FROM x)"},
		{"DELETE FROM users WHERE username = 'nobody' AND (SELECT count(*) FROM (" + insertOne + " RETURNING 1) i) > 0"},
		{"DELETE FROM users WHERE false", hidden},
	} {
		for _, q := range sql {
			c.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol) //nolint:errcheck // refused or not, what counts is below
		}
		if _, err := c.Exec(ctx, "ROLLBACK", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("ROLLBACK after %q: %v", sql, err)
		}
		if _, err := c.Exec(ctx, insertOne); readOnlyError(err, sub) != nil {
			t.Fatalf("after %q, INSERT: %v; want 25006 with the quota's hint", sql, err)
		}
		if _, err := c.Exec(ctx, hidden, pgx.QueryExecModeSimpleProtocol); sqlstateOf(err) != "25006" {
			t.Fatalf("after %q, %s: %v; want 25006", sql, hidden, err)
		}
	}
	if _, err := c.Exec(ctx, "DEALLOCATE ins", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("DEALLOCATE: %v", err)
	}
	if err := c.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&after); err != nil || after != before {
		t.Fatalf("%s had %d rows before the attempts and %d after (%v); want none added", sub, before, after, err)
	}
}
