package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestTxPoolClientWritesOfAnySizeAroundTheIdleRead sends simple queries,
// extended queries and pipelined batches of sizes on both sides of what an
// idle transaction-mode client's first read takes (proxy's idlePrefixSize)
// and of its read buffer, and replies past that buffer: every message must
// arrive whole and in order.
func TestTxPoolClientWritesOfAnySizeAroundTheIdleRead(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx := ctxT(t)
	conn := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	for size := 400; size < 20000; size += 97 {
		lit := strings.Repeat("x", size)
		var got int
		if err := conn.QueryRow(ctx, "SELECT length($1::text)", lit).Scan(&got); err != nil || got != size {
			t.Fatalf("extended %d: %d %v", size, got, err)
		}
		// And back: replies past the relay's read buffer arrive whole.
		var back string
		if err := conn.QueryRow(ctx, "SELECT $1::text", lit).Scan(&back); err != nil || back != lit {
			t.Fatalf("echo %d: %d bytes back, %v", size, len(back), err)
		}
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT length('%s')", lit), pgx.QueryExecModeSimpleProtocol).Scan(&got); err != nil || got != size {
			t.Fatalf("simple %d: %d %v", size, got, err)
		}
		b := &pgx.Batch{}
		for i := 0; i < 20; i++ {
			b.Queue("SELECT $1::int + length($2::text)", i, lit[:size%700])
		}
		br := conn.SendBatch(ctx, b)
		for i := 0; i < 20; i++ {
			if err := br.QueryRow().Scan(&got); err != nil || got != i+size%700 {
				t.Fatalf("batch %d/%d: %d %v", size, i, got, err)
			}
		}
		if err := br.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// The relay kept track of every message: the pool's only connection
	// went back after each transaction, so another client gets it.
	other := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := other.Exec(octx, "SELECT 1"); err != nil {
		t.Fatalf("another client after the sizes: %v", err)
	}
}

// TestTxPoolMessagesOwedNoReplyHoldNoConnection sends COPY messages outside
// a COPY, which PostgreSQL reads and ignores: the proxy must not wait for
// an answer that never comes, nor keep the pool's only connection.
func TestTxPoolMessagesOwedNoReplyHoldNoConnection(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
	defer cancel()
	conn := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	other := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	fe := conn.PgConn().Frontend()
	fe.Send(&pgproto3.CopyData{Data: []byte("stray")})
	fe.Send(&pgproto3.CopyDone{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pgx.Conn{other, conn, other} {
		var n int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil || n != 1 {
			t.Fatalf("after stray COPY messages: %d, %v", n, err)
		}
	}
}
