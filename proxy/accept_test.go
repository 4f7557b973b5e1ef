package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
)

// stubConn is a net.Conn with a remote address that records deadlines:
// all the gate touches.
type stubConn struct {
	net.Conn
	remote   net.Addr
	mu       sync.Mutex
	deadline time.Time
}

func (c *stubConn) RemoteAddr() net.Addr { return c.remote }

func (c *stubConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	return nil
}

func (c *stubConn) evicted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.deadline.IsZero() && c.deadline.Before(time.Now())
}

func tcpFrom(ip string) *stubConn {
	return &stubConn{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}}
}

func TestStartupGateCapsEachAddress(t *testing.T) {
	var g startupGate
	a1, a2, a3 := tcpFrom("10.0.0.1"), tcpFrom("10.0.0.1"), tcpFrom("10.0.0.1")
	s1, v1 := g.enter(a1, 0, 2)
	_, v2 := g.enter(a2, 0, 2)
	if v1 != gateAdmitted || v2 != gateAdmitted {
		t.Fatalf("first two from one address: %v, %v; want admitted", v1, v2)
	}
	if s, v := g.enter(a3, 0, 2); s != nil || v != gateAddressFull {
		t.Fatalf("third from one address: %v; want gateAddressFull", v)
	}
	if _, v := g.enter(tcpFrom("10.0.0.2"), 0, 2); v != gateAdmitted {
		t.Fatalf("another address: %v; want admitted", v)
	}
	// The IPv4-mapped form is the same address.
	if _, v := g.enter(tcpFrom("::ffff:10.0.0.1"), 0, 2); v != gateAddressFull {
		t.Fatalf("IPv4-mapped form of a full address: %v; want gateAddressFull", v)
	}
	g.leave(s1)
	g.leave(s1) // idempotent
	if _, v := g.enter(a3, 0, 2); v != gateAdmitted {
		t.Fatalf("after one left: %v; want admitted", v)
	}
	if g.len() != 3 {
		t.Fatalf("%d in start-up; want 3", g.len())
	}
}

func TestStartupGateGroupsIPv6By64(t *testing.T) {
	var g startupGate
	if _, v := g.enter(tcpFrom("2001:db8:0:1::1"), 0, 1); v != gateAdmitted {
		t.Fatal(v)
	}
	if _, v := g.enter(tcpFrom("2001:db8:0:1:ffff::2"), 0, 1); v != gateAddressFull {
		t.Fatalf("same /64: %v; want gateAddressFull", v)
	}
	if _, v := g.enter(tcpFrom("2001:db8:0:2::1"), 0, 1); v != gateAdmitted {
		t.Fatalf("another /64: %v; want admitted", v)
	}
	// Connections without an IP address count only in the total.
	unix := &stubConn{remote: &net.UnixAddr{Name: "@", Net: "unix"}}
	for range 3 {
		if _, v := g.enter(unix, 0, 1); v != gateAdmitted {
			t.Fatalf("unix socket: %v; want admitted", v)
		}
	}
}

func TestStartupGateEvictsTheOldestAtTheTotalCap(t *testing.T) {
	var g startupGate
	conns := []*stubConn{tcpFrom("10.0.0.1"), tcpFrom("10.0.0.2"), tcpFrom("10.0.0.3"), tcpFrom("10.0.0.4")}
	slots := make([]*startupSlot, len(conns))
	for i, c := range conns[:3] {
		slots[i], _ = g.enter(c, 3, 1)
	}
	g.leave(slots[1]) // authenticated: no longer evictable
	s, v := g.enter(conns[3], 3, 1)
	if v != gateAdmitted || s == nil {
		t.Fatalf("under the cap after one left: %v", v)
	}
	s, v = g.enter(tcpFrom("10.0.0.5"), 3, 1)
	if v != gateEvicted || s == nil {
		t.Fatalf("at the cap: %v; want gateEvicted", v)
	}
	for i, want := range []bool{true, false, false, false} {
		if conns[i].evicted() != want {
			t.Errorf("conn %d evicted: %v; want %v", i, !want, want)
		}
	}
	// The evicted one's address is free again; leaving it is a no-op.
	g.leave(slots[0])
	if _, v := g.enter(tcpFrom("10.0.0.1"), 3, 1); v != gateEvicted {
		t.Fatalf("evicted connection's address: %v; want admitted (evicting)", v)
	}
	if !conns[2].evicted() || g.len() != 3 {
		t.Fatalf("want the next oldest evicted and 3 in start-up; have %d", g.len())
	}
}

