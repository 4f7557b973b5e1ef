package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
	"github.com/tenantproxy/tenantproxy/test"
)

// userProxy starts a proxy in mode over a catalog client of its own, as
// another instance of the fleet would run.
func userProxy(t *testing.T, catalogDSN, mode string) string {
	t.Helper()
	return poolProxy(t, catalogDSN, mode, pool.Config{})
}

// poolProxy is userProxy with a pool configured as pcfg.
func poolProxy(t *testing.T, catalogDSN, mode string, pcfg pool.Config) string {
	t.Helper()
	cat, err := catalog.Open(context.Background(), catalogDSN, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	mgr, err := pool.NewManager(pcfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	_, addr := test.StartProxy(t, proxy.Config{PoolMode: mode}, cat, mgr)
	return addr
}

// login connects to the proxy at addr as user of tenant acme.
func login(addr, user, password string) (*pgx.Conn, error) {
	return loginTenant(addr, "acme", user, password, "")
}

// loginTenant connects to the proxy at addr as user of tenant, with the
// extra connection parameters in params ("" or "&name=value…").
func loginTenant(addr, tenant, user, password, params string) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgx.Connect(ctx, fmt.Sprintf("postgres://%s.%s:%s@%s:%s/app?sslmode=disable%s", user, tenant, password, host, port, params))
}

func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return fmt.Sprint(err)
}

