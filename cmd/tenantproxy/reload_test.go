package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/test"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// logBuffer collects serve's JSON log lines while it runs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines are the log lines so far, decoded.
func (b *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// reloadEnvironment is a serve configured from a file, with the console
// open to read SHOW CONFIG, whose settings a test changes one at a time.
type reloadEnvironment struct {
	t        *testing.T
	ctx      context.Context
	file     string
	settings map[string]string
	logs     *logBuffer
	console  *pgconn.PgConn
	// reloads counts the reloads seen in the log (done or refused).
	reloads int
}

func (e *reloadEnvironment) write() {
	keys := make([]string, 0, len(e.settings))
	for k := range e.settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %q\n", k, e.settings[k])
	}
	if err := os.WriteFile(e.file, []byte(b.String()), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// reload writes the settings, reloads (SIGHUP, or the console's RELOAD)
// and returns the log lines of that reload.
func (e *reloadEnvironment) reload(viaConsole bool) []map[string]any {
	t := e.t
	t.Helper()
	e.write()
	if viaConsole {
		if _, err := e.console.Exec(e.ctx, "RELOAD").ReadAll(); err != nil {
			t.Fatalf("RELOAD: %v", err)
		}
	} else {
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		lines := e.logs.lines(t)
		var ends []int
		for i, l := range lines {
			if l["msg"] == "configuration reloaded" || l["msg"] == "reload refused; the running configuration stays" {
				ends = append(ends, i)
			}
		}
		if len(ends) > e.reloads {
			start := 0
			if e.reloads > 0 {
				start = ends[e.reloads-1] + 1
			}
			e.reloads = len(ends)
			return lines[start : ends[len(ends)-1]+1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// showConfig is the console's SHOW CONFIG, key to value.
func (e *reloadEnvironment) showConfig() map[string]string {
	e.t.Helper()
	res, err := e.console.Exec(e.ctx, "SHOW CONFIG").ReadAll()
	if err != nil {
		e.t.Fatalf("SHOW CONFIG: %v", err)
	}
	out := map[string]string{}
	for _, row := range res[0].Rows {
		out[string(row[0])] = string(row[1])
	}
	return out
}

// findLog returns the first line with msg and setting.
func findLog(lines []map[string]any, msg, setting string) map[string]any {
	for _, l := range lines {
		if l["msg"] == msg && l["setting"] == setting {
			return l
		}
	}
	return nil
}

func startReloadEnvironment(t *testing.T) (*reloadEnvironment, string) {
	dsn := pgtest.NewDatabase(t, pgtest.Shared(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-user", "alice", "--admin-password", "correct-horse")
	listen := test.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	e := &reloadEnvironment{t: t, ctx: ctx, file: filepath.Join(t.TempDir(), "tenantproxy.yaml"), logs: &logBuffer{},
		settings: map[string]string{"listen": listen, "admin-listen": "", "drain-timeout": "2s",
			"console-user": "ops", "console-password": "console-secret"}}
	e.write()
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", e.file}, io.Discard, e.logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})
	e.console = connectConsole(t, ctx, listen, done)
	t.Cleanup(func() { e.console.Close(context.Background()) })
	return e, listen
}

func connectConsole(t *testing.T, ctx context.Context, listen string, done <-chan error) *pgconn.PgConn {
	t.Helper()
	host, port, _ := net.SplitHostPort(listen)
	conninfo := "host=" + host + " port=" + port + " dbname=pgbouncer user=ops password=console-secret sslmode=disable"
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pgconn.Connect(ctx, conninfo)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("console login never succeeded: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestServeReloadAppliesEverySettingThatCanChangeLive changes one setting
// at a time in the config file, reloads (SIGHUP, or RELOAD on the
// console), and checks the setting's effect through SHOW CONFIG or a
// client, and its "setting changed" log line with old and new values.
func TestServeReloadAppliesEverySettingThatCanChangeLive(t *testing.T) {
	e, listen := startReloadEnvironment(t)
	clientDSN := func(db string) string {
		return "postgres://alice.acme:correct-horse@" + listen + "/" + db + "?sslmode=disable"
	}
	pgCode := func(err error) string {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return pgErr.Code
		}
		return fmt.Sprint(err)
	}
	connectErr := func(db string) error {
		c, err := pgx.Connect(e.ctx, clientDSN(db))
		if err == nil {
			c.Close(e.ctx)
		}
		return err
	}
	showConfig := func(key, want string) func(t *testing.T) {
		return func(t *testing.T) {
			if got := e.showConfig()[key]; got != want {
				t.Errorf("SHOW CONFIG %s = %q; want %q", key, got, want)
			}
		}
	}
	cases := []struct {
		setting, value string
		// old and new are the values the log line shows.
		old, new string
		effect   func(t *testing.T)
	}{
		{"pool-max-conns", "7", "20", "7", showConfig("default_pool_size", "7")},
		{"pool-max-conns-per-tenant", "3", "0", "3", showConfig("max_user_connections", "3")},
		{"pool-min-idle", "2", "0", "2", showConfig("min_pool_size", "2")},
		{"pool-wait-timeout", "4s", "10s", "4s", showConfig("query_wait_timeout", "4")},
		{"pool-idle-timeout", "2m0s", "5m0s", "2m0s", showConfig("server_idle_timeout", "120")},
		{"pool-max-lifetime", "30m0s", "1h0m0s", "30m0s", showConfig("server_lifetime", "1800")},
		{"pool-connect-timeout", "3s", "10s", "3s", showConfig("server_connect_timeout", "3")},
		{"pool-mode", "transaction", "session", "transaction", showConfig("pool_mode", "transaction")},
		{"startup-timeout", "9s", "15s", "9s", showConfig("client_login_timeout", "9")},
		{"idle-in-transaction-timeout", "45s", "1m0s", "45s", showConfig("idle_transaction_timeout", "45")},
		{"drain-timeout", "3s", "2s", "3s", showConfig("shutdown_drain_timeout", "3")},
		{"max-buffered-bytes", "1048576", "268435456", "1048576", nil},
		{"max-conns-per-tenant", "1", "0", "1", func(t *testing.T) {
			first, err := pgx.Connect(e.ctx, clientDSN("chat"))
			if err != nil {
				t.Fatal(err)
			}
			defer first.Close(e.ctx)
			if code := pgCode(connectErr("chat")); code != "53300" {
				t.Errorf("a second client under a cap of 1 got %s; want 53300", code)
			}
		}},
		{"database", "chat", "", "chat", func(t *testing.T) {
			if code := pgCode(connectErr("other")); code != "3D000" {
				t.Errorf("database other with --database chat got %s; want 3D000", code)
			}
			if err := connectErr("chat"); err != nil {
				t.Errorf("database chat: %v", err)
			}
		}},
		{"max-startup-conns-per-addr", "1", "100", "1", func(t *testing.T) {
			idle, err := net.Dial("tcp", listen)
			if err != nil {
				t.Fatal(err)
			}
			defer idle.Close()
			// Make sure the proxy has accepted the first one.
			time.Sleep(200 * time.Millisecond)
			if code := pgCode(connectErr("chat")); code != "53300" {
				t.Errorf("a second connection in start-up under a per-address cap of 1 got %s; want 53300", code)
			}
		}},
		{"max-startup-conns", "5", "1000", "5", nil},
		{"auth", "trust", "scram-sha-256", "trust", func(t *testing.T) {
			c, err := pgx.Connect(e.ctx, "postgres://alice.acme:wrong@"+listen+"/chat?sslmode=disable")
			if err != nil {
				t.Fatalf("a wrong password with --auth trust: %v", err)
			}
			c.Close(e.ctx)
		}},
		{"user-separator", "+", ".", "+", func(t *testing.T) {
			c, err := pgx.Connect(e.ctx, "postgres://alice+acme:correct-horse@"+listen+"/chat?sslmode=disable")
			if err != nil {
				t.Fatalf("user alice+acme with --user-separator +: %v", err)
			}
			c.Close(e.ctx)
		}},
		{"identify", "options", "[sni,options,user]", "[options]", func(t *testing.T) {
			if err := connectErr("chat"); err == nil {
				t.Error("user alice.acme was identified with --identify options only")
			}
			c, err := pgx.Connect(e.ctx, "postgres://alice:correct-horse@"+listen+"/chat?sslmode=disable&options=-c%20tenant%3Dacme")
			if err != nil {
				t.Fatalf("options -c tenant=acme with --identify options: %v", err)
			}
			c.Close(e.ctx)
		}},
	}
	for i, tc := range cases {
		t.Run(tc.setting, func(t *testing.T) {
			e.t = t
			e.settings[tc.setting] = tc.value
			lines := e.reload(i%2 == 1)
			l := findLog(lines, "setting changed", tc.setting)
			if l == nil || l["old"] != tc.old || l["new"] != tc.new {
				t.Errorf("log of the reload: %v; want setting changed %s %q -> %q", lines, tc.setting, tc.old, tc.new)
			}
			if tc.effect != nil {
				tc.effect(t)
			}
		})
		// The next case starts from defaults where it matters.
		switch tc.setting {
		case "max-conns-per-tenant", "database", "max-startup-conns-per-addr", "auth", "user-separator", "identify":
			delete(e.settings, tc.setting)
		}
	}
}

// servedFingerprint is the SHA-256 of the certificate a new client sees
// at addr after SSLRequest, hex.
func servedFingerprint(t *testing.T, addr string) string {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	req := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)
	answer := make([]byte, 1)
	if _, err := raw.Write(req); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(raw, answer); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v; want S", answer, err)
	}
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(tc.ConnectionState().PeerCertificates[0].Raw)
	return hex.EncodeToString(sum[:])
}

// fileFingerprint is the SHA-256 of the PEM certificate in path, hex.
func fileFingerprint(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:])
}

// TestServeReloadSwapsCertificateAndListenAddresses: a new certificate
// is what the next client sees, with its fingerprint logged; a new listen
// address accepts and the removed one refuses, while a session it
// accepted before goes on; --require-tls then refuses plaintext.
func TestServeReloadSwapsCertificateAndListenAddresses(t *testing.T) {
	e, listen := startReloadEnvironment(t)
	oldCert, oldKey, _ := pgtest.SelfSignedCert(t, "old.example")
	newCert, newKey, _ := pgtest.SelfSignedCert(t, "new.example")
	e.settings["tls-cert"], e.settings["tls-key"] = oldCert, oldKey
	e.reload(false)
	if got, want := servedFingerprint(t, listen), fileFingerprint(t, oldCert); got != want {
		t.Fatalf("served certificate %s; want the first one, %s", got, want)
	}

	e.settings["tls-cert"], e.settings["tls-key"] = newCert, newKey
	lines := e.reload(true)
	if got, want := servedFingerprint(t, listen), fileFingerprint(t, newCert); got != want {
		t.Errorf("after the reload a new client sees %s; want the new certificate, %s", got, want)
	}
	if l := findLog(lines, "setting changed", "tls-certificate"); l == nil || l["old"] != fileFingerprint(t, oldCert) || l["new"] != fileFingerprint(t, newCert) {
		t.Errorf("log of the reload: %v; want the certificate's change by fingerprint", lines)
	}

	moved := test.FreeAddr(t)
	e.settings["listen"] = moved
	lines = e.reload(false)
	if l := findLog(lines, "setting changed", "listen"); l == nil || l["old"] != "["+listen+"]" || l["new"] != "["+moved+"]" {
		t.Errorf("log of the reload: %v; want listen [%s] -> [%s]", lines, listen, moved)
	}
	c, err := pgx.Connect(e.ctx, "postgres://alice.acme:correct-horse@"+moved+"/chat?sslmode=disable")
	if err != nil {
		t.Fatalf("the new listen address: %v", err)
	}
	c.Close(e.ctx)
	if c, err := net.DialTimeout("tcp", listen, 2*time.Second); err == nil {
		c.Close()
		t.Errorf("the removed listen address %s still accepts", listen)
	}
	if _, err := e.console.Exec(e.ctx, "SHOW VERSION").ReadAll(); err != nil {
		t.Errorf("a session of the removed address after the reload: %v", err)
	}

	e.settings["require-tls"] = "true"
	lines = e.reload(true)
	if l := findLog(lines, "setting changed", "require-tls"); l == nil || l["old"] != "false" || l["new"] != "true" {
		t.Errorf("log of the reload: %v; want require-tls false -> true", lines)
	}
	_, err = pgx.Connect(e.ctx, "postgres://alice.acme:correct-horse@"+moved+"/chat?sslmode=disable")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		t.Errorf("a plaintext client after --require-tls: %v; want 28000", err)
	}
}

// TestServeReloadChangesLogLevel: debug lines appear once a reload sets
// --log-level debug, and not before.
func TestServeReloadChangesLogLevel(t *testing.T) {
	e, listen := startReloadEnvironment(t)
	debugLines := func() int {
		// An unknown tenant's refusal is logged at debug.
		if c, err := pgx.Connect(e.ctx, "postgres://bob.nosuch:pw@"+listen+"/chat?sslmode=disable"); err == nil {
			c.Close(e.ctx)
		}
		time.Sleep(100 * time.Millisecond)
		n := 0
		for _, l := range e.logs.lines(t) {
			if l["level"] == "debug" {
				n++
			}
		}
		return n
	}
	if n := debugLines(); n != 0 {
		t.Fatalf("%d debug lines at --log-level info", n)
	}
	e.settings["log-level"] = "debug"
	lines := e.reload(false)
	if l := findLog(lines, "setting changed", "log-level"); l == nil || l["old"] != "info" || l["new"] != "debug" {
		t.Errorf("log of the reload: %v; want log-level info -> debug", lines)
	}
	if n := debugLines(); n == 0 {
		t.Error("no debug line after a reload set --log-level debug")
	}
}

// TestServeReloadNamesSettingsThatNeedARestart: a changed admin address
// or console password is logged as needing a restart (the password
// without its values) and not applied; an invalid configuration, or a
// listen address that cannot be opened, changes nothing.
func TestServeReloadNamesSettingsThatNeedARestart(t *testing.T) {
	e, listen := startReloadEnvironment(t)
	adminAddr := test.FreeAddr(t)
	e.settings["admin-listen"] = adminAddr
	e.settings["console-password"] = "another-secret"
	lines := e.reload(false)
	if l := findLog(lines, "setting needs a restart", "admin-listen"); l == nil || l["old"] != "" || l["new"] != adminAddr {
		t.Errorf("log of the reload: %v; want admin-listen needs a restart, \"\" -> %s", lines, adminAddr)
	}
	l := findLog(lines, "setting needs a restart", "console-password")
	if _, shown := l["new"]; l == nil || shown || strings.Contains(fmt.Sprint(lines), "another-secret") {
		t.Errorf("log of the reload: %v; want console-password needs a restart, without its values", lines)
	}
	if c, err := net.DialTimeout("tcp", adminAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("the admin listener moved to %s without a restart", adminAddr)
	}
	c := connectConsole(t, e.ctx, listen, nil)
	c.Close(e.ctx)

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, bad := range []map[string]string{
		{"pool-min-idle": "50", "pool-max-conns": "7"},
		{"pool-max-conns": "7", "listen": listen + "," + busy.Addr().String()},
		{"pool-max-conns": "7", "tls-cert": "/nonexistent.pem", "tls-key": "/nonexistent.key"},
	} {
		saved := maps.Clone(e.settings)
		maps.Copy(e.settings, bad)
		lines := e.reload(true)
		if findLog(lines, "setting changed", "pool-max-conns") != nil || lines[len(lines)-1]["msg"] != "reload refused; the running configuration stays" {
			t.Errorf("a reload with %v logged %v; want it refused", bad, lines)
		}
		if got := e.showConfig()["default_pool_size"]; got != "20" {
			t.Errorf("a refused reload with %v left default_pool_size %s; want 20", bad, got)
		}
		e.settings = saved
	}
	if c, err := pgx.Connect(e.ctx, "postgres://alice.acme:correct-horse@"+listen+"/chat?sslmode=disable"); err != nil {
		t.Errorf("the listen address after refused reloads: %v", err)
	} else {
		c.Close(e.ctx)
	}
}
