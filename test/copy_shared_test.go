package test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// copyEnv is proxyEnv with a proxy per pool mode and the shared tier's
// two tenants' ids, for COPY FROM STDIN in the shared tier, which
// PostgreSQL refuses under row-level security and the proxy runs as a
// load through a staging table (proxy/copyshared.go).
type copyEnv struct {
	*proxyEnv
	addrs         map[string]string
	acme, globex  string // tenant ids: the values of tenant_id
	sharedDB      string
	psql          string
	adminOfShared *pgx.Conn
}

func newCopyEnv(t *testing.T) *copyEnv {
	t.Helper()
	e := &copyEnv{proxyEnv: newProxyEnv(t), addrs: map[string]string{}, psql: clientTool(t, "psql")}
	for _, mode := range poolModes {
		_, e.addrs[mode] = e.startProxy(t, proxy.Config{PoolMode: mode})
	}
	ctx := ctxT(t)
	for sub, id := range map[string]*string{"acme": &e.acme, "globex": &e.globex} {
		tn, err := e.cat.Show(ctx, sub)
		if err != nil {
			t.Fatal(err)
		}
		*id, e.sharedDB = tn.ID, tn.Database
	}
	e.adminOfShared = connect(t, e.cluster.DSN(e.sharedDB))
	if _, err := e.conn(t, proxy.PoolSession, "globex").Exec(ctx, "INSERT INTO users (username) VALUES ('u-globex')"); err != nil {
		t.Fatal(err)
	}
	return e
}

// conn connects as sub's admin user through the proxy of mode.
func (e *copyEnv) conn(t *testing.T, mode, sub string) *pgx.Conn {
	t.Helper()
	return connect(t, dsn(e.addrs[mode], "alice."+sub, tenantPassword))
}

// users returns "tenant_id:username" of the users whose name starts with
// prefix, as the server holds them (read directly, past RLS).
func (e *copyEnv) users(t *testing.T, prefix string) []string {
	t.Helper()
	rows, err := e.adminOfShared.Query(ctxT(t), "SELECT tenant_id || ':' || username FROM users WHERE username LIKE $1 || '%' ORDER BY username", prefix)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// noStagingTable checks that no load left its staging table on any
// server connection.
func (e *copyEnv) noStagingTable(t *testing.T) {
	t.Helper()
	var n int
	if err := e.adminOfShared.QueryRow(ctxT(t), "SELECT count(*) FROM pg_class WHERE relname = 'tenantproxy_copy'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("staging tables left: %d, %v", n, err)
	}
}

func wantRows(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s: %q; want %q", what, got, want)
	}
}

