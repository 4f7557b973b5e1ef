package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// The Go load generator drives what pgbench cannot: connections of many
// tenants used round-robin, thousands of mostly idle connections, and a
// paced client whose latency is measured beside a noisy one. It speaks
// through pgconn with the simple protocol, and runs queries without a
// cancellable context, so that pgconn starts no context watcher per query
// and the generator stays cheap next to what it measures; a socket
// deadline bounds a query that never returns.

// stuckAfter is how long past its end a measurement may run before its
// queries are abandoned: a target that stops answering costs a bounded
// time, and after maxFailures in a row it is skipped for the rest of the
// run.
const stuckAfter = 15 * time.Second

// openConns opens n connections, parallel at a time; dsnFor gives
// connection j's DSN and the statements it runs once connected (a direct
// client entering a tenant's context). On error the connections opened so
// far are closed.
func openConns(ctx context.Context, n, parallel int, dsnFor func(j int) (string, []string)) ([]*pgconn.PgConn, error) {
	conns := make([]*pgconn.PgConn, n)
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		mu    sync.Mutex
		first error
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
	}
	for range min(parallel, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j := int(next.Add(1)) - 1
				if j >= n || ctx.Err() != nil {
					return
				}
				connString, setup := dsnFor(j)
				c, err := pgconn.Connect(ctx, connString)
				if err != nil {
					fail(fmt.Errorf("connection %d of %d: %w", j+1, n, err))
					return
				}
				conns[j] = c
				for _, s := range setup {
					if err := c.Exec(ctx, s).Close(); err != nil {
						fail(fmt.Errorf("connection %d setup: %w", j+1, err))
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	if first != nil {
		closeConns(conns)
		return nil, first
	}
	return conns, nil
}

// closeConns closes every opened connection, a few at a time: closing is a
// Terminate and a socket close, cheap, but thousands in a row add up.
func closeConns(conns []*pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	chunk := max(1, len(conns)/8)
	for start := 0; start < len(conns); start += chunk {
		part := conns[start:min(start+chunk, len(conns))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, c := range part {
				if c != nil {
					c.Close(ctx)
				}
			}
		}()
	}
	wg.Wait()
}

// roundRobin runs workers goroutines for d; worker w sends sql on
// connections w, w+workers, w+2·workers, … in turn, so that no connection
// is used by two workers and every connection (every tenant) gets its turn.
// It returns completed queries per second.
func roundRobin(ctx context.Context, conns []*pgconn.PgConn, workers int, d time.Duration, sql string) (float64, error) {
	workers = min(workers, len(conns))
	end := time.Now().Add(d)
	setDeadlines(conns, end.Add(stuckAfter))
	defer setDeadlines(conns, time.Time{})
	var (
		wg    sync.WaitGroup
		done  atomic.Int64
		errMu sync.Mutex
		first error
	)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n int64
			defer func() { done.Add(n) }()
			for i := w; ; i += workers {
				if i >= len(conns) {
					i = w
				}
				if n%64 == 0 && (time.Now().After(end) || ctx.Err() != nil) {
					return
				}
				if err := conns[i].Exec(context.Background(), sql).Close(); err != nil {
					errMu.Lock()
					first = errors.Join(first, err)
					errMu.Unlock()
					return
				}
				n++
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return 0, first
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}

// paced sends sql on c every interval for d and returns each query's
// latency, sorted.
func paced(ctx context.Context, c *pgconn.PgConn, interval, d time.Duration, sql string) ([]time.Duration, error) {
	end := time.Now().Add(d)
	setDeadlines([]*pgconn.PgConn{c}, end.Add(stuckAfter))
	defer setDeadlines([]*pgconn.PgConn{c}, time.Time{})
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var lat []time.Duration
	for time.Now().Before(end) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		t0 := time.Now()
		if err := c.Exec(context.Background(), sql).Close(); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return lat, nil
}

// percentile of sorted latencies, in milliseconds.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(len(sorted)-1, int(p*float64(len(sorted))))
	return float64(sorted[i]) / float64(time.Millisecond)
}

func setDeadlines(conns []*pgconn.PgConn, t time.Time) {
	for _, c := range conns {
		c.Conn().SetDeadline(t)
	}
}

// connectLoop runs parallel goroutines for d, each connecting to connString,
// running SELECT 1 and closing, over and over. It returns completed
// connections per second.
func connectLoop(ctx context.Context, connString string, parallel int, d time.Duration) (float64, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return 0, err
	}
	end := time.Now().Add(d)
	var (
		wg    sync.WaitGroup
		done  atomic.Int64
		errMu sync.Mutex
		first error
	)
	start := time.Now()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				cctx, cancel := context.WithDeadline(ctx, end.Add(stuckAfter))
				c, err := pgconn.ConnectConfig(cctx, cfg)
				if err == nil {
					err = c.Exec(cctx, "SELECT 1").Close()
					c.Close(cctx)
				}
				cancel()
				if err != nil {
					errMu.Lock()
					first = errors.Join(first, err)
					errMu.Unlock()
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return 0, first
	}
	return float64(done.Load()) / time.Since(start).Seconds(), ctx.Err()
}

// pairedLatency sends sqlFor(i) on a and on b, one query at a time, for
// d, and returns each side's latencies, sorted. Alternating query by query
// puts both sides under the same load of the machine at every moment, so
// the difference of their percentiles is the cost of what lies between b's
// client and server, not of the machine's drift. Which side goes first
// alternates too: the second reads a row the first has just brought into
// the caches, about 10 µs faster here with both sides direct.
func pairedLatency(ctx context.Context, a, b *pgconn.PgConn, d time.Duration, sqlFor func(i int) string) (la, lb []time.Duration, err error) {
	both := []*pgconn.PgConn{a, b}
	end := time.Now().Add(d)
	setDeadlines(both, end.Add(stuckAfter))
	defer setDeadlines(both, time.Time{})
	var lat [2][]time.Duration
	for i := 0; time.Now().Before(end); i++ {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		sql := sqlFor(i)
		for k := range both {
			side := (i + k) % 2
			c := both[side]
			t0 := time.Now()
			if err := c.Exec(context.Background(), sql).Close(); err != nil {
				return nil, nil, err
			}
			lat[side] = append(lat[side], time.Since(t0))
		}
	}
	slices.Sort(lat[0])
	slices.Sort(lat[1])
	return lat[0], lat[1], nil
}