// eventually retries check every 20 ms until it returns "" or 2 s pass, and
// then fails with its last complaint. Catalog changes reach other processes
// through NOTIFY, within milliseconds.
func eventually(t *testing.T, what string, check func() string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s after 2 s", what, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wantLogin reports why user cannot log in to addr with password, or "".
func wantLogin(addr, user, password string) string {
	conn, err := login(addr, user, password)
	if err != nil {
		return fmt.Sprintf("login as %s: %v", user, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "SELECT 1"); err != nil {
		return fmt.Sprintf("query as %s: %v", user, err)
	}
	return ""
}

// wantRefused reports "" when user's login with password fails with 28P01.
func wantRefused(addr, user, password string) string {
	conn, err := login(addr, user, password)
	if err == nil {
		conn.Close(context.Background())
		return "login as " + user + " succeeded; want 28P01"
	}
	if got := sqlstate(err); got != "28P01" {
		return fmt.Sprintf("login as %s: %v; want 28P01", user, err)
	}
	return ""
}

func TestTenantUserCommandsEndToEndThroughTwoProxies(t *testing.T) {
	catalogDSN := pgtest.NewDatabase(t, pgtest.StartT(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", catalogDSN)
	mustCLI(t, "migrate", "up")
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-password", "acme-admin-password")
	sessionProxy := userProxy(t, catalogDSN, proxy.PoolSession)
	txProxy := userProxy(t, catalogDSN, proxy.PoolTransaction)
	proxies := []string{sessionProxy, txProxy}

	// add: a chosen password, a generated one, one from the environment.
	mustCLI(t, "tenant", "user", "add", "acme", "bob", "--password", "bobs-first-password")
	var carol userPassword
	if err := json.Unmarshal([]byte(mustCLI(t, "tenant", "user", "add", "acme", "carol", "--role", "admin", "-o", "json")), &carol); err != nil {
		t.Fatal(err)
	}
	if carol.Password == "" || carol.Role != "admin" {
		t.Fatalf("add without a password: %+v; want a generated password and role admin", carol)
	}
	t.Run("password from TENANTPROXY_PASSWORD", func(t *testing.T) {
		t.Setenv("TENANTPROXY_PASSWORD", "daves-env-password")
		if out := mustCLI(t, "tenant", "user", "add", "acme", "dave"); strings.Contains(out, "password") {
			t.Fatalf("add with the password in the environment printed %q; want no password shown", out)
		}
	})
	for _, addr := range proxies {
		for _, c := range []struct{ user, password string }{{"bob", "bobs-first-password"}, {"carol", carol.Password}, {"dave", "daves-env-password"}} {
			if msg := wantLogin(addr, c.user, c.password); msg != "" {
				t.Fatal(msg)
			}
		}
	}

	// max_users: the free plan's 5 people, the admin included; a service
	// login takes no slot and is not listed.
	cat, err := catalog.Open(context.Background(), catalogDSN, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	if err := cat.EnsureServiceUser(context.Background(), "acme", "chatapi", "service-secret-password"); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, "tenant", "user", "add", "acme", "erin")
	if _, err := cli(t, "tenant", "user", "add", "acme", "frank"); err == nil || !strings.Contains(err.Error(), "already has its plan's 5 users") {
		t.Fatalf("sixth person on the free plan: %v; want the plan's limit named", err)
	}

	// list: people only, never a verifier.
	table := mustCLI(t, "tenant", "user", "list", "acme")
	for _, want := range []string{"USER", "admin", "bob", "carol", "dave", "erin"} {
		if !strings.Contains(table, want) {
			t.Errorf("user list lacks %q:\n%s", want, table)
		}
	}
	raw := mustCLI(t, "tenant", "user", "list", "acme", "-o", "json")
	var listed []map[string]any
	if err := json.Unmarshal([]byte(raw), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 5 || strings.Contains(raw, "SCRAM") || strings.Contains(raw, "verifier") || strings.Contains(raw+table, "chatapi") {
		t.Fatalf("user list -o json = %s; want the 5 people, no verifier, no service login", raw)
	}

	// passwd: the old password fails and the new one works on both proxies.
	mustCLI(t, "tenant", "user", "passwd", "acme", "bob", "--password", "bobs-second-password")
	for _, addr := range proxies {
		eventually(t, "old password after passwd", func() string { return wantRefused(addr, "bob", "bobs-first-password") })
		if msg := wantLogin(addr, "bob", "bobs-second-password"); msg != "" {
			t.Fatal(msg)
		}
	}

	// remove: bob's open sessions end with 57P01 on both proxies, one of
	// them in the middle of a statement; carol's go on; bob cannot log in.
	busy, err := login(sessionProxy, "bob", "bobs-second-password")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close(context.Background())
	idle, err := login(txProxy, "bob", "bobs-second-password")
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(context.Background())
	other, err := login(txProxy, "carol", carol.Password)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	sleeping := make(chan error, 1)
	go func() {
		_, err := busy.Exec(context.Background(), "SELECT pg_sleep(30)")
		sleeping <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the statement reach the server

	mustCLI(t, "tenant", "user", "remove", "acme", "bob")
	select {
	case err := <-sleeping:
		wantTerminated(t, "bob's statement running through the session-mode proxy", err)
	case <-time.After(5 * time.Second):
		t.Fatal("bob's running statement went on 5 s after his removal")
	}
	time.Sleep(100 * time.Millisecond) // the kill reaches the idle session
	_, err = idle.Exec(context.Background(), "SELECT 1")
	wantTerminated(t, "bob's idle session on the transaction-mode proxy", err)
	if _, err := other.Exec(context.Background(), "SELECT 1"); err != nil {
		t.Fatalf("carol's session after bob's removal: %v; want it untouched", err)
	}
	for _, addr := range proxies {
		if msg := wantRefused(addr, "bob", "bobs-second-password"); msg != "" {
			t.Fatal(msg)
		}
	}
	if _, err := cli(t, "tenant", "user", "remove", "acme", "bob"); !errors.Is(err, catalog.ErrUserNotFound) {
		t.Fatalf("removing bob again: %v; want ErrUserNotFound", err)
	}
}

// wantTerminated fails unless err is what pg_terminate_backend's victim
// hears.
func wantTerminated(t *testing.T, what string, err error) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Severity != "FATAL" || pgErr.Code != "57P01" ||
		pgErr.Message != "terminating connection due to administrator command" {
		t.Fatalf("%s: %v; want FATAL 57P01 terminating connection due to administrator command", what, err)
	}
}
