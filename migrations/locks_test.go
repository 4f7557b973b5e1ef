package migrations_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// alterMessages is a migration of the proxy's that alters a busy shared
// table: the chat's messages (chatCatalog's app), which in the shared
// tier holds every tenant's messages.
var alterMessages = migrations.Migration{
	Version:  1000,
	Name:     "messages_lock_probe",
	SQL:      "ALTER TABLE messages ADD COLUMN lock_probe text",
	Checksum: "test-messages-lock-probe",
}

// withAlterMessages gives every tenant kind the embedded migrations plus
// alterMessages.
func withAlterMessages(k migrations.Kind) ([]migrations.Migration, error) {
	ms, err := migrations.For(k)
	if err != nil || k == migrations.KindControl {
		return ms, err
	}
	return append(slices.Clip(ms), alterMessages), nil
}

// holdAccessShare opens a transaction on the shared database that reads
// messages and stays open, as a tenant idle in a transaction does: it holds
// ACCESS SHARE on the table until the returned commit is called.
func holdAccessShare(t *testing.T, c *pgcluster.Cluster) (commit func()) {
	t.Helper()
	ctx := ctxT(t)
	holder := connect(t, c.DSN(migrations.SharedDatabase))
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT count(*) FROM messages"); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// retries records lock retries, their text rendering and their log lines.
type retries struct {
	mu   sync.Mutex
	seen []migrations.LockRetry
	text bytes.Buffer
	logs *observer.ObservedLogs
	opts migrations.Options
}

func newRetries(timeout time.Duration, n int) *retries {
	r := &retries{}
	core, logs := observer.New(zap.WarnLevel)
	r.logs = logs
	render := migrations.TextRetry(&r.text)
	r.opts = migrations.Options{
		LockTimeout: timeout,
		LockRetries: n,
		Migrations:  withAlterMessages,
		Logger:      zap.New(core),
		Retry: func(lr migrations.LockRetry) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.seen = append(r.seen, lr)
			render(lr)
		},
	}
	return r
}

func (r *retries) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// check asserts that at least n retries were reported, each for the shared
// target's alterMessages, on the progress text and in the log with the
// target and tenant fields.
func (r *retries) check(t *testing.T, n int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seen) < n {
		t.Fatalf("%d lock retries reported; want at least %d", len(r.seen), n)
	}
	for i, lr := range r.seen {
		if lr.Target.Kind != migrations.KindShared || lr.Version != alterMessages.Version || lr.Attempt != i+1 || lr.Backoff < lr.Timeout {
			t.Errorf("retry %d: %s %d attempt %d backoff %v (timeout %v); want the shared target's %d, attempt %d, backoff >= timeout",
				i, lr.Target, lr.Version, lr.Attempt, lr.Backoff, lr.Timeout, alterMessages.Version, i+1)
		}
	}
	if got := strings.Count(r.text.String(), "lock wait exceeded lock_timeout"); got != len(r.seen) {
		t.Errorf("progress text has %d retry lines for %d retries:\n%s", got, len(r.seen), r.text.String())
	}
	logged := r.logs.FilterMessage("migration timed out waiting for a lock, retrying").All()
	if len(logged) != len(r.seen) {
		t.Fatalf("%d retry log lines for %d retries", len(logged), len(r.seen))
	}
	fields := logged[0].ContextMap()
	if _, ok := fields["tenant"]; !ok || !strings.HasPrefix(fields["target"].(string), "shared ") {
		t.Errorf("retry log fields %v; want target (shared …) and tenant", fields)
	}
}

// sharedState returns whether the shared database recorded alterMessages
// and whether messages has its column.
func sharedState(t *testing.T, c *pgcluster.Cluster) (recorded, column bool) {
	t.Helper()
	conn := connect(t, c.DSN(migrations.SharedDatabase))
	if err := conn.QueryRow(ctxT(t), `SELECT
		EXISTS (SELECT FROM tenantproxy.schema_migrations WHERE version = $1),
		EXISTS (SELECT FROM information_schema.columns WHERE table_name = 'messages' AND column_name = 'lock_probe')`,
		alterMessages.Version).Scan(&recorded, &column); err != nil {
		t.Fatal(err)
	}
	return recorded, column
}

