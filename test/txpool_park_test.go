package test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// parkClients is how many idle clients the parking tests open: enough
// that their goroutines, if they kept them, stand out of the process's
// other goroutines' ups and downs.
const parkClients = 30

// connectIdle opens n transaction-mode clients of acme at addr and
// returns them with the goroutines the process had before (the proxy
// runs in it; a pgconn has no goroutine of its own while idle).
func connectIdle(t *testing.T, addr string, n int) ([]*pgconn.PgConn, int) {
	t.Helper()
	return connectIdleTo(t, dsn(addr, "alice.acme", tenantPassword), n)
}

// connectIdleTo is connectIdle with any connection string.
func connectIdleTo(t *testing.T, connString string, n int) ([]*pgconn.PgConn, int) {
	t.Helper()
	before := runtime.NumGoroutine()
	conns := make([]*pgconn.PgConn, n)
	for i := range conns {
		c, err := pgconn.Connect(ctxT(t), connString)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		conns[i] = c
	}
	return conns, before
}

// waitParked waits up to 5 s for the process to have fewer than a third
// of n goroutines more than before: n idle clients that each kept a
// goroutine would hold n more.
func waitParked(t *testing.T, before, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine()-before >= n/3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle transaction-mode clients: %d goroutines more than before they connected; want fewer than %d (parked)",
				n, runtime.NumGoroutine()-before, n/3)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTxPoolParkedClientsHoldNoGoroutineAndResume: idle plaintext
// transaction-mode clients give up their goroutines (park), and each
// resumes when it sends: simple and extended protocol, and input
// pipelined in pieces, the first arriving while parked; then each parks
// again.
func TestTxPoolParkedClientsHoldNoGoroutineAndResume(t *testing.T) {
	e := newConsoleEnv(t)
	ctx := ctxT(t)
	conns, before := connectIdle(t, e.addr, parkClients)
	waitParked(t, before, parkClients)
	for i, c := range conns {
		res, err := c.Exec(ctx, "SELECT 'simple'").ReadAll()
		if err != nil || string(res[0].Rows[0][0]) != "simple" {
			t.Fatalf("client %d, simple query after parking: %v %v", i, res, err)
		}
		got := c.ExecParams(ctx, "SELECT $1::int * 2", [][]byte{[]byte("21")}, nil, nil, nil).Read()
		if got.Err != nil || string(got.Rows[0][0]) != "42" {
			t.Fatalf("client %d, extended query after parking: %v %v", i, got.Rows, got.Err)
		}
	}
	waitParked(t, before, parkClients)
	for i, c := range conns[:3] {
		sendInPieces(t, c)
		if err := expectPipelined(c); err != nil {
			t.Fatalf("client %d, pipelined input in pieces after parking: %v", i, err)
		}
	}
	waitParked(t, before, parkClients)
	for i, c := range conns {
		if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			t.Fatalf("client %d, parked again: %v", i, err)
		}
	}
}

// TestTxPoolUnixSocketClientsParkAndResume: clients on the proxy's unix
// socket park too, and resume.
func TestTxPoolUnixSocketClientsParkAndResume(t *testing.T) {
	e := newProxyEnv(t)
	dir, err := os.MkdirTemp("", "tp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("unix", filepath.Join(dir, ".s.PGSQL.6432"))
	if err != nil {
		t.Fatal(err)
	}
	StartProxyOn(t, l, proxy.Config{PoolMode: proxy.PoolTransaction}, e.cat, e.pool)
	conns, before := connectIdleTo(t, "host="+dir+" port=6432 dbname=app sslmode=disable user=alice.acme password="+tenantPassword, parkClients)
	waitParked(t, before, parkClients)
	for i, c := range conns {
		got := c.ExecParams(ctxT(t), "SELECT $1::int", [][]byte{[]byte(strconv.Itoa(i))}, nil, nil, nil).Read()
		if got.Err != nil || string(got.Rows[0][0]) != strconv.Itoa(i) {
			t.Fatalf("unix socket client %d after parking: %v %v", i, got.Rows, got.Err)
		}
	}
}

// sendInPieces writes an extended-protocol batch and a simple Query
// behind it, cut mid-header and mid-body, with pauses longer than the
// proxy's wait before parking between the pieces.
func sendInPieces(t *testing.T, c *pgconn.PgConn) {
	t.Helper()
	var buf []byte
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT $1::int + 1"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("41")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT 'behind'"},
	} {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			t.Fatal(err)
		}
	}
	for _, cut := range [][2]int{{0, 3}, {3, 20}, {20, len(buf) - 7}, {len(buf) - 7, len(buf)}} {
		if _, err := c.Conn().Write(buf[cut[0]:cut[1]]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// expectPipelined reads sendInPieces's replies: 42 after its Sync, then
// 'behind', each followed by ReadyForQuery.
func expectPipelined(c *pgconn.PgConn) error {
	c.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.Conn().SetReadDeadline(time.Time{})
	var rows []string
	for ready := 0; ready < 2; {
		m, err := c.Frontend().Receive()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			rows = append(rows, string(m.Values[0]))
		case *pgproto3.ReadyForQuery:
			ready++
		case *pgproto3.ErrorResponse:
			return errors.New(m.Message)
		}
	}
	if strings.Join(rows, ",") != "42,behind" {
		return errors.New("rows " + strings.Join(rows, ",") + "; want 42,behind")
	}
	return nil
}

// TestTxPoolParkedClientThatHangsUpIsCleanedUp: a parked client's hang-up
// ends its session: its connection slot is given back (the tenant's
// client count drops) and its goroutine-less session leaks nothing.
func TestTxPoolParkedClientThatHangsUpIsCleanedUp(t *testing.T) {
	e := newConsoleEnv(t)
	conns, before := connectIdle(t, e.addr, parkClients)
	waitParked(t, before, parkClients)
	if n := e.srv.TenantStates()["acme"].Clients; n != parkClients {
		t.Fatalf("acme has %d clients; want %d", n, parkClients)
	}
	for _, c := range conns[:parkClients/2] {
		c.Conn().Close() // no Terminate: a hang-up
	}
	for _, c := range conns[parkClients/2:] {
		c.Close(ctxT(t))
	}
	waitFor(t, "acme's parked clients' slots given back", func() bool { return e.srv.TenantStates()["acme"].Clients == 0 })
	waitFor(t, "the parked sessions' goroutines gone", func() bool { return runtime.NumGoroutine() <= before+2 })
}

// expectKilled reads c's socket, which the proxy must end by itself (the
// client sends nothing) with FATAL sqlstate.
func expectKilled(c *pgconn.PgConn, sqlstate string) error {
	c.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := c.Frontend().Receive()
	if err != nil {
		return err
	}
	if e, ok := m.(*pgproto3.ErrorResponse); !ok || e.Severity != "FATAL" || e.Code != sqlstate {
		return fmt.Errorf("got %T %+v; want FATAL %s", m, m, sqlstate)
	}
	if m, err := c.Frontend().Receive(); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("after the FATAL: %T %v; want the connection closed", m, err)
	}
	return nil
}

