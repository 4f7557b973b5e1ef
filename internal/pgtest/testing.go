package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
)

var shared struct {
	sync.Mutex
	cluster *pgcluster.Cluster
	err     error
}

// RunMain runs a package's tests and then stops the cluster Shared started.
// Use it as the body of TestMain.
func RunMain(m *testing.M) {
	code := m.Run()
	shared.Lock()
	if shared.cluster != nil {
		if err := shared.cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	shared.Unlock()
	os.Exit(code)
}

// Shared returns the test binary's one cluster, starting it on first use.
// Tests that share it must not change cluster-wide state; they take their
// own database from NewDatabase. The package's TestMain must call RunMain.
func Shared(tb testing.TB) *pgcluster.Cluster {
	tb.Helper()
	shared.Lock()
	defer shared.Unlock()
	if shared.cluster == nil && shared.err == nil {
		shared.cluster, shared.err = pgcluster.Start(context.Background(), pgcluster.Options{})
	}
	if shared.err != nil {
		unavailable(tb, shared.err)
	}
	return shared.cluster
}

// StartT starts a private cluster that tb's cleanup stops, for tests that
// restart servers or need a second one (another region).
func StartT(tb testing.TB, opts ...pgcluster.Options) *pgcluster.Cluster {
	tb.Helper()
	var o pgcluster.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	c, err := pgcluster.Start(context.Background(), o)
	if err != nil {
		unavailable(tb, err)
	}
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return c
}

// unavailable skips a test when PostgreSQL is not installed, except in CI
// (CI=true), where a missing PostgreSQL must fail the run rather than let
// every integration test pass by skipping.
func unavailable(tb testing.TB, err error) {
	tb.Helper()
	if errors.Is(err, pgcluster.ErrNoBinaries) && os.Getenv("CI") != "true" {
		tb.Skip(err)
	}
	tb.Fatal(err)
}

var dbSeq atomic.Int64

// NewDatabase creates a database with a fresh name on c and returns a
// superuser DSN for it. It is dropped when tb ends.
func NewDatabase(tb testing.TB, c *pgcluster.Cluster) string {
	tb.Helper()
	suffix := make([]byte, 3)
	rand.Read(suffix)
	name := fmt.Sprintf("test_%d_%d_%s", os.Getpid(), dbSeq.Add(1), hex.EncodeToString(suffix))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			tb.Logf("pgtest: drop %s: %v", name, err)
		}
	})
	return c.DSN(name)
}
