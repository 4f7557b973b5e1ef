package test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// bigStatementSize is the body of each hostile statement: 60 MiB, under
// the default 64 MiB message limit.
const bigStatementSize = 60 << 20

// idleRSSLimit is what the proxy's resident memory must come back under
// while the clients that sent big statements stay connected and idle.
const idleRSSLimit = 100 << 20

// TestBigStatementsDoNotPinProxyMemory is issue 12's hostile-client test
// for memory, in both pool modes, against the built binary run as its
// own process so that its RSS can be read. Ten clients each send one
// 60 MiB statement (every other one refused by the policy, never sent
// on) and stay connected, idle: the proxy's RSS must come back under
// 100 MB (before the fix every client kept a buffer of its statement's
// size, 0.6-1.2 GB for ten). Then, with --max-buffered-bytes leaving room
// for one such statement, a client stalls in the middle of one; another
// client's 60 MiB statement gets FATAL 53200 after the wait, without the
// proxy reading it; the others are still served, and the stalled one
// completes.
func TestBigStatementsDoNotPinProxyMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and sends over a GB through it")
	}
	e := newProxyEnv(t)
	bin := buildTenantproxy(t)
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(mode, func(t *testing.T) {
			// Room for one statement at a time: transaction mode counts a
			// message twice (read, then copied into the server write).
			copies := 1
			if mode == proxy.PoolTransaction {
				copies = 2
			}
			p := startProxyProcess(t, bin, "--catalog-dsn", e.catalogDSN, "--auth", proxy.AuthTrust,
				"--pool-mode", mode, "--max-buffered-bytes", strconv.Itoa(copies*100<<20))
			clients := make([]*rawClient, 10)
			for i := range clients {
				clients[i] = p.login(t, "alice."+tierTenants[i%len(tierTenants)].sub)
			}
			before := p.status(t, "VmRSS")

			allowed := bigQuery{head: "SELECT length('", fill: 'a', tail: "')", body: bigStatementSize}
			refused := bigQuery{head: "CREATE TABLE hostile (body text DEFAULT '", fill: 'b', tail: "')", body: bigStatementSize}
			for i, c := range clients {
				q, want := allowed, allowed.fillLen()
				if i%2 == 1 {
					q, want = refused, -1
				}
				if _, err := q.write(c.conn, 0, q.len()); err != nil {
					t.Fatalf("client %d sending its statement: %v", i, err)
				}
				c.expectResult(t, want)
			}
			peak := p.status(t, "VmHWM")
			idle := p.waitRSSBelow(t, idleRSSLimit)
			t.Logf("%s mode, ten 60 MiB statements: RSS %.1f MiB before, peak %.1f MiB, %.1f MiB with the ten clients idle",
				mode, mib(before), mib(peak), mib(idle))

			// A client stalls halfway through a statement: the proxy holds
			// its buffer, all the cap allows.
			staller := clients[0]
			if _, err := allowed.write(staller.conn, 0, allowed.len()/2); err != nil {
				t.Fatal(err)
			}
			p.waitBuffered(t, int64(copies*allowed.len()))

			victim := p.login(t, "alice.globex")
			victim.conn.SetDeadline(time.Now().Add(time.Minute))
			written := make(chan int, 1)
			go func() {
				n, _ := allowed.write(victim.conn, 0, allowed.len())
				written <- n
			}()
			start := time.Now()
			victim.expectFatal(t, "53200")
			if n := <-written; n >= allowed.len() {
				t.Fatalf("the victim wrote all of its %d bytes; want the proxy to close without reading them", n)
			} else {
				t.Logf("53200 after %v; the client could write %.1f of its %.1f MiB before the proxy closed", time.Since(start).Round(time.Millisecond), mib(int64(n)), mib(int64(allowed.len())))
			}

			for _, c := range clients[1:] {
				if _, err := c.conn.Write(simpleQuery("SELECT 42")); err != nil {
					t.Fatal(err)
				}
				c.expectResult(t, 42)
			}
			if _, err := allowed.write(staller.conn, allowed.len()/2, allowed.len()); err != nil {
				t.Fatal(err)
			}
			staller.expectResult(t, allowed.fillLen())
			t.Logf("%s mode, after the cap test: RSS %.1f MiB", mode, mib(p.waitRSSBelow(t, idleRSSLimit)))
		})
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// bigQuery is a simple Query of body bytes (its terminating NUL
// included): head, fill repeated, tail. It is written from a small
// buffer, so the test holds none of it.
type bigQuery struct {
	head, tail string
	fill       byte
	body       int
}

func (q bigQuery) len() int     { return 5 + q.body }
func (q bigQuery) fillLen() int { return q.body - len(q.head) - len(q.tail) - 1 }

// write writes bytes [from, to) of the message and returns how many it
// wrote.
func (q bigQuery) write(w io.Writer, from, to int) (int, error) {
	hdr := binary.BigEndian.AppendUint32([]byte{'Q'}, uint32(4+q.body))
	fill := bytes.Repeat([]byte{q.fill}, 1<<20)
	segments := []struct {
		b      []byte
		n      int
		repeat bool
	}{{hdr, len(hdr), false}, {[]byte(q.head), len(q.head), false}, {fill, q.fillLen(), true}, {[]byte(q.tail + "\x00"), len(q.tail) + 1, false}}
	written, off := 0, 0
	for _, s := range segments {
		for lo, hi := max(from, off), min(to, off+s.n); lo < hi; {
			chunk := fill[:min(len(fill), hi-lo)]
			if !s.repeat {
				chunk = s.b[lo-off : hi-off]
			}
			n, err := w.Write(chunk)
			written += n
			lo += n
			if err != nil {
				return written, err
			}
		}
		off += s.n
	}
	return written, nil
}

