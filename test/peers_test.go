package test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestPeersCancelAcrossInstances: two proxies on one catalog behind a
// round-robin TCP balancer. A client's session lands on one, its
// CancelRequest (a new connection) on the other, which forwards it to the
// first by the peer id in the key: the statement ends with 57014 within a
// second, in both pool modes. A key naming a peer id nobody has, or the
// right peer with a wrong secret, cancels nothing. Without peering the
// same cancel is lost.
func TestPeersCancelAcrossInstances(t *testing.T) {
	e := newProxyEnv(t)
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			lb := startPeers(t, e, mode, true)
			conn, run := lb.sleepOnFirst(t, e, mode)
			key := cancelKey(conn)
			forged := append(binary.BigEndian.AppendUint32(nil, conn.PID()&^(1023<<21)|7<<21), key[4:]...)
			wrong := append(key[:4:4], ^key[4], ^key[5], ^key[6], ^key[7])
			for _, k := range [][]byte{forged, wrong} {
				if err := lb.cancelOnSecond(t, k); err != nil {
					t.Errorf("cancel request with a bad key: %v; want it dropped without an answer", err)
				}
			}
			select {
			case err := <-run:
				t.Fatalf("statement ended after cancel requests with bad keys: %v", err)
			case <-time.After(500 * time.Millisecond):
			}
			start := time.Now()
			if err := lb.cancelOnSecond(t, key); err != nil {
				t.Errorf("cancel request: %v", err)
			}
			select {
			case err := <-run:
				if sqlstateOf(err) != "57014" {
					t.Fatalf("pg_sleep(10) after its cancel key went to the other instance: %v; want 57014", err)
				}
				t.Logf("cancelled through the peer %s after the request", time.Since(start).Round(time.Millisecond))
			case <-time.After(time.Second):
				t.Fatal("pg_sleep(10) still running 1 s after its cancel key went to the other instance; want 57014")
			}
		})
	}
	t.Run("without peering", func(t *testing.T) {
		lb := startPeers(t, e, proxy.PoolSession, false)
		conn, run := lb.sleepOnFirst(t, e, proxy.PoolSession)
		if err := lb.cancelOnSecond(t, cancelKey(conn)); err != nil {
			t.Errorf("cancel request: %v", err)
		}
		select {
		case err := <-run:
			t.Fatalf("statement ended without peering: %v; want the cancel lost on the other instance", err)
		case <-time.After(1500 * time.Millisecond):
		}
		// The key is good where the session is.
		if err := fireCancel(lb.backends[0], cancelKey(conn)); err != nil {
			t.Error(err)
		}
		if err := <-run; sqlstateOf(err) != "57014" {
			t.Errorf("cancel on the session's own instance: %v; want 57014", err)
		}
	})
}

// startPeers starts two proxies in mode on e's catalog, each with its
// own pool, peered (ids 1 and 2, both given the same peer list) or not,
// and a balancer in front of them.
func startPeers(t *testing.T, e *proxyEnv, mode string, peered bool) *roundRobin {
	t.Helper()
	var ls [2]net.Listener
	peers := map[int]string{}
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls[i] = l
		peers[i+1] = l.Addr().String()
	}
	lb := &roundRobin{}
	for i, l := range ls {
		cfg := proxy.Config{PoolMode: mode}
		if peered {
			cfg.PeerID, cfg.Peers = i+1, peers
		}
		mgr, err := pool.NewManager(pool.Config{}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mgr.Close() })
		StartProxyOn(t, l, cfg, e.cat, mgr)
		lb.backends = append(lb.backends, l.Addr().String())
	}
	lb.start(t)
	return lb
}

// roundRobin is a TCP load balancer: each accepted connection goes to the
// next backend in turn, as a balancer without session affinity does.
type roundRobin struct {
	backends []string
	addr     string
	mu       sync.Mutex
	next     int
	// picked is the backend index of every connection accepted so far.
	picked []int
}

func (lb *roundRobin) start(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb.addr = l.Addr().String()
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			lb.mu.Lock()
			i := lb.next % len(lb.backends)
			lb.next++
			lb.picked = append(lb.picked, i)
			lb.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				splice(c, lb.backends[i])
			}()
		}
	}()
}

// splice relays c to a new connection to addr until either side is done.
func splice(c net.Conn, addr string) {
	defer c.Close()
	b, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return
	}
	defer b.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(b, c); b.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, b); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// sleepOnFirst connects acme's alice through the balancer (the first
// connection: the first instance) and starts SELECT pg_sleep(10), which
// it waits to see running on the server. run reports the statement's end.
func (lb *roundRobin) sleepOnFirst(t *testing.T, e *proxyEnv, mode string) (*pgconn.PgConn, chan error) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgconn.Connect(ctx, dsn(lb.addr, "alice.acme", tenantPassword))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	tag := fmt.Sprintf("peers_%s_%d", mode, time.Now().UnixNano())
	run := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(10) AS "+tag).ReadAll()
		run <- err
	}()
	admin, err := pgx.Connect(ctx, e.cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var n int
		q := "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1"
		if err := admin.QueryRow(ctx, q, tag).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return conn, run
		}
		if time.Now().After(deadline) {
			t.Fatal("pg_sleep(10) never showed up running on the server")
		}
	}
}

// cancelOnSecond sends a CancelRequest with key through the balancer,
// which must hand it to the second instance, and waits for the answer.
func (lb *roundRobin) cancelOnSecond(t *testing.T, key []byte) error {
	t.Helper()
	lb.mu.Lock()
	second := lb.next%len(lb.backends) == 1
	lb.mu.Unlock()
	if !second {
		t.Fatal("the balancer's next connection would go to the first instance")
	}
	err := fireCancel(lb.addr, key)
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.next++ // the next request goes to the second instance again
	if len(lb.picked) < 2 || lb.picked[0] != 0 || lb.picked[len(lb.picked)-1] != 1 {
		return errors.Join(err, fmt.Errorf("balancer picks %v: want the session on 0, the cancel on 1", lb.picked))
	}
	return err
}