func TestRetryableAcceptErrors(t *testing.T) {
	wrap := func(errno syscall.Errno) error {
		return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
	}
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if !retryable(wrap(errno)) {
			t.Errorf("%v: not retried", errno)
		}
	}
	for _, err := range []error{net.ErrClosed, &net.OpError{Op: "accept", Err: net.ErrClosed}, wrap(syscall.EBADF), wrap(syscall.EINVAL), errors.New("other")} {
		if retryable(err) {
			t.Errorf("%v: retried; want Serve to end", err)
		}
	}
}

func TestAcceptBackoffDoublesToOneSecondAndLogsRarely(t *testing.T) {
	var b acceptBackoff
	log := zaptest.NewLogger(t)
	var delays []time.Duration
	for range 10 {
		delays = append(delays, b.failed(log, syscall.EMFILE))
	}
	if delays[0] != acceptMinDelay || delays[1] != 2*acceptMinDelay || delays[9] != acceptMaxDelay {
		t.Fatalf("delays %v; want 5ms doubling to 1s", delays)
	}
	b.succeeded()
	if d := b.failed(log, syscall.EMFILE); d != acceptMinDelay {
		t.Fatalf("after a success: %v; want %v", d, acceptMinDelay)
	}
	var r rateLog
	now := time.Now()
	if _, ok := r.due(now); !ok {
		t.Fatal("first event not logged")
	}
	for i := range 5 {
		if _, ok := r.due(now.Add(time.Duration(i) * time.Millisecond)); ok {
			t.Fatal("logged twice within the interval")
		}
	}
	if n, ok := r.due(now.Add(logInterval)); !ok || n != 6 {
		t.Fatalf("after the interval: logged %v for %d events; want 6", ok, n)
	}
}

// failingListener fails its first fails accepts as a process out of
// descriptors does.
type failingListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// bareServer is a Server with no catalog or pool, enough for what is
// decided before a tenant is named, and a loopback listener for it.
func bareServer(t *testing.T) (*Server, net.Listener) {
	t.Helper()
	s, err := New(Config{Logger: zaptest.NewLogger(t), Registerer: prometheus.NewRegistry()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return s, l
}

// TestServeKeepsServingAfterEMFILE: accept failing for want of
// descriptors pauses Serve; it used to end it, and the proxy with it.
func TestServeKeepsServingAfterEMFILE(t *testing.T) {
	s, l := bareServer(t)
	fl := &failingListener{Listener: l}
	fl.fails.Store(6)
	served := make(chan error, 1)
	go func() { served <- s.Serve(fl) }()

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	msg, err := pgproto3.NewFrontend(c, c).Receive()
	if er, ok := msg.(*pgproto3.ErrorResponse); !ok || er.Code != "08P01" {
		t.Fatalf("after six EMFILEs: %#v, %v; want the proxy to answer 08P01", msg, err)
	}
	if fl.fails.Load() >= 0 {
		t.Fatalf("the listener failed only %d times", 6-fl.fails.Load())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v; want ErrServerClosed", err)
	}
}

func TestServeEndsWhenTheListenerBreaks(t *testing.T) {
	s, l := bareServer(t)
	l.Close()
	if err := s.Serve(l); err == nil || errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve on a closed listener: %v; want an accept error", err)
	}
}

// TestRefuseTooManyAnswersLikePostgreSQL: a connection over the
// per-address cap hears FATAL 53300 and is closed.
func TestRefuseTooManyAnswersLikePostgreSQL(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	refuseTooMany(sc)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg, err := pgproto3.NewFrontend(c, c).Receive()
	er, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || er.Severity != "FATAL" || er.Code != "53300" || er.Message != "sorry, too many clients already" {
		t.Fatalf("got %#v, %v; want FATAL 53300 sorry, too many clients already", msg, err)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the error: %v; want EOF", err)
	}
}

func TestStartupCapDefaults(t *testing.T) {
	cfg, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxStartupConns != 1000 || cfg.MaxStartupConnsPerAddr != 100 {
		t.Fatalf("zero config: caps %d and %d; want 1000 and 100", cfg.MaxStartupConns, cfg.MaxStartupConnsPerAddr)
	}
	cfg, err = Config{MaxStartupConns: -1, MaxStartupConnsPerAddr: -1}.withDefaults()
	if err != nil || cfg.MaxStartupConns != -1 || cfg.MaxStartupConnsPerAddr != -1 {
		t.Fatalf("negative caps: %d, %d, %v; want them kept (no cap)", cfg.MaxStartupConns, cfg.MaxStartupConnsPerAddr, err)
	}
	var g startupGate
	for range 5 {
		if _, v := g.enter(tcpFrom("10.0.0.1"), -1, -1); v != gateAdmitted {
			t.Fatalf("with no caps: %v", v)
		}
	}
}
