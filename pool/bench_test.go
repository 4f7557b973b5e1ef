package pool_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/pool"
)

// BenchmarkAcquireRelease is one client session's pool overhead on a warm
// pool: Acquire (liveness peek, setup round trip when there is setup) and
// Release (DISCARD ALL round trip), against the harness's PostgreSQL over
// TCP on 127.0.0.1. Round trips dominate; the pool's own work is the
// allocations.
//
// go test -run '^$' -bench AcquireRelease -benchmem -count 5 ./pool/
// on the 2-core dev machine (PostgreSQL 15, Go 1.26, load average ~5 from
// other work, so times spread; best and typical of 5 runs):
//
//	database-tier (no setup: peek + DISCARD ALL)  12.5 µs best, ~17 µs typical   0 B/op  0 allocs/op
//	shared-tier   (SET app.tenant_id)             34 µs best,   ~55 µs typical   0 B/op  0 allocs/op
//	schema-tier   (SET ROLE; SET search_path)     33 µs best,   ~43 µs typical   0 B/op  0 allocs/op
//
// The setup round trip costs about as much as the reset; issue 4 saves it
// when a connection already carries the tenant's context.
func BenchmarkAcquireRelease(b *testing.B) {
	f := newFixture(b)
	for _, bc := range []struct {
		name  string
		setup []string
	}{
		{"database-tier", nil},
		{"shared-tier", []string{"SET app.tenant_id = 'acme'"}},
		{"schema-tier", f.schemaSetup()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m, _ := newManager(b, pool.Config{MaxConnsPerKey: 1})
			tg := f.target(bc.setup...)
			ctx := context.Background()
			m.Release(acquire(b, m, tg), true)
			b.ReportAllocs()
			for b.Loop() {
				c, err := m.Acquire(ctx, tg)
				if err != nil {
					b.Fatal(err)
				}
				m.Release(c, true)
			}
		})
	}
}

// BenchmarkTxContextSwitch is the server's price of moving a connection
// between tenants in transaction mode: one transaction (SELECT 1) per
// op on one connection, always for the same shared-tier tenant (no setup)
// or alternating between two (the switch Query in front, in the same
// write, as the proxy sends it). No proxy in between: the difference is
// PostgreSQL running the switch's statements. bare-set puts only the
// tenant's SET in front, every time: the least any switch could cost,
// though unsafe (a failed SET would leave the previous tenant's context).
//
//	go test -run '^$' -bench TxContextSwitch -count 5 ./pool/
func BenchmarkTxContextSwitch(b *testing.B) {
	f := newFixture(b)
	tenant := func(id string) *pool.TxTarget {
		tg := f.target("SET app.tenant_id = '" + id + "'")
		tg.Tenant = id
		return pool.NewTxTarget(tg)
	}
	query, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	bareSet, _ := (&pgproto3.Query{String: "SET app.tenant_id = 'a'"}).Encode(nil)
	for _, bc := range []struct {
		name    string
		tenants []*pool.TxTarget
		extra   []byte
	}{
		{"same-tenant", []*pool.TxTarget{tenant("a")}, nil},
		{"bare-set", []*pool.TxTarget{tenant("a")}, bareSet},
		{"switching", []*pool.TxTarget{tenant("a"), tenant("b")}, nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m, _ := newManager(b, pool.Config{MaxConnsPerKey: 1})
			ctx := context.Background()
			var out []byte
			i := 0
			for b.Loop() {
				c, setup, queries, err := m.AcquireTx(ctx, bc.tenants[i%len(bc.tenants)])
				if err != nil {
					b.Fatal(err)
				}
				i++
				out = append(append(append(out[:0], setup...), bc.extra...), query...)
				if bc.extra != nil {
					queries++
				}
				nc := c.NetConn()
				if _, err := nc.Write(out); err != nil {
					b.Fatal(err)
				}
				fe := pgproto3.NewFrontend(nc, nc)
				for range queries + 1 {
					if _, pgErr := receive(b, fe, "switch"); pgErr != nil {
						b.Fatal(pgErr)
					}
				}
				m.ReleaseTx(c, true)
			}
		})
	}
}