func simpleQuery(sql string) []byte {
	b, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	return b
}

// rawClient is a client socket logged in through the proxy, speaking the
// protocol by hand.
type rawClient struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

// expectResult reads up to ReadyForQuery: an integer result of want, or
// (want < 0) a refusal, 42501.
func (c *rawClient) expectResult(t *testing.T, want int) {
	t.Helper()
	c.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	var got []string
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("reading the result: %v after %q", err, got)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			got = append(got, "E"+m.Code)
		case *pgproto3.DataRow:
			got = append(got, "D"+string(m.Values[0]))
		case *pgproto3.ReadyForQuery:
			wantGot := "D" + strconv.Itoa(want)
			if want < 0 {
				wantGot = "E42501"
			}
			if strings.Join(got, " ") != wantGot {
				t.Fatalf("result %q; want %q", got, wantGot)
			}
			return
		}
	}
}

// expectFatal reads up to an ErrorResponse, which must be FATAL with
// sqlstate, then the end of the connection.
func (c *rawClient) expectFatal(t *testing.T, sqlstate string) {
	t.Helper()
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("want FATAL %s, got %v", sqlstate, err)
		}
		if m, ok := msg.(*pgproto3.ErrorResponse); ok {
			if m.Code != sqlstate || m.Severity != "FATAL" {
				t.Fatalf("%s %s %q; want FATAL %s", m.Severity, m.Code, m.Message, sqlstate)
			}
			break
		}
	}
	if msg, err := c.fe.Receive(); err == nil {
		t.Fatalf("after the FATAL error the proxy sent %T; want the connection closed", msg)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the connection stayed open after the FATAL error")
	}
}

// proxyProcess is the tenantproxy binary serving as a process of its own.
type proxyProcess struct {
	cmd         *exec.Cmd
	addr, admin string
}

// buildTenantproxy builds the binary into a temporary directory.
func buildTenantproxy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tenantproxy")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tenantproxy/tenantproxy/cmd/tenantproxy").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startProxyProcess runs `bin serve` with args on free ports of
// 127.0.0.1 and waits until it accepts clients. It is stopped (SIGTERM)
// when t ends; its log is shown if t failed.
func startProxyProcess(t *testing.T, bin string, args ...string) *proxyProcess {
	t.Helper()
	p := &proxyProcess{addr: FreeAddr(t), admin: FreeAddr(t)}
	logPath := filepath.Join(t.TempDir(), "tenantproxy.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	full := append([]string{"serve", "--listen", p.addr, "--admin-listen", p.admin, "--log-level", "warn", "--drain-timeout", "2s"}, args...)
	p.cmd = exec.Command(bin, full...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TENANTPROXY_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		p.cmd.Wait()
		log.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			t.Errorf("tenantproxy ignored SIGTERM")
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("tenantproxy log:\n%s", out)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
			c.Close()
			return p
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(logPath)
			t.Fatalf("tenantproxy exited during start-up:\n%s", out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tenantproxy not accepting on %s after 30 s", p.addr)
		}
	}
}

// login connects user (trust authentication) and reads up to the first
// ReadyForQuery.
func (p *proxyProcess) login(t *testing.T, user string) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawClient{conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
	c.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": user, "database": "app"}})
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("login %s: %v", user, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			t.Fatalf("login %s: %s %s", user, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return c
		}
	}
}

// status returns a memory figure of the process's /proc status (VmRSS,
// VmHWM) in bytes.
func (p *proxyProcess) status(t *testing.T, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc status", field)
	return 0
}

// waitRSSBelow waits up to 20 s for the process's RSS to drop below
// limit, and returns it once it has settled (the proxy returns memory to
// the operating system at most once a second).
func (p *proxyProcess) waitRSSBelow(t *testing.T, limit int64) int64 {
	t.Helper()
	var rss int64
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if rss = p.status(t, "VmRSS"); rss < limit {
			time.Sleep(2 * time.Second)
			if rss = p.status(t, "VmRSS"); rss < limit {
				return rss
			}
		}
	}
	t.Fatalf("proxy RSS %.1f MiB after 20 s with its clients idle; want under %.0f MiB", mib(rss), mib(limit))
	return 0
}

// waitBuffered waits until the proxy reports at least n bytes held for
// client messages (tenantproxy_buffered_message_bytes).
func (p *proxyProcess) waitBuffered(t *testing.T, n int64) {
	t.Helper()
	var got float64
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + p.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "tenantproxy_buffered_message_bytes "); ok {
				got, _ = strconv.ParseFloat(v, 64)
			}
		}
		resp.Body.Close()
		if got >= float64(n) {
			return
		}
	}
	t.Fatalf("the proxy holds %.0f bytes for client messages; want at least %d", got, n)
}
