package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
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

// floodHelperEnv, set, makes the test binary a flood helper instead of
// running tests (see TestMain): its value is the helper's floodJob in
// JSON.
const floodHelperEnv = "TENANTPROXY_TEST_FLOOD_HELPER"

// floodJob is a flood helper's share of the idle connections.
type floodJob struct {
	Addr     string
	Sources  []net.IP
	Count    int
	Parallel int
}

// floodReport is a flood helper's answer to each line on its stdin.
type floodReport struct {
	Opened     int    // connections it opened and holds open
	Failed     int    // connections it could not open
	FirstError string `json:",omitempty"`
	Closed     int    // of those opened, the ones the proxy has closed (or answered)
}

// runFloodHelper is a flood helper's main: at the first line on its
// stdin it opens job's idle connections, and to that line and every
// later one it answers with a floodReport on stdout. It holds the
// connections until its stdin closes, when the parent test is done with
// them or gone, and then exits.
func runFloodHelper(job string) int {
	var j floodJob
	if err := json.Unmarshal([]byte(job), &j); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", floodHelperEnv, err)
		return 2
	}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	var conns []net.Conn
	var rep floodReport
	for in.Scan() {
		if conns == nil {
			var first error
			conns, rep.Failed, first = dialIdle(j.Addr, j.Sources, j.Count, j.Parallel)
			if first != nil {
				rep.FirstError = first.Error()
			}
			rep.Opened = j.Count - rep.Failed
		}
		rep.Closed = 0
		for _, c := range conns {
			if c != nil && closedByPeer(c) {
				rep.Closed++
			}
		}
		if err := out.Encode(rep); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

// closedByPeer reports, without waiting, whether c's peer has closed it
// or sent anything: an idle stranger's connection that the proxy still
// holds has nothing to read.
func closedByPeer(c net.Conn) bool {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return true
	}
	var peekErr error
	raw.Read(func(fd uintptr) bool {
		_, _, peekErr = syscall.Recvfrom(int(fd), make([]byte, 1), syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	return !errors.Is(peekErr, syscall.EAGAIN)
}

// floodHelper is a child process of the test binary that holds a share
// of the idle connections, so that the test process holds only the
// proxy's ends of them.
type floodHelper struct {
	in  io.WriteCloser
	out *json.Decoder
}

// startFloodHelper starts a helper for job; it opens nothing until
// polled. It is stopped when t ends: its stdin is closed, and it exits
// and so closes its connections.
func startFloodHelper(t *testing.T, job floodJob) *floodHelper {
	t.Helper()
	spec, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), floodHelperEnv+"="+string(spec))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		if err := cmd.Wait(); err != nil || stderr.Len() > 0 {
			t.Errorf("flood helper: %v; its stderr: %s", err, stderr.String())
		}
	})
	return &floodHelper{in: in, out: json.NewDecoder(out)}
}

// pollFloodHelpers asks every helper at once for its report (the first
// poll makes them open their connections) and returns their sum.
func pollFloodHelpers(t *testing.T, helpers []*floodHelper) floodReport {
	t.Helper()
	for _, h := range helpers {
		if _, err := io.WriteString(h.in, "\n"); err != nil {
			t.Fatalf("flood helper: %v", err)
		}
	}
	var sum floodReport
	for _, h := range helpers {
		var r floodReport
		if err := h.out.Decode(&r); err != nil {
			t.Fatalf("flood helper's report: %v", err)
		}
		sum.Opened += r.Opened
		sum.Failed += r.Failed
		sum.Closed += r.Closed
		if sum.FirstError == "" {
			sum.FirstError = r.FirstError
		}
	}
	return sum
}

