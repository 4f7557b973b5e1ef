package test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// hostileCancels is how many cancel requests the attacker fires at least
// per pool mode, and victimStatements how many statements the victim runs
// at least meanwhile.
const (
	hostileCancels   = 10_000
	victimStatements = 500
)

// TestHostileCancelReachesOnlyTheSendersStatement: an attacker firing
// cancel requests with its own keys, as fast as it can, beside another
// tenant's workload on the same few server connections, cancels nothing
// of the other tenant's and ends none of its sessions (a cancelled context
// set-up would), in both pool modes; and its own long statement is still
// cancelled by its key.
//
// acme (attacker) and globex (victim) are both shared-tier tenants: one
// pool key, two server connections, so in transaction mode the
// connections go from one tenant to the other all the time, context
// set-up included, and in session mode a connection the attacker gives up
// goes straight to a victim waiting for it.
func TestHostileCancelReachesOnlyTheSendersStatement(t *testing.T) {
	e := newProxyEnvWith(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 2})
	e.unthrottled(t, "acme", "globex")
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			_, addr := e.startProxy(t, proxy.Config{PoolMode: mode})
			victim := &cancelVictim{addr: addr}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					victim.work(mode, stop)
				}()
			}
			start := time.Now()
			a := cancelAttack{victim: victim}
			if mode == proxy.PoolTransaction {
				a.floodTx(t, addr)
			} else {
				a.floodSession(t, addr)
			}
			close(stop)
			wg.Wait()
			t.Logf("%d cancel requests in %s cancelled %d of the attacker's own statements; victim: %d statements, %d cancelled, %d sessions ended, %d connects failed",
				a.fired.Load(), time.Since(start).Round(time.Millisecond), a.cancelled.Load(), victim.statements.Load(),
				victim.cancelled.Load(), victim.ended.Load(), victim.connectFailed.Load())
			if n := victim.cancelled.Load(); n != 0 {
				t.Errorf("the attacker's cancel requests cancelled %d of the victim's statements; want 0", n)
			}
			if n := victim.failed.Load(); n != 0 {
				t.Errorf("%d of the victim's statements failed otherwise (%v); want 0", n, victim.lastErr.Load())
			}
			if n := victim.ended.Load() + victim.connectFailed.Load(); n != 0 {
				t.Errorf("%d of the victim's sessions ended or failed to start (%v); want 0", n, victim.lastErr.Load())
			}
			if n := a.ended.Load(); n != 0 {
				t.Errorf("%d of the attacker's own sessions ended: its context set-up was cancelled; want 0", n)
			}
			if victim.statements.Load() == 0 {
				t.Error("the victim ran no statement: the test proved nothing")
			}

			cancelOwnLongStatement(t, addr)
		})
	}
}

// cancelVictim is the victim tenant's workload: short statements and
// short transactions, counting what the attacker did to them.
type cancelVictim struct {
	addr                                                string
	statements, cancelled, failed, ended, connectFailed atomic.Int64
	lastErr                                             atomic.Value
}

