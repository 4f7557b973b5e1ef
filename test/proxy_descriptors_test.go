package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// floodTarget is the count of idle strangers' connections.
const floodTarget = 25000

// floodReserve is what the test process needs besides the strangers'
// client sockets: the proxy's ends of the connections still in start-up
// (at most MaxStartupConns, 1,000, plus those it is closing), the pool's
// and the harness's connections, pgx's.
const floodReserve = 2500

// raiseFileLimitFor makes room for floodTarget client sockets: both ends
// of every connection live in this process. It raises the soft limit of
// open files to what the flood needs, raising the hard limit too when
// the process may (root); otherwise to the hard limit, and then the
// flood is scaled down to fit, which it reports. The limits are restored
// when t ends (register this before anything that opens sockets, so the
// sockets are closed first).
func raiseFileLimitFor(t *testing.T) int {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	need := uint64(floodTarget + floodReserve)
	lim := old
	lim.Cur = need
	if lim.Max < need {
		lim.Max = need
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		lim = old
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	n := min(floodTarget, int(lim.Cur)-floodReserve)
	if n < floodTarget {
		t.Logf("open file limit %d (hard %d) fits %d idle connections, not %d: flood scaled down", lim.Cur, lim.Max, n, floodTarget)
	}
	if n < 5000 {
		t.Fatalf("open file limit %d fits only %d idle connections; raise it (ulimit -Hn) to at least %d", lim.Cur, n, need)
	}
	return n
}

// openFDs counts this process's open descriptors, -1 where /proc is not
// there to tell.
func openFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(entries)
}

// flood opens count idle TCP connections to addr, parallel at a time,
// from the loopback addresses sources in turn, and returns them in the
// order they were opened when parallel is 1 (the order the proxy accepts
// them in); a connection that could not be opened is nil, and fails t
// without stopping it, so that the test goes on to show what a real
// client gets. They send nothing. Every connection is closed when t
// ends.
func flood(t *testing.T, addr string, sources []net.IP, count, parallel int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, count)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	var mu sync.Mutex
	var first error
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				d := net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: sources[i%len(sources)]}}
				c, err := d.Dial("tcp", addr)
				if err != nil {
					if failed.Add(1) == 1 {
						mu.Lock()
						first = fmt.Errorf("connection %d: %w", i, err)
						mu.Unlock()
					}
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if first != nil {
		t.Errorf("%d of %d idle connections could not be opened; the first: %v", failed.Load(), count, first)
	}
	return conns
}

// loopbackSources returns n addresses of 127.0.0.0/8 other than
// 127.0.0.1, starting at 127.0.<block>.1: strangers on other hosts than
// the real client's. Linux routes the whole /8 to the loopback device.
func loopbackSources(block, n int) []net.IP {
	ips := make([]net.IP, n)
	for i := range ips {
		ips[i] = net.IPv4(127, byte(block+i/250), byte(1+i%250), 1)
	}
	return ips
}