func TestSharedTierCopyFromStdin(t *testing.T) {
	e := newCopyEnv(t)
	for i, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			ctx := ctxT(t)
			acme := e.conn(t, mode, "acme")
			p := fmt.Sprintf("copy%d-", i) // usernames of this mode's rows
			id := int64(1000 * (i + 1))

			// pgx's CopyFrom (binary), the data naming another tenant.
			n, err := acme.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"id", "username", "tenant_id"},
				pgx.CopyFromSlice(3, func(j int) ([]any, error) { return []any{id + int64(j), fmt.Sprintf("%spgx%d", p, j), e.globex}, nil }))
			if err != nil || n != 3 {
				t.Fatalf("CopyFrom = %d, %v; want 3 rows", n, err)
			}
			wantRows(t, "rows after CopyFrom", e.users(t, p+"pgx"), e.acme+":"+p+"pgx0", e.acme+":"+p+"pgx1", e.acme+":"+p+"pgx2")
			var seen int
			if err := e.conn(t, mode, "globex").QueryRow(ctx, "SELECT count(*) FROM users WHERE username LIKE $1", p+"%").Scan(&seen); err != nil || seen != 0 {
				t.Fatalf("globex sees %d of acme's copied rows (%v); want 0", seen, err)
			}

			// psql's \copy, CSV, with and without a column list.
			dir := t.TempDir()
			url := dsn(e.addrs[mode], "alice.acme", tenantPassword)
			listed := filepath.Join(dir, "listed.csv")
			writeFile(t, listed, fmt.Sprintf("%d,%spsql0\n%d,%spsql1\n", id+10, p, id+11, p))
			out := run(t, e.psql, url, "-X", "-c", fmt.Sprintf(`\copy users (id, username) FROM '%s' CSV`, listed))
			if !strings.Contains(out, "COPY 2") {
				t.Fatalf(`\copy with a column list said %q; want COPY 2`, out)
			}
			// Without a column list the data holds every column, the
			// tenant's last (the shared tier's form of the chat app),
			// here globex's.
			all := filepath.Join(dir, "all.csv")
			writeFile(t, all, fmt.Sprintf("%d,%sall0,Zed,,2024-01-01 00:00:00+00,%s\n", id+20, p, e.globex))
			out = run(t, e.psql, url, "-X", "-c", fmt.Sprintf(`\copy users FROM '%s' CSV`, all))
			if !strings.Contains(out, "COPY 1") {
				t.Fatalf(`\copy without a column list said %q; want COPY 1`, out)
			}
			// A dump's data section read by psql from its script: the rows
			// are data, not SQL, and load as the session's tenant's.
			script := filepath.Join(dir, "dump.sql")
			writeFile(t, script, fmt.Sprintf("COPY public.users (tenant_id, id, username) FROM stdin;\n%s\t%d\t%sdump0\n\\.\nSELECT 'after the data';\n", e.globex, id+25, p))
			out = run(t, e.psql, url, "-X", "-v", "ON_ERROR_STOP=1", "-f", script)
			if !strings.Contains(out, "COPY 1") || !strings.Contains(out, "after the data") {
				t.Fatalf("psql -f of a data section said %q; want COPY 1, then the query after it", out)
			}
			wantRows(t, "rows after psql -f", e.users(t, p+"dump"), e.acme+":"+p+"dump0")
			wantRows(t, `rows after \copy`, e.users(t, p+"all"), e.acme+":"+p+"all0")
			wantRows(t, `rows after \copy`, e.users(t, p+"psql"), e.acme+":"+p+"psql0", e.acme+":"+p+"psql1")

			// Bad data: PostgreSQL's 22P02, nothing loaded, and inside a
			// transaction the transaction fails as after a server error.
			pc := acme.PgConn()
			_, err = pc.CopyFrom(ctx, strings.NewReader(fmt.Sprintf("%d\t%sbad0\nnot-a-number\t%sbad1\n", id+30, p, p)), "COPY users (id, username) FROM STDIN")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "22P02" || !strings.HasPrefix(pgErr.Where, "COPY users, line 2, column id") {
				t.Fatalf("COPY of bad data: %#v; want 22P02 with the context COPY users, line 2, column id", err)
			}
			wantRows(t, "rows after bad data", e.users(t, p+"bad"))
			if _, err := pc.Exec(ctx, "BEGIN").ReadAll(); err != nil {
				t.Fatal(err)
			}
			_, err = pc.CopyFrom(ctx, strings.NewReader("x\ty\n"), "COPY users (id, username) FROM STDIN")
			if sqlstateOf(err) != "22P02" || pc.TxStatus() != 'E' {
				t.Fatalf("COPY of bad data in a transaction: %v, status %c; want 22P02, E", err, pc.TxStatus())
			}
			if _, err := pc.Exec(ctx, "SELECT 1").ReadAll(); sqlstateOf(err) != "25P02" {
				t.Fatalf("statement after the failed COPY: %v; want 25P02", err)
			}
			if _, err := pc.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
				t.Fatal(err)
			}

			// The client gives up (CopyFail): 57014, nothing loaded.
			_, err = pc.CopyFrom(ctx, &failingReader{data: fmt.Sprintf("%d\t%sfail0\n", id+35, p)}, "COPY users (id, username) FROM STDIN")
			if sqlstateOf(err) != "57014" {
				t.Fatalf("COPY the client failed: %v; want 57014", err)
			}
			wantRows(t, "rows after CopyFail", e.users(t, p+"fail"))

			// Not rewritten: sent with the extended protocol, the COPY
			// gets PostgreSQL's own refusal, and the connection goes on.
			_, err = pc.ExecParams(ctx, "COPY users (id, username) FROM STDIN", nil, nil, nil, nil).Close()
			if sqlstateOf(err) != "0A000" {
				t.Fatalf("COPY FROM STDIN in the extended protocol: %v; want PostgreSQL's 0A000", err)
			}

			// A duplicate of the tenant's own row: 23505, no COPY tag.
			_, err = pc.CopyFrom(ctx, strings.NewReader(fmt.Sprintf("%d\t%spgx0\n", id+40, p)), "COPY users (id, username) FROM STDIN")
			if sqlstateOf(err) != "23505" {
				t.Fatalf("COPY of a duplicate username: %v; want 23505", err)
			}

			// The load is the client's statement: the connection goes on,
			// COPY TO still gives only the tenant's rows, and no staging
			// table outlives it.
			var buf strings.Builder
			tag, err := pc.CopyTo(ctx, &buf, "COPY users (username) TO STDOUT")
			if err != nil || strings.Contains(buf.String(), "u-globex") || !strings.Contains(buf.String(), p+"psql1") {
				t.Fatalf("COPY TO = %v, %v: %q; want acme's rows only", tag, err, buf.String())
			}
			e.noStagingTable(t)
		})
	}
}

// failingReader gives data, then an error, which makes pgconn's
// CopyFrom send CopyFail.
type failingReader struct{ data string }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.data == "" {
		return 0, errors.New("the client gave up")
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