// TestMigrationBehindATenantsLockDoesNotStallOtherSessions: a session idle
// in a transaction that read the shared messages table holds ACCESS SHARE.
// A migration altering that table must not sit in the lock queue for the
// whole hold, where every other session's SELECT on the table would queue
// behind its ACCESS EXCLUSIVE request: it times out, rolls back, reports
// the retry, and completes once the holder commits.
func TestMigrationBehindATenantsLockDoesNotStallOtherSessions(t *testing.T) {
	c, dsn := chatCatalog(t)
	commit := holdAccessShare(t, c)
	rec := newRetries(300*time.Millisecond, 1000)

	upCtx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type outcome struct {
		rep *migrations.Report
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		rep, err := migrations.Up(upCtx, dsn, rec.opts)
		done <- outcome{rep, err}
	}()

	// Wait until the migration's ALTER has queued behind the holder (or has
	// already timed out once).
	watch := connect(t, c.DSN(migrations.SharedDatabase))
	deadline := time.Now().Add(time.Minute)
	for queued := false; !queued && rec.count() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the migration's ALTER never queued behind the held lock")
		}
		if err := watch.QueryRow(ctxT(t), `SELECT EXISTS (SELECT FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE 'ALTER TABLE messages%')`).Scan(&queued); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Another session's SELECTs on the table go through while the holder
	// keeps its lock: at worst each waits out one lock_timeout (300ms) of
	// the ALTER queued ahead of it. 20s is far beyond that on a loaded
	// machine and far below the hold, which lasts until commit() below.
	other := connect(t, c.DSN(migrations.SharedDatabase))
	for i := range 5 {
		ctx, cancelProbe := context.WithTimeout(context.Background(), 20*time.Second)
		start := time.Now()
		_, err := other.Exec(ctx, "SELECT count(*) FROM messages")
		cancelProbe()
		if err != nil {
			t.Fatalf("SELECT #%d on messages from another session, while the migration waits for its lock: %v after %v; "+
				"want it to complete, not to queue behind the migration's ALTER for the whole hold", i, err, time.Since(start))
		}
		t.Logf("SELECT #%d on messages took %v", i, time.Since(start))
		time.Sleep(150 * time.Millisecond)
	}

	for rec.count() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d lock retries reported within a minute; want at least 2", rec.count())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if recorded, column := sharedState(t, c); recorded || column {
		t.Fatalf("while the lock is held: version recorded=%v, column exists=%v; want neither (each attempt rolled back)", recorded, column)
	}

	commit()
	out := <-done
	if out.err != nil {
		t.Fatalf("migrate up after the holder committed: %v", out.err)
	}
	rec.check(t, 2)
	for _, r := range out.rep.Results {
		if r.Target.Kind == migrations.KindShared && (r.Applied != 1 || r.Version != alterMessages.Version || r.Latest != alterMessages.Version) {
			t.Errorf("%s: applied %d, version %d of %d; want 1 applied, at %d", r.Target, r.Applied, r.Version, r.Latest, alterMessages.Version)
		}
	}
	if recorded, column := sharedState(t, c); !recorded || !column {
		t.Fatalf("after up: version recorded=%v, column exists=%v; want both", recorded, column)
	}
}

// TestMigrationBehindATenantsLockFailsOnlyThatTarget: when the holder does
// not let go, the migration gives up after its retries with an error that
// names the lock wait, the shared target fails with nothing of the
// migration applied, the other targets are migrated, and the next run
// completes the shared target.
func TestMigrationBehindATenantsLockFailsOnlyThatTarget(t *testing.T) {
	c, dsn := chatCatalog(t)
	ids := seedSchemaTenants(t, c, dsn, "held", 2)
	// The tenants get the chat's tables, which alterMessages alters.
	if _, err := migrations.Up(ctxT(t), dsn, migrations.Options{}); err != nil {
		t.Fatal(err)
	}
	commit := holdAccessShare(t, c)
	rec := newRetries(100*time.Millisecond, 2)

	// Bounded, so that a migration stuck in the lock queue fails the test
	// instead of hanging it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := migrations.Up(ctx, dsn, rec.opts)
	if err == nil || rep == nil || rep.Failed != 1 {
		t.Fatalf("up while the lock is held: err=%v report=%+v; want exactly the shared target failed", err, rep)
	}
	for _, r := range rep.Results {
		if r.Target.Kind == migrations.KindShared {
			var lte *migrations.LockTimeoutError
			if !errors.As(r.Err, &lte) || lte.Attempts != 3 || !strings.Contains(r.Err.Error(), "waiting for a table lock") ||
				!strings.Contains(r.Err.Error(), "1000_messages_lock_probe") {
				t.Errorf("shared target: err = %v; want a LockTimeoutError after 3 attempts naming the migration and the lock wait", r.Err)
			}
			continue
		}
		if r.Err != nil || r.Version != r.Latest {
			t.Errorf("%s: err=%v version %d of %d; want migrated despite the shared target's lock", r.Target, r.Err, r.Version, r.Latest)
		}
		if r.Target.Kind == migrations.KindSchema && r.Latest != alterMessages.Version {
			t.Errorf("%s: latest %d; want %d", r.Target, r.Latest, alterMessages.Version)
		}
	}
	rec.check(t, 2)
	if n := rec.count(); n != 2 {
		t.Errorf("%d retries reported; want exactly --lock-retries = 2", n)
	}
	if failed := rec.logs.FilterMessage("migration target failed").Len(); failed != 1 {
		t.Errorf("%d 'migration target failed' log lines; want 1", failed)
	}
	if recorded, column := sharedState(t, c); recorded || column {
		t.Fatalf("after giving up: version recorded=%v, column exists=%v; want neither (rolled back)", recorded, column)
	}

	commit()
	rep, err = migrations.Up(ctx, dsn, rec.opts)
	if err != nil {
		t.Fatalf("up after the holder committed: %v", err)
	}
	for _, r := range rep.Results {
		wantApplied := 0
		if r.Target.Kind == migrations.KindShared {
			wantApplied = 1
		}
		if r.Applied != wantApplied || r.Version != r.Latest {
			t.Errorf("rerun %s: applied %d, version %d of %d; want %d applied, up to date", r.Target, r.Applied, r.Version, r.Latest, wantApplied)
		}
	}
	if recorded, column := sharedState(t, c); !recorded || !column {
		t.Fatalf("after the rerun: version recorded=%v, column exists=%v; want both", recorded, column)
	}
	if len(rep.Results) != len(ids)+2 {
		t.Errorf("rerun reports %d targets; want %d", len(rep.Results), len(ids)+2)
	}
}
