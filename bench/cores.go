package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
)

// transactionFlags start tenantproxy in transaction mode with PgBouncer's
// pool size (startPgBouncer), so both poolers hold the same server
// connections.
var transactionFlags = []string{poolModeFlag, "transaction", "--pool-max-conns", "20"}

// startOneProc starts the transaction-mode proxy held to one core for
// scenario (h), when (h) runs and the binary has transaction mode. With
// --proxy-procs 1 the tp-transaction target is already held to one core and
// (h) compares nothing new, so no second one starts.
func (r *runner) startOneProc(ctx context.Context) error {
	if !slices.Contains(r.letters, "h") || !r.wants(TargetTransactionOneProc) || !proxyHasPoolMode(ctx, r.opts.ProxyBinary) {
		return nil
	}
	if r.opts.ProxyProcs == 1 {
		r.note(TargetTransactionOneProc + " not started: --proxy-procs 1 already holds tp-transaction to one core")
		return nil
	}
	r.progress("starting tenantproxy (transaction mode, GOMAXPROCS=1)")
	t, err := startProxy(ctx, r.opts.ProxyBinary, 1, TargetTransactionOneProc, r.env, filepath.Join(r.dir, "tp-transaction-1proc.log"), 1<<20,
		transactionFlags...)
	if err != nil {
		return err
	}
	t.only = "h"
	r.targets = append(r.targets, t)
	return nil
}

// (h) the same pgbench on the transaction-mode proxy at every core and at
// one (GOMAXPROCS=1), beside single-threaded PgBouncer: where a Go proxy
// that can use more cores overtakes one that cannot. pgbench and PostgreSQL
// share the same cores, so on a small machine more cores for the proxy are
// fewer for them.
func (r *runner) coreScaling() (*scenario, error) {
	s := &scenario{}
	for _, mode := range []string{"simple", "extended"} {
		if r.opts.Quick && mode != "simple" {
			continue
		}
		for _, c := range r.sc.clients {
			s.cases = append(s.cases, r.pgbenchCase(fmt.Sprintf("select-only -M %s c=%d", mode, c), nil,
				"-S", "-M", mode, "-c", strconv.Itoa(c), "-j", pgbenchThreads(c)))
		}
	}
	return s, nil
}
