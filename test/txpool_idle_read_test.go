package test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestTxPoolClientWritesOfAnySizeAroundTheIdleRead sends simple queries,
// extended queries and pipelined batches of sizes on both sides of what an
// idle transaction-mode client's first read takes (proxy's idlePrefixSize)
// and of its read buffer: every message must arrive whole and in order.
func TestTxPoolClientWritesOfAnySizeAroundTheIdleRead(t *testing.T) {
	e := newTxEnv(t, pgtest.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx := ctxT(t)
	conn := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	for size := 400; size < 20000; size += 97 {
		lit := strings.Repeat("x", size)
		var got int
		if err := conn.QueryRow(ctx, "SELECT length($1::text)", lit).Scan(&got); err != nil || got != size {
			t.Fatalf("extended %d: %d %v", size, got, err)
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
}
