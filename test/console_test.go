package test

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/lib/pq"

	"github.com/tenantproxy/tenantproxy/console"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

const (
	consoleUser     = "ops"
	consolePassword = "console-secret-42"
)

// consoleEnv is a transaction-mode proxy with the admin console on, and
// counts of the RELOAD and SHUTDOWN hooks' calls.
type consoleEnv struct {
	*proxyEnv
	srv                *proxy.Server
	cons               *console.Console
	addr               string
	reloads, shutdowns atomic.Int32
}

func newConsoleEnv(t *testing.T) *consoleEnv {
	t.Helper()
	e := &consoleEnv{proxyEnv: newProxyEnvWith(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 4})}
	var err error
	e.cons, err = console.New(console.Config{
		User: consoleUser, Password: consolePassword, Tenants: e.cat, Pools: e.pool, Version: "tenantproxy test",
		Reload:   func() error { e.reloads.Add(1); return nil },
		Shutdown: func() { e.shutdowns.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	e.srv, e.addr = e.startProxy(t, proxy.Config{PoolMode: proxy.PoolTransaction, Console: e.cons})
	return e
}

// consoleDSN is a key=value connection string for the console database db.
func consoleDSN(addr, db, user, password string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s dbname=%s user=%s password=%s sslmode=disable", host, port, db, user, password)
}

// consoleConn is a pgconn to the console, for commands whose errors a
// test looks at.
func consoleConn(t *testing.T, addr string) *pgconn.PgConn {
	t.Helper()
	c, err := pgconn.Connect(ctxT(t), consoleDSN(addr, "pgbouncer", consoleUser, consolePassword))
	if err != nil {
		t.Fatalf("console login: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// consoleExec runs one console command and returns its result.
func consoleExec(t *testing.T, c *pgconn.PgConn, q string) *pgconn.Result {
	t.Helper()
	res, err := c.Exec(ctxT(t), q).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return res[0]
}

// column returns the value of column name in row i of res.
func column(t *testing.T, res *pgconn.Result, i int, name string) string {
	t.Helper()
	for j, f := range res.FieldDescriptions {
		if f.Name == name {
			return string(res.Rows[i][j])
		}
	}
	t.Fatalf("no column %q in %v", name, res.FieldDescriptions)
	return ""
}

// rowOf returns the index of the row whose first column is key.
func rowOf(t *testing.T, res *pgconn.Result, key string) int {
	t.Helper()
	for i, r := range res.Rows {
		if string(r[0]) == key {
			return i
		}
	}
	t.Fatalf("no row %q", key)
	return -1
}

// TestConsoleCommandsThroughPsql runs every console command with psql, as
// an operator would, and checks the headers PgBouncer prints, that no
// command reached a PostgreSQL server, and what each command did.
func TestConsoleCommandsThroughPsql(t *testing.T) {
	e := newConsoleEnv(t)
	psql := clientTool(t, "psql")
	conninfo := consoleDSN(e.addr, "pgbouncer", consoleUser, consolePassword)
	heads := map[string]string{
		"SHOW POOLS":        "database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|sv_active|sv_active_cancel|sv_being_canceled|sv_idle|sv_used|sv_tested|sv_login|maxwait|maxwait_us|pool_mode|load_balance_hosts",
		"SHOW CLIENTS":      "type|user|database|replication|state|addr|port|local_addr|local_port|connect_time|request_time|wait|wait_us|close_needed|ptr|link|remote_pid|tls|application_name|prepared_statements|id",
		"SHOW SERVERS":      "type|user|database|replication|state|addr|port|local_addr|local_port|connect_time|request_time|wait|wait_us|close_needed|ptr|link|remote_pid|tls|application_name|prepared_statements|id",
		"SHOW STATS":        "database|total_server_assignment_count|total_xact_count|total_query_count|total_received|total_sent|total_xact_time|total_query_time|total_wait_time|total_client_parse_count|total_server_parse_count|total_bind_count|avg_server_assignment_count|avg_xact_count|avg_query_count|avg_recv|avg_sent|avg_xact_time|avg_query_time|avg_wait_time|avg_client_parse_count|avg_server_parse_count|avg_bind_count",
		"SHOW STATS_TOTALS": "database|server_assignment_count|xact_count|query_count|bytes_received|bytes_sent|xact_time|query_time|wait_time|client_parse_count|server_parse_count|bind_count",
		"SHOW DATABASES":    "name|host|port|database|force_user|pool_size|min_pool_size|reserve_pool|server_lifetime|pool_mode|load_balance_hosts|max_connections|current_connections|paused|disabled",
		"SHOW CONFIG":       "key|value|default|changeable",
		"SHOW LISTS":        "list|items",
		"SHOW VERSION":      "version",
	}
	for q, head := range heads {
		out := run(t, psql, conninfo, "-X", "-A", "-c", q)
		if first, _, _ := strings.Cut(out, "\n"); first != head {
			t.Errorf("%s: header %q; want %q", q, first, head)
		}
	}
	if st := e.pool.Stats(); len(st.Pools) != 0 {
		t.Fatalf("console commands opened server pools %+v; the console must never reach PostgreSQL", st.Pools)
	}
	out := run(t, psql, conninfo, "-X", "-A", "-t", "-c", "SHOW DATABASES")
	for _, tt := range tierTenants {
		if !strings.Contains(out, "\n"+tt.sub+"|") && !strings.HasPrefix(out, tt.sub+"|") {
			t.Errorf("SHOW DATABASES has no row for tenant %s:\n%s", tt.sub, out)
		}
	}
	// The tenantproxy database is the same console.
	if out := run(t, psql, consoleDSN(e.addr, "tenantproxy", consoleUser, consolePassword), "-X", "-A", "-t", "-c", "SHOW VERSION"); !strings.HasPrefix(out, "tenantproxy test") {
		t.Errorf("SHOW VERSION on dbname=tenantproxy: %q", out)
	}

	// A tenant client leaves an idle server connection; RECONNECT closes it.
	app := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	if _, err := app.Exec(ctxT(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if out := run(t, psql, conninfo, "-X", "-A", "-t", "-c", "SHOW SERVERS"); !strings.HasPrefix(out, "S|") {
		t.Errorf("SHOW SERVERS lists %q; want the idle server connection", out)
	}
	if out := run(t, psql, conninfo, "-X", "-A", "-t", "-c", "SHOW CLIENTS"); !strings.Contains(out, "C|alice|acme|") {
		t.Errorf("SHOW CLIENTS lists %q; want alice of acme", out)
	}
	for _, cmd := range []string{"PAUSE acme", "RESUME acme", "PAUSE", "RESUME", "DISABLE globex", "ENABLE globex", "KILL initech", "RECONNECT", "RELOAD", "SHUTDOWN"} {
		out := run(t, psql, conninfo, "-X", "-A", "-c", cmd)
		if tag, _, _ := strings.Cut(cmd, " "); strings.TrimSpace(out) != tag {
			t.Errorf("%s printed %q; want %s", cmd, out, tag)
		}
	}
	if servers := e.pool.Stats().Servers; len(servers) != 0 {
		t.Errorf("after RECONNECT server connections %+v remain", servers)
	}
	if e.reloads.Load() != 1 {
		t.Errorf("RELOAD ran the hook %d times; want 1", e.reloads.Load())
	}
	// SHUTDOWN runs its hook after answering, on a goroutine of its own.
	waitFor(t, "SHUTDOWN's hook", func() bool { return e.shutdowns.Load() == 1 })
	out, err := runErr(psql, conninfo, "-X", "-A", "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "invalid command 'SELECT 1'") {
		t.Errorf("SELECT 1 on the console: %v %q; want an invalid command error", err, out)
	}
}

// TestConsoleErrorsAsPgBouncer checks the SQLSTATE of refused commands:
// PgBouncer's console answers 08P01 and stays usable.
func TestConsoleErrorsAsPgBouncer(t *testing.T) {
	e := newConsoleEnv(t)
	c := consoleConn(t, e.addr)
	for _, q := range []string{"SELECT 1", "SHOW FOO", "PAUSE nosuch", "KILL", "SHOW POOLS; SHOW LISTS"} {
		_, err := c.Exec(ctxT(t), q).ReadAll()
		if got := sqlstateOf(err); got != "08P01" {
			t.Errorf("%s: SQLSTATE %s (%v); want 08P01", q, got, err)
		}
	}
	if res := consoleExec(t, c, "show lists;"); len(res.Rows) == 0 {
		t.Error("the console is unusable after errors")
	}
	// The extended protocol is refused, and the connection goes on.
	if _, err := c.Prepare(ctxT(t), "", "SHOW POOLS", nil); sqlstateOf(err) != "08P01" {
		t.Errorf("Parse on the console: %v; want 08P01", err)
	}
	consoleExec(t, c, "SHOW VERSION")
}

// TestConsoleServesPgbouncerExporterQueries issues exactly the queries
// prometheus-community/pgbouncer_exporter (collector.go) sends, through
// lib/pq as it does, and checks that every column it reads is there and
// converts the way its dbToFloat64 converts.
func TestConsoleServesPgbouncerExporterQueries(t *testing.T) {
	e := newConsoleEnv(t)
	// Some traffic, so the rows hold more than zeros.
	app := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	if _, err := app.Exec(ctxT(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("postgres", consoleDSN(e.addr, "pgbouncer", consoleUser, consolePassword))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)

	// getDB's ping.
	rows, err := db.Query("SHOW STATS")
	if err != nil {
		t.Fatalf("SHOW STATS: %v", err)
	}
	rows.Close()

	var version string
	if err := db.QueryRow("SHOW VERSION;").Scan(&version); err != nil || version == "" {
		t.Errorf("SHOW VERSION;: %q, %v", version, err)
	}
	exporterRows(t, db, "SHOW LISTS;", func(cols []string, vals []any) error {
		if len(cols) != 2 {
			return fmt.Errorf("columns %v; the exporter wants 2", cols)
		}
		if !exporterFloat(vals[1]) {
			return fmt.Errorf("items %#v does not parse", vals[1])
		}
		return nil
	}, true)
	exporterRows(t, db, "SHOW CONFIG;", func(cols []string, vals []any) error {
		if len(cols) != 4 {
			return fmt.Errorf("columns %v; the exporter scans 3 or 4", cols)
		}
		if key := fmt.Sprint(vals[0]); (key == "max_client_conn" || key == "max_user_connections") && !exporterFloat(vals[1]) {
			return fmt.Errorf("%s = %#v does not parse", key, vals[1])
		}
		return nil
	}, true)
	// The namespaces and the columns the exporter maps (metricMaps):
	// labels must be strings, integers or NULL, metrics must convert.
	namespaces := map[string]struct{ labels, metrics []string }{
		"databases": {[]string{"name", "host", "port", "database", "force_user", "pool_mode"},
			[]string{"pool_size", "reserve_pool", "max_connections", "current_connections", "paused", "disabled"}},
		"stats_totals": {[]string{"database"},
			[]string{"query_count", "query_time", "bytes_received", "bytes_sent", "wait_time", "xact_count", "xact_time", "client_parse_count", "server_parse_count", "bind_count"}},
		"pools": {[]string{"database", "user"},
			[]string{"cl_active", "cl_active_cancel_req", "cl_waiting", "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait"}},
	}
	for ns, want := range namespaces {
		exporterRows(t, db, fmt.Sprintf("SHOW %s;", ns), func(cols []string, vals []any) error {
			idx := make(map[string]int)
			for i, c := range cols {
				idx[c] = i
			}
			for _, l := range want.labels {
				i, ok := idx[l]
				if !ok {
					return fmt.Errorf("no label column %s", l)
				}
				switch vals[i].(type) {
				case string, int64, nil, []byte:
				default:
					return fmt.Errorf("label %s is a %T", l, vals[i])
				}
			}
			for _, m := range want.metrics {
				i, ok := idx[m]
				if !ok {
					return fmt.Errorf("no metric column %s", m)
				}
				if !exporterFloat(vals[i]) {
					return fmt.Errorf("metric %s = %#v does not convert", m, vals[i])
				}
			}
			return nil
		}, true)
	}
}

// exporterRows runs q and checks each row, scanned into any as the
// exporter scans; nonEmpty wants at least one row.
func exporterRows(t *testing.T, db *sql.DB, q string, check func(cols []string, vals []any) error, nonEmpty bool) {
	t.Helper()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatalf("%s: scan: %v", q, err)
		}
		if err := check(cols, vals); err != nil {
			t.Errorf("%s: row %d: %v", q, n, err)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	if nonEmpty && n == 0 {
		t.Errorf("%s returned no rows", q)
	}
}

// exporterFloat is the exporter's dbToFloat64 acceptance: numbers, text
// that parses as one, or NULL.
func exporterFloat(v any) bool {
	switch v := v.(type) {
	case int64, float64, time.Time, nil:
		return true
	case []byte:
		_, err := strconv.ParseFloat(string(v), 64)
		return err == nil
	case string:
		_, err := strconv.ParseFloat(v, 64)
		return err == nil
	}
	return false
}

// TestConsolePauseHoldsOnlyThatTenant pauses acme: acme's next
// transaction waits (SHOW POOLS counts it in cl_waiting) while globex's
// run, and RESUME lets it through.
func TestConsolePauseHoldsOnlyThatTenant(t *testing.T) {
	e := newConsoleEnv(t)
	c := consoleConn(t, e.addr)
	acme := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	globex := connect(t, dsn(e.addr, "alice.globex", tenantPassword))
	ctx := ctxT(t)
	consoleExec(t, c, "PAUSE acme")
	if res := consoleExec(t, c, "SHOW DATABASES"); column(t, res, rowOf(t, res, "acme"), "paused") != "1" || column(t, res, rowOf(t, res, "globex"), "paused") != "0" {
		t.Fatalf("SHOW DATABASES after PAUSE acme: %v", res.Rows)
	}
	held := make(chan error, 1)
	go func() {
		var n int
		held <- acme.QueryRow(ctx, "SELECT 7").Scan(&n)
	}()
	waitFor(t, "acme's transaction held at the pause", func() bool {
		res := consoleExec(t, c, "SHOW POOLS")
		return column(t, res, rowOf(t, res, "acme"), "cl_waiting") == "1"
	})
	// A new login of acme waits too.
	login := make(chan error, 1)
	go func() {
		c, err := pgconn.Connect(ctx, dsn(e.addr, "alice.acme", tenantPassword))
		if err == nil {
			c.Close(ctx)
		}
		login <- err
	}()
	waitFor(t, "acme's new login held at the pause", func() bool {
		res := consoleExec(t, c, "SHOW POOLS")
		return column(t, res, rowOf(t, res, "acme"), "cl_waiting") == "2"
	})
	for range 3 {
		if _, err := globex.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("globex while acme is paused: %v", err)
		}
	}
	connect(t, dsn(e.addr, "alice.globex", tenantPassword))
	select {
	case err := <-held:
		t.Fatalf("acme's transaction ran while paused (err %v)", err)
	case err := <-login:
		t.Fatalf("acme's login completed while paused (err %v)", err)
	default:
	}
	consoleExec(t, c, "RESUME acme")
	for name, ch := range map[string]chan error{"transaction": held, "login": login} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("acme's %s after RESUME: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("acme's %s still held after RESUME", name)
		}
	}
}

// TestConsoleDisableAndKill: DISABLE refuses a tenant's new logins (after
// the password check), ENABLE lets them in again; KILL ends the tenant's
// sessions and no other tenant's.
func TestConsoleDisableAndKill(t *testing.T) {
	e := newConsoleEnv(t)
	c := consoleConn(t, e.addr)
	ctx := ctxT(t)
	consoleExec(t, c, "DISABLE acme")
	_, err := pgconn.Connect(ctx, dsn(e.addr, "alice.acme", tenantPassword))
	if sqlstateOf(err) != "57P03" || !strings.Contains(err.Error(), "disabled") {
		t.Fatalf("login of a disabled tenant: %v; want 57P03 saying it is disabled", err)
	}
	if _, err := pgconn.Connect(ctx, dsn(e.addr, "alice.acme", "wrong")); sqlstateOf(err) != "28P01" {
		t.Fatalf("wrong password of a disabled tenant: %v; want 28P01 (nothing told before the password)", err)
	}
	globex := connect(t, dsn(e.addr, "alice.globex", tenantPassword))
	consoleExec(t, c, "ENABLE acme")
	acme := connect(t, dsn(e.addr, "alice.acme", tenantPassword))

	if res := consoleExec(t, c, "KILL acme"); res.CommandTag.String() != "KILL" {
		t.Fatalf("KILL: %q", res.CommandTag)
	}
	if _, err := acme.Exec(ctx, "SELECT 1"); sqlstateOf(err) != "57P01" || !strings.Contains(err.Error(), "administrator command") {
		t.Fatalf("acme after KILL acme: %v; want 57P01 terminating connection due to administrator command", err)
	}
	if _, err := globex.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("globex after KILL acme: %v", err)
	}

	// In session mode, KILL ends a session that holds its server
	// connection, even inside a transaction.
	_, sessAddr := e.startProxy(t, proxy.Config{PoolMode: proxy.PoolSession, Console: e.cons})
	sc := consoleConn(t, sessAddr)
	pinned := connect(t, dsn(sessAddr, "alice.acme", tenantPassword))
	if _, err := pinned.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	consoleExec(t, sc, "KILL acme")
	if _, err := pinned.Exec(ctx, "SELECT 1"); sqlstateOf(err) != "57P01" || !strings.Contains(err.Error(), "administrator command") {
		t.Fatalf("session-mode acme after KILL acme: %v; want 57P01 terminating connection due to administrator command", err)
	}
}

// TestConsoleLoginIsTheConsoleUsersOnly: a tenant's credentials, or the
// console user with a wrong password, get 28P01 like any failed login;
// without a console, dbname=pgbouncer is just another database name.
func TestConsoleLoginIsTheConsoleUsersOnly(t *testing.T) {
	e := newConsoleEnv(t)
	ctx := ctxT(t)
	for _, login := range []struct{ user, password string }{
		{"alice.acme", tenantPassword},
		{"alice", tenantPassword},
		{consoleUser, tenantPassword},
		{consoleUser + ".acme", consolePassword},
	} {
		_, err := pgconn.Connect(ctx, consoleDSN(e.addr, "pgbouncer", login.user, login.password))
		if sqlstateOf(err) != "28P01" {
			t.Errorf("console login as %s: %v; want 28P01", login.user, err)
		}
	}
	// The console user is nobody's tenant user.
	if _, err := pgconn.Connect(ctx, consoleDSN(e.addr, "app", consoleUser, consolePassword)); sqlstateOf(err) != "28000" {
		t.Errorf("console user on dbname=app: %v; want 28000 (no tenant)", err)
	}

	_, plain := e.startProxy(t, proxy.Config{PoolMode: proxy.PoolTransaction})
	for _, login := range []struct{ user, password string }{
		{consoleUser, consolePassword},
		{"alice.acme", "wrong"},
	} {
		_, errConsole := pgconn.Connect(ctx, consoleDSN(plain, "pgbouncer", login.user, login.password))
		_, errOther := pgconn.Connect(ctx, consoleDSN(plain, "nosuchdb", login.user, login.password))
		if errConsole == nil || errOther == nil || sqlstateOf(errConsole) != sqlstateOf(errOther) {
			t.Errorf("no console, user %s: dbname=pgbouncer gives %v, another database %v; want the same refusal", login.user, errConsole, errOther)
		}
	}
	// A tenant's client naming pgbouncer reaches its tenant's PostgreSQL,
	// like any other name.
	conn, err := pgconn.Connect(ctx, consoleDSN(plain, "pgbouncer", "alice.acme", tenantPassword))
	if err != nil {
		t.Fatalf("tenant login with dbname=pgbouncer and no console: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SHOW POOLS").ReadAll(); sqlstateOf(err) != "42704" {
		t.Errorf("SHOW POOLS without a console: %v; want PostgreSQL's 42704", err)
	}
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startPgBouncer runs the PgBouncer installed on the machine with an admin
// console (trust, admin user "admin") and one database, acme, whose
// server is never reached; it skips when there is none. It runs as the
// postgres OS user when the test runs as root, as PostgreSQL does.
func startPgBouncer(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/pgbouncer"); err != nil {
			t.Skip("no pgbouncer installed to compare with")
		}
	}
	// Not t.TempDir: its parent is root's alone, closed to the postgres user.
	dir, err := os.MkdirTemp("", "pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := FreeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	files := map[string]string{
		"users.txt": `"admin" "x"` + "\n",
		"pgbouncer.ini": fmt.Sprintf("[databases]\nacme = host=127.0.0.1 port=1 dbname=acme\n[pgbouncer]\nlisten_addr = %s\nlisten_port = %s\n"+
			"unix_socket_dir =\nauth_type = trust\nauth_file = %s\nadmin_users = admin\n", host, port, filepath.Join(dir, "users.txt")),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := pgcluster.ChownToServer(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgcluster.ChownToServer(dir); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pgbouncer output:\n%s", stderr.String())
		}
	})
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("pgbouncer refuses root and there is no postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return addr
}

// TestConsoleColumnsMatchPgBouncer runs the same commands on a real
// PgBouncer and on the console: every column PgBouncer prints is there,
// in the same order and with the same type (the console prints 1.23's
// columns, a superset of older releases'), command tags agree, and so do
// the SQLSTATEs of refused commands.
func TestConsoleColumnsMatchPgBouncer(t *testing.T) {
	bouncer := startPgBouncer(t)
	e := newConsoleEnv(t)
	ours := consoleConn(t, e.addr)
	var theirs *pgconn.PgConn
	waitFor(t, "pgbouncer to accept", func() bool {
		var err error
		theirs, err = pgconn.Connect(ctxT(t), consoleDSN(bouncer, "pgbouncer", "admin", "x"))
		return err == nil
	})
	defer theirs.Close(context.Background())
	for _, q := range []string{"SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS", "SHOW STATS", "SHOW STATS_TOTALS",
		"SHOW DATABASES", "SHOW CONFIG", "SHOW LISTS", "SHOW VERSION",
		"PAUSE acme", "RESUME acme", "DISABLE acme", "ENABLE acme", "RECONNECT", "KILL acme", "RESUME acme"} {
		want, got := consoleExec(t, theirs, q), consoleExec(t, ours, q)
		if want.CommandTag.String() != got.CommandTag.String() {
			t.Errorf("%s: tag %q; PgBouncer says %q", q, got.CommandTag, want.CommandTag)
		}
		i := 0
		for _, f := range want.FieldDescriptions {
			for i < len(got.FieldDescriptions) && got.FieldDescriptions[i].Name != f.Name {
				i++
			}
			if i == len(got.FieldDescriptions) {
				t.Errorf("%s: column %s (after the previous one) missing; PgBouncer has %v", q, f.Name, names(want))
				break
			}
			if got.FieldDescriptions[i].DataTypeOID != f.DataTypeOID {
				t.Errorf("%s: column %s has type %d; PgBouncer's is %d", q, f.Name, got.FieldDescriptions[i].DataTypeOID, f.DataTypeOID)
			}
		}
	}
	for _, q := range []string{"SELECT 1", "SHOW FOO", "PAUSE nosuch"} {
		_, werr := theirs.Exec(ctxT(t), q).ReadAll()
		_, gerr := ours.Exec(ctxT(t), q).ReadAll()
		if sqlstateOf(werr) != sqlstateOf(gerr) {
			t.Errorf("%s: %v; PgBouncer says %v", q, gerr, werr)
		}
	}
}

func names(res *pgconn.Result) []string {
	var out []string
	for _, f := range res.FieldDescriptions {
		out = append(out, f.Name)
	}
	return out
}

// TestConsoleStatsCountBytesAndTimesPerTenant: after transactions of one
// tenant, one of them held waiting for a server connection, SHOW STATS
// and SHOW STATS_TOTALS give that tenant bytes and times, in
// microseconds, and leave another tenant's row at zero.
func TestConsoleStatsCountBytesAndTimesPerTenant(t *testing.T) {
	e := newConsoleEnv(t)
	ctx := ctxT(t)
	connect(t, dsn(e.addr, "alice.globex", tenantPassword))
	// acme's share of the pool (2 of its 4 connections), each held by an
	// open transaction.
	var holders []*pgx.Conn
	for range 2 {
		h := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
		if _, err := h.Exec(ctx, "BEGIN; SELECT pg_sleep(0.01)"); err != nil {
			t.Fatal(err)
		}
		holders = append(holders, h)
	}
	waiter := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	done := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(ctx, "SELECT 1")
		done <- err
	}()
	const held = 100 * time.Millisecond
	time.Sleep(held)
	for _, h := range holders {
		if _, err := h.Exec(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("the waiting transaction: %v", err)
	}

	c := consoleConn(t, e.addr)
	num := func(res *pgconn.Result, tenant, col string) uint64 {
		n, err := strconv.ParseUint(column(t, res, rowOf(t, res, tenant), col), 10, 64)
		if err != nil {
			t.Fatalf("%s of %s: %v", col, tenant, err)
		}
		return n
	}
	stats := consoleExec(t, c, "SHOW STATS")
	totals := consoleExec(t, c, "SHOW STATS_TOTALS")
	for _, col := range []string{"server_assignment_count", "xact_count", "query_count", "received", "sent", "xact_time", "query_time", "wait_time"} {
		got := num(stats, "acme", "total_"+col)
		if got == 0 {
			t.Errorf("SHOW STATS total_%s of acme is 0", col)
		}
		if g := num(stats, "globex", "total_"+col); g != 0 {
			t.Errorf("SHOW STATS total_%s of globex (no query run) is %d; want 0", col, g)
		}
		tcol := col
		if col == "received" || col == "sent" {
			tcol = "bytes_" + col
		}
		if tot := num(totals, "acme", tcol); tot < got {
			t.Errorf("SHOW STATS_TOTALS %s of acme is %d, less than SHOW STATS's %d", tcol, tot, got)
		}
	}
	// Two transactions slept 10 ms each and stayed open about 100 ms;
	// one waited that long.
	if us := num(stats, "acme", "total_xact_time"); us < uint64(2*held/time.Microsecond) {
		t.Errorf("total_xact_time of acme: %d µs; want at least 2×%v", us, held)
	}
	if us := num(stats, "acme", "total_wait_time"); us < uint64(held/time.Microsecond)/2 {
		t.Errorf("total_wait_time of acme: %d µs; want about %v", us, held)
	}
	for _, col := range []string{"avg_xact_time", "avg_query_time", "avg_wait_time", "avg_recv", "avg_sent"} {
		if num(stats, "acme", col) == 0 {
			t.Errorf("SHOW STATS %s of acme is 0", col)
		}
	}
}
