package migrations

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// Why migrations wait for locks with a timeout: a DDL statement such as
// ALTER TABLE needs an ACCESS EXCLUSIVE lock, and while it waits for one in
// the lock queue every later lock request on that table queues behind it,
// even a plain SELECT's ACCESS SHARE. In the shared tier one table holds
// every tenant's rows, so one tenant idling in an open transaction that read
// the table would make a migration wait for as long as it likes and stall
// every other tenant behind the migration. With lock_timeout the migration
// gives up its place in the queue after at most LockTimeout, its transaction
// rolls back (nothing of it is left applied), and it tries again after a
// pause at least as long as the timeout, so that the table serves everyone
// else at least half the time while the holder keeps its lock.

// DefaultLockTimeout and DefaultLockRetries are the lock policy of Options
// whose LockTimeout and LockRetries are zero.
const (
	DefaultLockTimeout = 2 * time.Second
	DefaultLockRetries = 10
)

// maxLockBackoff caps the pause between attempts (unless LockTimeout is
// longer): with the defaults a migration gives up after roughly two to three
// minutes of a held lock.
const maxLockBackoff = 10 * time.Second

// sqlstateLockNotAvailable is PostgreSQL's lock_not_available, what a
// statement fails with when lock_timeout expires.
const sqlstateLockNotAvailable = "55P03"

// LockRetry reports one migration attempt that timed out waiting for a lock
// and is about to be retried.
type LockRetry struct {
	Target  Target
	Version int
	Name    string
	// Attempt is the attempt that timed out, 1 for the first; Attempts is
	// how many will be made at most.
	Attempt, Attempts int
	// Timeout is the lock_timeout the attempt ran with; Backoff is the
	// pause before the next attempt.
	Timeout, Backoff time.Duration
	// Err is the server's error (SQLSTATE 55P03).
	Err error
}

// LockTimeoutError reports a migration that gave up waiting for a lock:
// every attempt timed out and was rolled back, so the migration is not
// applied and a later run applies it.
type LockTimeoutError struct {
	Attempts int
	Timeout  time.Duration
	// Err is the last attempt's server error (SQLSTATE 55P03).
	Err error
}

func (e *LockTimeoutError) Error() string {
	return fmt.Sprintf("gave up waiting for a table lock after %d attempts with lock_timeout %s: "+
		"another session (e.g. an open transaction that read a table this migration alters) holds a conflicting lock; "+
		"the migration was rolled back, run migrate up again once the lock is released: %v",
		e.Attempts, e.Timeout, e.Err)
}

func (e *LockTimeoutError) Unwrap() error { return e.Err }

// lockPolicy is Options' lock settings with the defaults filled in.
type lockPolicy struct {
	timeout  time.Duration // <= 0: no lock_timeout
	attempts int
}

func (o Options) lockPolicy() lockPolicy {
	p := lockPolicy{timeout: o.LockTimeout, attempts: 1 + o.LockRetries}
	if o.LockTimeout == 0 {
		p.timeout = DefaultLockTimeout
	}
	if o.LockRetries == 0 {
		p.attempts = 1 + DefaultLockRetries
	}
	if p.attempts < 1 {
		p.attempts = 1
	}
	return p
}

// setLocal is the statement that bounds the current transaction's lock
// waits, or "" when there is no bound.
func (p lockPolicy) setLocal() string {
	if p.timeout <= 0 {
		return ""
	}
	return fmt.Sprintf("SET LOCAL lock_timeout = '%dms'", max(p.timeout.Milliseconds(), 1))
}

// backoff is the pause after the attempt-th timed-out attempt: the timeout
// doubled per attempt, capped, never shorter than the timeout, times a
// random factor in [1, 2) so that runners retrying at once spread out.
func (p lockPolicy) backoff(attempt int) time.Duration {
	d := p.timeout << min(attempt-1, 16)
	if limit := max(maxLockBackoff, p.timeout); d > limit || d <= 0 {
		d = limit
	}
	return d + rand.N(d)
}

// isLockTimeout reports whether err is the server's lock_not_available.
func isLockTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == sqlstateLockNotAvailable
}

// withLockRetries runs attempt until it succeeds, fails otherwise than by a
// lock timeout, or has timed out p.attempts times. Each attempt is one
// transaction that a lock timeout rolls back whole, so retrying is safe.
func withLockRetries(ctx context.Context, opts Options, t Target, m Migration, p lockPolicy, attempt func() (bool, error)) (bool, error) {
	for n := 1; ; n++ {
		ran, err := attempt()
		if err == nil || !isLockTimeout(err) || p.timeout <= 0 {
			return ran, err
		}
		if n >= p.attempts {
			return false, &LockTimeoutError{Attempts: n, Timeout: p.timeout, Err: err}
		}
		r := LockRetry{Target: t, Version: m.Version, Name: m.Name, Attempt: n, Attempts: p.attempts,
			Timeout: p.timeout, Backoff: p.backoff(n), Err: err}
		if opts.Logger != nil {
			opts.Logger.Warn("migration timed out waiting for a lock, retrying",
				zap.String("target", t.String()), zap.String("tenant", t.Tenant),
				zap.Int("version", m.Version), zap.String("migration", m.Name),
				zap.Int("attempt", n), zap.Int("attempts", p.attempts),
				zap.Duration("lock_timeout", p.timeout), zap.Duration("backoff", r.Backoff))
		}
		if opts.Retry != nil {
			opts.Retry(r)
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("waiting to retry after a lock timeout: %w", context.Cause(ctx))
		case <-time.After(r.Backoff):
		}
	}
}
