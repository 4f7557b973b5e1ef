package pool_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/pool"
)

// TestReleasedConnectionWaitsForItsCancelRequest: a connection given back
// while a cancel request to its backend is in flight goes to no other
// holder until the server has answered the request, in both pool modes;
// then it is reused, and the request hit nothing of the next holder's.
func TestReleasedConnectionWaitsForItsCancelRequest(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	tt := pool.NewTxTarget(f.target(f.schemaSetup()...))
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			var c *pool.Conn
			if mode == "transaction" {
				c = acquireTx(t, m, tt)
			} else {
				c = acquire(t, m, tt.Target)
			}
			pid := c.PID()
			if !c.BeginCancel() {
				t.Fatal("BeginCancel on a held connection reported false")
			}
			if mode == "transaction" {
				m.ReleaseTx(c, true)
			} else {
				m.Release(c, true)
			}
			if c.BeginCancel() {
				t.Fatal("BeginCancel on a released connection reported true")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if other, _, _, err := m.AcquireTx(ctx, tt); err == nil {
				m.ReleaseTx(other, false)
				t.Fatalf("got backend %d while a cancel request to backend %d was in flight; want to wait", other.PID(), pid)
			}

			if err := c.ForwardCancel(context.Background(), tt.Target); err != nil {
				t.Fatal(err)
			}
			next := acquireTx(t, m, tt)
			defer m.ReleaseTx(next, true)
			if next.PID() != pid {
				t.Errorf("after the cancel request was answered got backend %d; want %d back from parking", next.PID(), pid)
			}
			if got := value(t, next, "SELECT 'untouched' FROM pg_sleep(0.2)"); got != "untouched" {
				t.Errorf("next holder's statement: %q", got)
			}
		})
	}
}

// TestConnectionWithAnUnansweredCancelIsClosed: when the server does not
// hang up after a cancel request (the request may still be acted on,
// later), the connection is closed at release rather than reused.
func TestConnectionWithAnUnansweredCancelIsClosed(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	tt := pool.NewTxTarget(f.target())
	c := acquireTx(t, m, tt)
	pid := c.PID()

	// A fault, not a stand-in for PostgreSQL: a listener that takes the
	// request and never hangs up.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	held := make(chan net.Conn, 1)
	go func() {
		if nc, err := l.Accept(); err == nil {
			held <- nc
		}
	}()
	silent := tt.Target
	silent.Addr = l.Addr().String()
	if !c.BeginCancel() {
		t.Fatal("BeginCancel on a held connection reported false")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.ForwardCancel(ctx, silent); !errors.Is(err, pool.ErrCancelUnanswered) {
		t.Fatalf("cancel request nobody answered: %v; want ErrCancelUnanswered", err)
	}
	(<-held).Close()
	m.ReleaseTx(c, true)
	f.waitServerConns(t, "0")
	next := acquireTx(t, m, tt)
	defer m.ReleaseTx(next, true)
	if next.PID() == pid {
		t.Fatalf("backend %d, whose cancel request went unanswered, was reused", pid)
	}
}