// floodHelpersFor splits count connections from sources, parallel at a
// time, into jobs for as many helpers as the hard limit of open files
// needs (a helper's Go runtime raises its soft limit to the hard one),
// keeping each well under the limit: two here, where it is 20,000.
func floodHelpersFor(t *testing.T, addr string, sources []net.IP, count, parallel int) []floodJob {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	const spare = 1000 // the helper's runtime and pipes, with room to spare
	if lim.Max <= 2*spare {
		t.Fatalf("open file limit %d (hard): too low for a flood helper", lim.Max)
	}
	perHelper := int(min(lim.Max-spare, uint64(count)))
	k := (count + perHelper - 1) / perHelper
	jobs := make([]floodJob, k)
	for i := range jobs {
		jobs[i] = floodJob{
			Addr:     addr,
			Sources:  sources[i*len(sources)/k : (i+1)*len(sources)/k],
			Count:    (i+1)*count/k - i*count/k,
			Parallel: max(1, parallel/k),
		}
	}
	return jobs
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

// dialIdle opens count idle TCP connections to addr, parallel at a time,
// from the loopback addresses sources in turn, and returns them in the
// order they were opened when parallel is 1 (the order the proxy accepts
// them in); a connection that could not be opened is nil, counted in
// failed, and the first such error is returned. They send nothing.
func dialIdle(addr string, sources []net.IP, count, parallel int) (conns []net.Conn, failed int, first error) {
	conns = make([]net.Conn, count)
	var next atomic.Int64
	var wg sync.WaitGroup
	var nFailed atomic.Int64
	var mu sync.Mutex
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
					if nFailed.Add(1) == 1 {
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
	return conns, int(nFailed.Load()), first
}

// flood is dialIdle in this process: a connection that could not be
// opened fails t without stopping it, so that the test goes on to show
// what a real client gets. Every connection is closed when t ends.
func flood(t *testing.T, addr string, sources []net.IP, count, parallel int) []net.Conn {
	t.Helper()
	conns, failed, first := dialIdle(addr, sources, count, parallel)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	if first != nil {
		t.Errorf("%d of %d idle connections could not be opened; the first: %v", failed, count, first)
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
// connections from one address and then from 200, and a real client
// still logs in at once; the proxy holds about MaxStartupConns of them,
// not all. Before the start-up caps, the proxy accepted every one, ran
// out of descriptors, and Serve returned on EMFILE: the login was
// refused and the proxy stopped serving.
//
// The strangers' ends of the connections, but the first address's, live
// in flood helpers, child processes of the test binary, so that this
// process holds only the proxy's ends and the open file limit (20,000
// here, which an unprivileged process cannot raise) need not fit both
// ends of 25,000: this process needs about the proxy's start-up cap
// plus a few hundred descriptors, and a helper its share. So the flood
// is never scaled down: more helpers share it where the limit is lower
// (floodHelpersFor), and a limit below what the proxy itself needs fails
// the test.
//
// The login's time is checked against the 1 s, which is not a
// performance bound: the login takes milliseconds here, and a starved
// one fails or waits for idle connections to time out (StartupTimeout,
// a minute in this test).
func TestIdleStrangersDoNotLockOutLogins(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 25,000 connections")
	}
	e := newProxyEnv(t)
	reg := prometheus.NewRegistry()
	_, addr := e.startProxy(t, proxy.Config{
		StartupTimeout: time.Minute,
		Registerer:     reg,
		// Evicted and refused connections would log a debug line each.
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
	})
	ctx := ctxT(t)
	const fromOne, admitted = 150, 100
	// Strangers on 200 addresses in turn, about 5 of each in start-up
	// at a time: the proxy keeps the newest 1,000 and closes the oldest.
	var helpers []*floodHelper
	for _, job := range floodHelpersFor(t, addr, loopbackSources(3, 200), floodTarget-fromOne, 16) {
		helpers = append(helpers, startFloodHelper(t, job))
	}
	baseline := openFDs()

	// One stranger's address: 100 get in, the rest hear 53300 at once
	// (read below).
	one := flood(t, addr, loopbackSources(2, 1), fromOne, 1)
	rep := pollFloodHelpers(t, helpers)
	if rep.Failed > 0 {
		t.Errorf("%d of %d idle connections could not be opened; the first: %s", rep.Failed, rep.Opened+rep.Failed, rep.FirstError)
	}
	n := fromOne + rep.Opened
	t.Logf("%d idle connections opened against the proxy, %d of them by %d helper processes", n, rep.Opened, len(helpers))

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
		// Besides the first address's client ends, which are here, this
		// process should hold at most the proxy's start-up cap of the
		// connections' ends (and some closing ones still on their way
		// out).
		var held int
		for range 100 {
			held = openFDs() - baseline - fromOne
			if held <= 1000+100 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("the proxy's descriptors for %d idle connections: about %d", n, held)
		if held > 1000+100 {
			t.Errorf("the proxy holds about %d descriptors for %d idle connections; want at most its start-up cap (1000)", held, n)
		}
	}
	rep = pollFloodHelpers(t, helpers)
	t.Logf("of the helpers' %d connections, the proxy has closed %d and holds %d", rep.Opened, rep.Closed, rep.Opened-rep.Closed)
	if rep.Opened-rep.Closed > 1000+100 {
		t.Errorf("the proxy holds %d of the helpers' idle connections; want at most its start-up cap (1000)", rep.Opened-rep.Closed)
	}
	for _, c := range one[admitted:] {
		expectTooManyClients(t, c)
	}
	closed := closedByReason(t, reg)
	if closed["address_cap"] < fromOne-admitted || closed["evicted"] < float64(n-2000) {
		t.Errorf("tenantproxy_startup_connections_closed_total %v; want address_cap >= %d and evicted >= %d", closed, fromOne-admitted, n-2000)
	}
	// Still up: a new login gets in and is served.
	var got string
	if err := connect(t, dsn(addr, "alice.acme", tenantPassword)).QueryRow(ctx, "SELECT 'still serving'").Scan(&got); err != nil {
		t.Errorf("a login after the flood: %q, %v; want the proxy still serving", got, err)
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