// expectTooManyClients reads PostgreSQL's answer to a connection over a
// cap, FATAL 53300, and the close that follows.
func expectTooManyClients(t *testing.T, c net.Conn) {
	t.Helper()
	if c == nil {
		t.Fatal("the connection was not opened")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := pgproto3.NewFrontend(c, c).Receive()
	er, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || er.Severity != "FATAL" || er.Code != "53300" || er.Message != "sorry, too many clients already" {
		t.Fatalf("connection over the per-address cap: %#v, %v; want FATAL 53300 sorry, too many clients already", msg, err)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after the refusal: %v; want the connection closed", err)
	}
}

// TestIdleStrangersDoNotLockOutLogins: 25,000 idle unauthenticated
// connections (scaled down if the open file limit cannot hold them, see
// raiseFileLimitFor) from one address and then from 200, and a real
// client still logs in at once; the proxy holds about MaxStartupConns of
// them, not all. Before the start-up caps, the proxy accepted every one,
// ran out of descriptors, and Serve returned on EMFILE: the login was
// refused and the proxy stopped serving.
//
// The login's time is checked against the 1 s, which is not a
// performance bound: the login takes milliseconds here, and a starved
// one fails or waits for idle connections to time out (StartupTimeout,
// a minute in this test).
func TestIdleStrangersDoNotLockOutLogins(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 25,000 connections")
	}
	n := raiseFileLimitFor(t)
	e := newProxyEnv(t)
	reg := prometheus.NewRegistry()
	_, addr := e.startProxy(t, proxy.Config{
		StartupTimeout: time.Minute,
		Registerer:     reg,
		// Evicted and refused connections would log a debug line each.
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
	})
	ctx := ctxT(t)
	baseline := openFDs()

	// One stranger's address: 100 get in, the rest hear 53300 at once
	// (read below).
	one := flood(t, addr, loopbackSources(2, 1), 150, 1)
	// Then strangers on 200 addresses in turn, about 5 of each in
	// start-up at a time: the proxy keeps the newest 1,000 and closes
	// the oldest.
	many := flood(t, addr, loopbackSources(3, 200), n-len(one), 16)
	open := 0
	for _, c := range append(one, many...) {
		if c != nil {
			open++
		}
	}
	t.Logf("%d idle connections open against the proxy", open)

	start := time.Now()
	conn, err := pgx.Connect(ctx, dsn(addr, "alice.acme", tenantPassword))
	if err != nil {
		t.Fatalf("login with %d idle connections open: %v", n, err)
	}
	defer conn.Close(context.Background())
	var x int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&x); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("login and first query with %d idle connections open: %s", n, took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("login took %s with idle connections open; want under 1 s (a login must not wait for them)", took)
	}

	if baseline >= 0 {
		// This process holds the strangers' n client sockets; the proxy
		// should hold at most its start-up cap of the other ends (some
		// closing ones are still on their way out).
		var held int
		for range 100 {
			held = openFDs() - baseline - n
			if held <= 1000+100 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("the proxy's descriptors for idle connections: about %d", held)
		if held > 1000+100 {
			t.Errorf("the proxy holds about %d descriptors for %d idle connections; want at most its start-up cap (1000)", held, n)
		}
	}
	for _, c := range one[100:] {
		expectTooManyClients(t, c)
	}
	closed := closedByReason(t, reg)
	if closed["address_cap"] < 50 || closed["evicted"] < float64(n-2000) {
		t.Errorf("tenantproxy_startup_connections_closed_total %v; want address_cap >= 50 and evicted >= %d", closed, n-2000)
	}
}

func closedByReason(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "tenantproxy_startup_connections_closed_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					got[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return got
}

// TestServeSurvivesRunningOutOfDescriptors: with every descriptor of the
// process taken, the proxy's accept fails with EMFILE; it pauses and
// accepts again once descriptors are free, and serves the connection
// that waited and new logins. Serve used to return on EMFILE: the
// proxy stopped serving for good.
func TestServeSurvivesRunningOutOfDescriptors(t *testing.T) {
	e := newProxyEnv(t)
	_, addr := e.startProxy(t, proxy.Config{})
	ctx := ctxT(t)

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	restore := func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) }
	t.Cleanup(restore)
	var fills []*os.File
	closeFills := func() {
		for _, f := range fills {
			f.Close()
		}
		fills = nil
	}
	t.Cleanup(closeFills)
	if n := openFDs(); n > 0 {
		// Fill a small table rather than a large one.
		low := old
		low.Cur = uint64(n + 64)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
			t.Fatal(err)
		}
	}
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		fills = append(fills, f)
	}
	// One descriptor for the client's socket; the proxy's accept of it
	// finds none.
	fills[len(fills)-1].Close()
	fills = fills[:len(fills)-1]
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial with one descriptor free: %v", err)
	}
	defer c.Close()
	time.Sleep(500 * time.Millisecond) // accept fails with EMFILE meanwhile
	closeFills()
	restore()

	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	msg, err := pgproto3.NewFrontend(c, c).Receive()
	if er, ok := msg.(*pgproto3.ErrorResponse); !ok || er.Code != "08P01" {
		t.Fatalf("the connection that waited through EMFILE: %#v, %v; want the proxy's 08P01", msg, err)
	}
	conn := connect(t, dsn(addr, "alice.acme", tenantPassword))
	var got string
	if err := conn.QueryRow(ctx, "SELECT 'still serving'").Scan(&got); err != nil || !strings.HasPrefix(got, "still") {
		t.Fatalf("a login after EMFILE: %q, %v", got, err)
	}
}
