package test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// txEnv is a proxy in transaction mode over a fresh environment whose pool
// has few server connections, so that clients of every tier share them.
type txEnv struct {
	*proxyEnv
	addr string
}

func newTxEnv(t *testing.T, opts pgcluster.Options, poolCfg pool.Config, cfg proxy.Config) *txEnv {
	t.Helper()
	e := newProxyEnvWith(t, opts, poolCfg)
	cfg.PoolMode = proxy.PoolTransaction
	_, addr := e.startProxy(t, cfg)
	return &txEnv{proxyEnv: e, addr: addr}
}

// seedUsers gives each tenant one user row named after it, through the
// proxy, so queries can be checked row by row.
func (e *txEnv) seedUsers(t *testing.T, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		conn := connect(t, dsn(e.addr, "alice."+sub, tenantPassword))
		if _, err := conn.Exec(ctxT(t), "INSERT INTO users (username) VALUES ($1)", "u-"+sub); err != nil {
			t.Fatalf("seed %s: %v", sub, err)
		}
	}
}

// onlyOwnUsers fails unless the users visible to conn are exactly sub's.
func onlyOwnUsers(ctx context.Context, conn *pgx.Conn, sub string) error {
	rows, err := conn.Query(ctx, "SELECT username FROM users ORDER BY username")
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	if len(names) != 1 || names[0] != "u-"+sub {
		return fmt.Errorf("tenant %s sees users %q; want only u-%s", sub, names, sub)
	}
	return nil
}

func TestTxPoolClientsOfAllTiersShareFewServerConnections(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 2}, proxy.Config{})
	subs := []string{"acme", "globex", "initech", "umbrella"}
	e.seedUsers(t, subs...)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 16 {
		sub := subs[i%len(subs)]
		conn := connect(t, dsn(e.addr, "alice."+sub, tenantPassword))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if err := onlyOwnUsers(ctx, conn, sub); err != nil {
					errs <- err
					return
				}
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				if err := onlyOwnUsers(ctx, tx.Conn(), sub); err != nil {
					errs <- err
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