// TestTxPoolConsoleReachesParkedClients: KILL <tenant>, PAUSE and RESUME,
// and Shutdown reach parked clients as they reach blocked ones, and no
// goroutine of the parking outlives Shutdown.
func TestTxPoolConsoleReachesParkedClients(t *testing.T) {
	e := newConsoleEnv(t)
	// The parking's goroutine starts at the first park, after this.
	leaks := goleak.IgnoreCurrent()
	cons := consoleConn(t, e.addr)
	ctx := ctxT(t)
	conns, before := connectIdle(t, e.addr, 12)
	globex := connect(t, dsn(e.addr, "alice.globex", tenantPassword))
	waitParked(t, before, 12)

	// PAUSE holds a parked client's next transaction until RESUME.
	consoleExec(t, cons, "PAUSE acme")
	held := make(chan error, 1)
	go func() {
		_, err := conns[0].Exec(ctx, "SELECT 7").ReadAll()
		held <- err
	}()
	waitFor(t, "the parked client's transaction held at the pause", func() bool {
		res := consoleExec(t, cons, "SHOW POOLS")
		return column(t, res, rowOf(t, res, "acme"), "cl_waiting") == "1"
	})
	consoleExec(t, cons, "RESUME acme")
	if err := <-held; err != nil {
		t.Fatalf("parked client's transaction after RESUME: %v", err)
	}
	waitParked(t, before, 12)

	// KILL ends every parked client of acme now, with 57P01, and no other
	// tenant's.
	consoleExec(t, cons, "KILL acme")
	for i, c := range conns {
		if err := expectKilled(c, "57P01"); err != nil {
			t.Fatalf("parked client %d after KILL acme: %v", i, err)
		}
	}
	if _, err := globex.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("globex after KILL acme: %v", err)
	}
	waitFor(t, "acme's killed clients' slots given back", func() bool { return e.srv.TenantStates()["acme"].Clients == 0 })

	// Shutdown ends parked clients at once (they are idle), not after the
	// drain timeout.
	more, before := connectIdle(t, e.addr, 12)
	waitParked(t, before, 12)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown with parked clients: %v", err)
	}
	for i, c := range more {
		if err := expectKilled(c, "57P01"); err != nil {
			t.Fatalf("parked client %d after Shutdown: %v", i, err)
		}
	}
	goleak.VerifyNone(t, leaks)
}

// TestTxPoolTLSClientsAreNotParked: a TLS client keeps its goroutine while
// idle (TLS's library may hold a decrypted record its socket does not
// show) and goes on working.
func TestTxPoolTLSClientsAreNotParked(t *testing.T) {
	e := newProxyEnv(t)
	certFile, keyFile, roots := pgtest.SelfSignedCert(t, "localhost", "127.0.0.1")
	_, addr := e.startProxy(t, proxy.Config{PoolMode: proxy.PoolTransaction, TLSCertFile: certFile, TLSKeyFile: keyFile})
	ctx := ctxT(t)
	before := runtime.NumGoroutine()
	conns := make([]*pgx.Conn, parkClients)
	for i := range conns {
		cfg, err := pgx.ParseConfig(dsn(addr, "alice.acme", tenantPassword, "sslmode=require"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSConfig = &tls.Config{ServerName: "localhost", RootCAs: roots}
		cfg.Fallbacks = nil
		if conns[i], err = pgx.ConnectConfig(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conns[i].Close(context.Background()) })
	}
	time.Sleep(500 * time.Millisecond)
	// Other goroutines of the process come and go: parked, the clients
	// would add none, not parked about one each.
	if n := runtime.NumGoroutine() - before; n < parkClients*2/3 {
		t.Fatalf("%d idle TLS clients: %d goroutines more than before; want about one each (not parked)", parkClients, n)
	}
	for i, c := range conns {
		var n int
		if err := c.QueryRow(ctx, "SELECT $1::int", i).Scan(&n); err != nil || n != i {
			t.Fatalf("TLS client %d after idling: %d %v", i, n, err)
		}
	}
}