// work runs one victim client until stop: in transaction mode one
// session of many transactions; in session mode a session per few
// statements, so that it takes over connections the attacker gave up.
func (v *cancelVictim) work(mode string, stop <-chan struct{}) {
	ctx := context.Background()
	perSession := 1 << 30
	if mode == proxy.PoolSession {
		perSession = 5
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		conn, err := pgconn.Connect(ctx, dsn(v.addr, "alice.globex", tenantPassword))
		if err != nil {
			v.connectFailed.Add(1)
			v.lastErr.Store(err.Error())
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !v.session(conn, perSession, stop) {
			return
		}
		conn.Close(ctx)
	}
}

// session runs up to n statements on conn; false means stop (or the
// session ended, counted).
func (v *cancelVictim) session(conn *pgconn.PgConn, n int, stop <-chan struct{}) bool {
	ctx := context.Background()
	for i := range n {
		select {
		case <-stop:
			conn.Close(ctx)
			return false
		default:
		}
		sql := "SELECT pg_sleep(0.002)"
		if i%2 == 1 {
			sql = "BEGIN; SELECT count(*) FROM messages; SELECT pg_sleep(0.001); COMMIT"
		}
		_, err := conn.Exec(ctx, sql).ReadAll()
		v.statements.Add(1)
		switch {
		case err == nil:
		case conn.IsClosed():
			v.ended.Add(1)
			v.lastErr.Store(err.Error())
			return true
		case sqlstateOf(err) == "57014":
			v.cancelled.Add(1)
		default:
			v.failed.Add(1)
			v.lastErr.Store(err.Error())
		}
		if conn.TxStatus() != 'I' {
			conn.Exec(ctx, "ROLLBACK").ReadAll()
		}
	}
	return true
}

// cancelAttack counts what the attacker fired and what became of its own
// sessions.
type cancelAttack struct {
	victim                  *cancelVictim
	fired, cancelled, ended atomic.Int64
}

// done reports whether the attack has gone on long enough: hostileCancels
// fired beside victimStatements of the victim's.
func (a *cancelAttack) done() bool {
	return a.fired.Load() >= hostileCancels && a.victim.statements.Load() >= victimStatements
}

// floodTx: two attacker sessions run short statements in a loop, so their
// keys are bound to a server connection often, while four goroutines
// fire their keys back to back.
func (a *cancelAttack) floodTx(t *testing.T, addr string) {
	ctx := ctxT(t)
	var keys [][]byte
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		conn, err := pgconn.Connect(ctx, dsn(addr, "alice.acme", tenantPassword))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		keys = append(keys, cancelKey(conn))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := conn.Exec(ctx, "SELECT pg_sleep(0.001)").ReadAll()
				switch {
				case conn.IsClosed():
					a.ended.Add(1)
					return
				case sqlstateOf(err) == "57014":
					a.cancelled.Add(1)
				}
			}
		}()
	}
	var firers sync.WaitGroup
	for i := range 4 {
		firers.Add(1)
		go func() {
			defer firers.Done()
			for !a.done() {
				a.fired.Add(1)
				fireCancel(addr, keys[i%len(keys)])
			}
		}()
	}
	firers.Wait()
	close(stop)
	wg.Wait()
}

// floodSession: two attackers connect, run a statement, and hang up while
// firing that session's key 25 times, over and over: a request the proxy
// took before the session ended must not reach the victim session that
// gets the connection next.
func (a *cancelAttack) floodSession(t *testing.T, addr string) {
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var shots sync.WaitGroup
			defer shots.Wait()
			for !a.done() {
				conn, err := pgconn.Connect(ctx, dsn(addr, "alice.acme", tenantPassword))
				if err != nil {
					t.Errorf("attacker connect: %v", err)
					return
				}
				conn.Exec(ctx, "SELECT pg_sleep(0.001)").ReadAll()
				key := cancelKey(conn)
				for range 25 {
					a.fired.Add(1)
					shots.Add(1)
					go func() {
						defer shots.Done()
						fireCancel(addr, key)
					}()
				}
				conn.Close(ctx)
			}
		}()
	}
	wg.Wait()
}

// cancelOwnLongStatement checks that cancelling still works: the
// attacker's own pg_sleep(10) ends with 57014 soon after its key is sent,
// and the session goes on.
func cancelOwnLongStatement(t *testing.T, addr string) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgconn.Connect(ctx, dsn(addr, "alice.acme", tenantPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	key := cancelKey(conn)
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(10)").ReadAll()
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	// A request that arrives before the statement reached the server is
	// dropped, as PostgreSQL drops one for an idle backend: send again
	// until the statement ends.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		fireCancel(addr, key)
		select {
		case err := <-done:
			if sqlstateOf(err) != "57014" {
				t.Fatalf("own pg_sleep(10) after its cancel key: %v; want 57014", err)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("own statement cancelled only %s after the first request", took)
			}
			if got := queryText(t, conn, "SELECT 'still here'"); got != "still here" {
				t.Errorf("after the cancel: %q", got)
			}
			return
		case <-tick.C:
		}
	}
}

// cancelKey is the proxy's key for conn: pid and secret as a
// CancelRequest carries them.
func cancelKey(conn *pgconn.PgConn) []byte {
	return append(binary.BigEndian.AppendUint32(nil, conn.PID()), conn.SecretKey()...)
}

// fireCancel sends one CancelRequest with key to the proxy at addr and
// waits for the proxy to hang up, as libpq does.
func fireCancel(addr string, key []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := binary.BigEndian.AppendUint32(nil, uint32(8+len(key)))
	msg = binary.BigEndian.AppendUint32(msg, 80877102)
	if _, err := c.Write(append(msg, key...)); err != nil {
		return err
	}
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		return errors.Join(fmt.Errorf("proxy answered %d bytes to a cancel request", n), err)
	}
	return nil
}
