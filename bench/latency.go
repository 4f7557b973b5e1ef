package bench

import (
	"context"
	"fmt"
	"time"
)

// (g) the latency one client sees on a point select in the simple
// protocol, through the target and directly, one query on each in turn:
// the difference is what the target adds to every round trip. On the
// direct target both connections go straight to PostgreSQL, so its
// difference is the measurement's noise floor.
func (r *runner) addedLatency() (*scenario, error) {
	naccounts := 100000 * r.sc.pgbenchScale
	// Successive queries read different rows, as pgbench -S does, but in
	// a fixed order, so every target reads the same ones.
	pointSelect := func(i int) string {
		return fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d", 1+(i*7919)%naccounts)
	}
	us := func(sorted []time.Duration, p float64) float64 { return percentile(sorted, p) * 1000 }
	return &scenario{cases: []*benchCase{{
		name: "1 client, simple protocol, point select, alternating with direct",
		metrics: []metric{{"p50", "µs", false}, {"p99", "µs", false},
			{"p50 over direct", "µs", false}, {"p99 over direct", "µs", false}},
		run: func(ctx context.Context, t *target) ([]float64, error) {
			direct := r.env.servingDSN(r.env.cluster.Addr(), r.env.database)
			conns, err := openConns(ctx, 2, 1, func(j int) (string, []string) {
				if j == 0 {
					return direct, nil
				}
				return r.pgbenchDSN(t), nil
			})
			if err != nil {
				return nil, err
			}
			defer closeConns(conns)
			base, via, err := pairedLatency(ctx, conns[0], conns[1], r.opts.Duration, pointSelect)
			if err != nil {
				return nil, err
			}
			p50, p99 := us(via, 0.50), us(via, 0.99)
			return []float64{p50, p99, p50 - us(base, 0.50), p99 - us(base, 0.99)}, nil
		},
	}}}, nil
}
