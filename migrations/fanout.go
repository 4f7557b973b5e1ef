package migrations

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog/secrets"
)

// DefaultConcurrency is how many targets Up and Status work on at once when
// Options.Concurrency is zero.
const DefaultConcurrency = 8

// MainBackend and DefaultRegion name the backend that Up registers on an
// empty catalog: the catalog's own server.
const (
	MainBackend   = "main"
	DefaultRegion = "default"
)

// Options tune Up and Status, and ApplyWith (which ignores Concurrency
// and Progress).
type Options struct {
	// Concurrency bounds the targets worked on at once and the connections
	// held per database; zero means DefaultConcurrency.
	Concurrency int
	// Progress, when set, is called once per finished target, never
	// concurrently.
	Progress func(Progress)
	// Logger receives one line per failed target and one per lock retry;
	// nil means no logging.
	Logger *zap.Logger
	// LockTimeout bounds each wait of a migration for a table lock
	// (PostgreSQL's lock_timeout, set per migration transaction); zero means
	// DefaultLockTimeout, negative means wait as long as it takes.
	LockTimeout time.Duration
	// LockRetries is how many times a migration whose lock wait timed out
	// is rolled back and tried again before its target fails; zero means
	// DefaultLockRetries, negative means none.
	LockRetries int
	// Retry, when set, is called before each such retry; Up calls it never
	// concurrently with itself or Progress.
	Retry func(LockRetry)
	// Migrations returns the migrations for a kind of target; nil means the
	// embedded ones (For).
	Migrations func(Kind) ([]Migration, error)
	// App, when not nil, is the adopter's migrations (ReadAppDir) that Up
	// and Down store in the catalog before they fan out; nil means the
	// stored ones as they are.
	App []AppMigration
	// Secrets opens the backends' admin DSNs and seals the serving
	// password of a backend Up registers; nil means encryption is off (plain
	// text is read and written, a sealed value is an error naming its
	// backend).
	Secrets *secrets.Keyring
}

func (o Options) migrations(k Kind) ([]Migration, error) {
	if o.Migrations != nil {
		return o.Migrations(k)
	}
	return For(k)
}

func (o Options) latest(k Kind) int {
	ms, err := o.migrations(k)
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].Version
}

// Progress reports one finished target.
type Progress struct {
	Done, Total int
	Result      Result
}

// Result is the outcome for one target.
type Result struct {
	Target Target `json:"target"`
	// Applied counts the migrations this run applied (Up only).
	Applied int `json:"applied"`
	// Version is the highest applied version afterwards; Latest is the
	// highest this binary knows for the target's kind.
	Version int   `json:"version"`
	Latest  int   `json:"latest"`
	Err     error `json:"-"`
	// App is the adopter's migrations on a tenant target; nil for the
	// control database and for a target that failed before them.
	App *AppResult `json:"app,omitempty"`
}

// Report lists every target's result, in catalog order.
type Report struct {
	Results  []Result      `json:"results"`
	Failed   int           `json:"failed"`
	Duration time.Duration `json:"duration"`
	// AppStored counts the app versions this run added to the catalog
	// (Up with Options.App); AppRemoved those Down removed from it.
	AppStored  int `json:"app_stored,omitempty"`
	AppRemoved int `json:"app_removed,omitempty"`
}

// TextRetry renders lock retries as one line each on w, for humans.
func TextRetry(w io.Writer) func(LockRetry) {
	return func(r LockRetry) {
		fmt.Fprintf(w, "%s: %d_%s: lock wait exceeded lock_timeout %s (attempt %d of %d), rolled back, retrying in %s\n",
			r.Target, r.Version, r.Name, r.Timeout, r.Attempt, r.Attempts, r.Backoff.Round(time.Millisecond))
	}
}

// TextProgress renders progress as one line per target on w, for humans.
func TextProgress(w io.Writer) func(Progress) {
	return func(p Progress) {
		r := p.Result
		var line string
		switch {
		case r.Err != nil:
			line = fmt.Sprintf("FAILED: %v", r.Err)
		case r.Applied > 0:
			line = fmt.Sprintf("applied %d, now at version %d", r.Applied, r.Version)
		default:
			line = fmt.Sprintf("up to date (version %d)", r.Version)
		}
		if r.App != nil && r.Err == nil {
			line += "; " + r.App.String()
		}
		fmt.Fprintf(w, "[%d/%d] %s: %s\n", p.Done, p.Total, r.Target, line)
	}
}

// Up migrates the catalog at controlDSN, registers the catalog's own server
// as backend "main" (region "default") when the catalog has no backend, and
// then brings every backend's shared database, every tenant schema and every
// tenant database up to date, opts.Concurrency at a time. One target's
// failure does not stop the others: the report lists every result and the
// error joins the failures. Two Up runs at once are safe: the control step is
// serialized by a session advisory lock, each target by its own.
func Up(ctx context.Context, controlDSN string, opts Options) (*Report, error) {
	start := time.Now()
	control, err := ConnectAs(ctx, controlDSN, "")
	if err != nil {
		return nil, fmt.Errorf("migrations: control database: %w", err)
	}
	defer control.Close(context.WithoutCancel(ctx))

	ctrl, err := upControl(ctx, control, controlDSN, opts)
	if err != nil {
		return nil, err
	}
	stored := 0
	if opts.App != nil {
		if stored, err = StoreApp(ctx, control, opts.App); err != nil {
			return nil, err
		}
	}
	set, err := loadApp(ctx, control)
	if err != nil {
		return nil, err
	}
	targets, err := tenantTargets(ctx, control)
	if err != nil {
		return nil, err
	}
	rep := run(ctx, control, targets, opts, true, func(ctx context.Context, db DB, t Target, opts Options) Result {
		n, err := ApplyWith(ctx, db, t, opts)
		r := Result{Target: t, Applied: n, Err: err}
		if r.Err == nil {
			r.Err = adoptLegacyChat(ctx, db, t, set, opts)
		}
		if r.Err == nil {
			r.Version, r.Err = Version(ctx, db, t)
		}
		if r.Err == nil {
			r.App, r.Err = applyApp(ctx, db, t, set, opts)
		}
		return r
	})
	rep.AppStored = stored
	rep.Results = append([]Result{ctrl}, rep.Results...)
	rep.Duration = time.Since(start)
	return rep, rep.err()
}

func upControl(ctx context.Context, control *pgx.Conn, controlDSN string, opts Options) (Result, error) {
	t := Target{Kind: KindControl, Database: control.Config().Database}
	if _, err := control.Exec(ctx, "SELECT pg_advisory_lock($1)", upLockKey); err != nil {
		return Result{}, fmt.Errorf("migrations: control lock: %w", err)
	}
	defer control.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", upLockKey) //nolint:errcheck // the session ends soon; a failed unlock dies with it
	n, err := ApplyWith(ctx, control, t, opts)
	if err != nil {
		return Result{}, err
	}
	var empty bool
	if err := control.QueryRow(ctx, "SELECT NOT EXISTS (SELECT FROM backends)").Scan(&empty); err != nil {
		return Result{}, fmt.Errorf("migrations: %w", err)
	}
	if empty {
		if err := RegisterBackend(ctx, control, Backend{Name: MainBackend, Region: DefaultRegion, AdminDSN: controlDSN}, opts.Secrets); err != nil {
			return Result{}, err
		}
	} else if err := hardenBackends(ctx, control, opts.Secrets); err != nil {
		return Result{}, err
	}
	v, err := Version(ctx, control, t)
	return Result{Target: t, Applied: n, Version: v, Latest: opts.latest(KindControl)}, err
}

// openControl connects to the control database and reads its version.
func openControl(ctx context.Context, controlDSN string) (*pgx.Conn, Target, int, error) {
	control, err := ConnectAs(ctx, controlDSN, "")
	if err != nil {
		return nil, Target{}, 0, fmt.Errorf("migrations: control database: %w", err)
	}
	ct := Target{Kind: KindControl, Database: control.Config().Database}
	v, err := Version(ctx, control, ct)
	if err != nil {
		control.Close(context.WithoutCancel(ctx))
		return nil, Target{}, 0, fmt.Errorf("migrations: control database: %w", err)
	}
	return control, ct, v, nil
}

// Status reports every target's applied version without changing anything.
func Status(ctx context.Context, controlDSN string, opts Options) (*Report, error) {
	start := time.Now()
	control, ct, v, err := openControl(ctx, controlDSN)
	if err != nil {
		return nil, err
	}
	defer control.Close(context.WithoutCancel(ctx))
	ctrl := Result{Target: ct, Version: v, Latest: opts.latest(KindControl)}
	var targets []Target
	set := newAppSet(nil)
	if v > 0 {
		if targets, err = tenantTargets(ctx, control); err != nil {
			return nil, err
		}
		if set, err = loadApp(ctx, control); err != nil {
			return nil, err
		}
	}
	rep := run(ctx, control, targets, opts, false, func(ctx context.Context, db DB, t Target, _ Options) Result {
		v, err := Version(ctx, db, t)
		r := Result{Target: t, Version: v, Err: err}
		if err == nil {
			r.App, r.Err = appState(ctx, db, t, set)
		}
		return r
	})
	rep.Results = append([]Result{ctrl}, rep.Results...)
	rep.Duration = time.Since(start)
	return rep, rep.err()
}

// Down reverts the adopter's migrations above version to on every tenant
// target, opts.Concurrency at a time: each target runs the stored down
// SQL of the versions it has applied, highest first, in its tier's form,
// each in its own transaction. With opts.App the directory's down files of
// stored versions are stored first (a new down file replaces the stored
// one; versions the catalog lacks are ignored). The versions leave the
// catalog only when every target is down: until then tenant create still
// applies them, and a run after a failure completes the rest.
func Down(ctx context.Context, controlDSN string, to int, opts Options) (*Report, error) {
	start := time.Now()
	if to < 0 {
		return nil, fmt.Errorf("migrations: down to version %d: want 0 or more", to)
	}
	control, _, v, err := openControl(ctx, controlDSN)
	if err != nil {
		return nil, err
	}
	defer control.Close(context.WithoutCancel(ctx))
	if v < opts.latest(KindControl) {
		return nil, fmt.Errorf("migrations: the catalog is at version %d of %d: run migrate up first", v, opts.latest(KindControl))
	}
	set, err := loadApp(ctx, control)
	if err != nil {
		return nil, err
	}
	if opts.App != nil {
		// Only the stored versions' down files: a down never adds versions.
		var known []AppMigration
		for _, m := range opts.App {
			if set.index(m.Version) >= 0 {
				known = append(known, m)
			}
		}
		if _, err := StoreApp(ctx, control, known); err != nil {
			return nil, err
		}
		if set, err = loadApp(ctx, control); err != nil {
			return nil, err
		}
	}
	targets, err := tenantTargets(ctx, control)
	if err != nil {
		return nil, err
	}
	rep := run(ctx, control, targets, opts, false, func(ctx context.Context, db DB, t Target, opts Options) Result {
		v, err := Version(ctx, db, t)
		r := Result{Target: t, Version: v, Err: err}
		if err == nil {
			r.App, r.Err = revertApp(ctx, db, t, set, to, opts)
		}
		return r
	})
	rep.Duration = time.Since(start)
	if rep.Failed > 0 {
		return rep, rep.err()
	}
	tag, err := control.Exec(ctx, "DELETE FROM app_migrations WHERE version > $1", to)
	if err != nil {
		return rep, fmt.Errorf("migrations: every target is down to %d, but removing the versions above it from the catalog failed: %w", to, err)
	}
	rep.AppRemoved = int(tag.RowsAffected())
	return rep, nil
}

func (r *Report) err() error {
	var errs []error
	for _, res := range r.Results {
		if res.Err != nil {
			errs = append(errs, res.Err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("migrations: %d of %d targets failed: %w", len(errs), len(r.Results), errors.Join(errs...))
}

// tenantTargets lists every backend's shared database and every tenant's
// schema or database. Tenants still being provisioned are left to their
// create, which migrates them itself.
func tenantTargets(ctx context.Context, control *pgx.Conn) ([]Target, error) {
	rows, err := control.Query(ctx, `
		SELECT 'shared', name, shared_database, '', '' FROM backends
		UNION ALL
		SELECT isolation_level, backend, database, coalesce(schema_name, ''), id FROM tenants
		WHERE isolation_level IN ('schema', 'database') AND status <> 'provisioning'
		ORDER BY 1 DESC, 2, 3, 4`)
	if err != nil {
		return nil, fmt.Errorf("migrations: listing targets: %w", err)
	}
	var t Target
	targets, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Target, error) {
		err := row.Scan(&t.Kind, &t.Backend, &t.Database, &t.Schema, &t.Tenant)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("migrations: listing targets: %w", err)
	}
	return targets, nil
}

// run calls fn for every target, opts.Concurrency at a time, handing it opts
// with Retry serialized with Progress. Each worker keeps one connection per
// database it has worked in, so 500 tenant schemas in one database cost
// opts.Concurrency connections, not 500. A tenant's own database is worked
// in as the tenant's login role (see worker.database); own says whether to
// give database-tier tenants their role and ownership first (Up) or only
// to look (Status).
func run(ctx context.Context, control *pgx.Conn, targets []Target, opts Options, own bool,
	fn func(context.Context, DB, Target, Options) Result) *Report {
	n := opts.Concurrency
	if n <= 0 {
		n = DefaultConcurrency
	}
	rep := &Report{Results: make([]Result, len(targets))}
	dsns, err := adminDSNs(ctx, control, opts.Secrets)
	if err != nil {
		for i, t := range targets {
			rep.Results[i] = Result{Target: t, Err: err}
		}
		rep.Failed = len(targets)
		return rep
	}
	logins := tenantLogins(ctx, control, targets, opts.Secrets, own)

	var mu sync.Mutex
	done := 0
	if retry := opts.Retry; retry != nil {
		opts.Retry = func(r LockRetry) {
			mu.Lock()
			defer mu.Unlock()
			retry(r)
		}
	}
	finish := func(i int, r Result) {
		r.Latest = opts.latest(r.Target.Kind)
		mu.Lock()
		defer mu.Unlock()
		rep.Results[i] = r
		done++
		if r.Err != nil {
			rep.Failed++
			if opts.Logger != nil {
				opts.Logger.Error("migration target failed", zap.String("target", r.Target.String()),
					zap.String("tenant", r.Target.Tenant), zap.Error(r.Err))
			}
		}
		if opts.Progress != nil {
			opts.Progress(Progress{Done: done, Total: len(targets), Result: r})
		}
	}

	work := make(chan int)
	var wg sync.WaitGroup
	for range min(n, len(targets)) {
		wg.Go(func() {
			w := worker{dsns: dsns, logins: logins, own: own, conns: map[[2]string]*pgx.Conn{}}
			defer w.close(ctx)
			for i := range work {
				finish(i, w.do(ctx, targets[i], opts, fn))
			}
		})
	}
	for i := range targets {
		work <- i
	}
	close(work)
	wg.Wait()
	return rep
}

// worker holds its connections to the shared and schema databases across
// targets; a tenant's own database gets a connection for its turn only.
type worker struct {
	dsns   map[string]adminDSN
	logins map[string]login
	own    bool
	conns  map[[2]string]*pgx.Conn
}

func (w *worker) do(ctx context.Context, t Target, opts Options, fn func(context.Context, DB, Target, Options) Result) Result {
	a, ok := w.dsns[t.Backend]
	if !ok {
		return Result{Target: t, Err: fmt.Errorf("migrations: %s: unknown backend %q", t, t.Backend)}
	}
	if a.err != nil {
		return Result{Target: t, Err: fmt.Errorf("migrations: %s: %w", t, a.err)}
	}
	dsn := a.dsn
	if t.Kind == KindDatabase {
		return w.database(ctx, dsn, t, opts, fn)
	}
	key := [2]string{t.Backend, t.Database}
	conn := w.conns[key]
	if conn == nil || conn.IsClosed() {
		var err error
		if conn, err = ConnectAs(ctx, dsn, t.Database); err != nil {
			return Result{Target: t, Err: fmt.Errorf("migrations: %s: %w", t, err)}
		}
		w.conns[key] = conn
	}
	return fn(ctx, conn, t, opts)
}

// database calls fn for a tenant's own database, on a connection of its
// turn only, logged in as the tenant's role: the tenant owns what is in
// its database and may have put triggers, views or functions there, which
// must never run as the admin role (a superuser could not safely SET ROLE
// either: the tenant's code could RESET it). When w.own, the role and its
// ownership are ensured first (OwnDatabase), as the admin role, which only
// reads the catalogs and changes owners there. A tenant without a login
// yet (Status before the first Up of this release) is read as the admin
// role: it owns nothing, so nothing of its can run.
func (w *worker) database(ctx context.Context, adminDSN string, t Target, opts Options,
	fn func(context.Context, DB, Target, Options) Result) Result {
	l := w.logins[t.Tenant]
	if l.err != nil {
		return Result{Target: t, Err: fmt.Errorf("migrations: %s: %w", t, l.err)}
	}
	if w.own {
		admin, err := ConnectAs(ctx, adminDSN, t.Database)
		if err != nil {
			return Result{Target: t, Err: fmt.Errorf("migrations: %s: %w", t, err)}
		}
		err = OwnDatabase(ctx, admin, t.Database, l.password)
		admin.Close(context.WithoutCancel(ctx))
		if err != nil {
			return Result{Target: t, Err: fmt.Errorf("migrations: %s: %w", t, err)}
		}
	}
	var conn *pgx.Conn
	var err error
	if l.password == "" {
		conn, err = ConnectAs(ctx, adminDSN, t.Database)
	} else {
		conn, err = ConnectLogin(ctx, adminDSN, t.Database, t.Database, l.password)
	}
	if err != nil {
		return Result{Target: t, Err: fmt.Errorf("migrations: %s: %w", t, err)}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(ctx, conn, t, opts)
}

// login is a database-tier tenant's login password, or why it is not
// known.
type login struct {
	password string
	err      error
}

// tenantLogins returns the login of every database target's tenant, by
// tenant id. When own, a tenant without one gets one (TenantLoginPassword);
// otherwise it is left out (the zero login). It runs before the workers
// start, since control is one connection.
func tenantLogins(ctx context.Context, control *pgx.Conn, targets []Target, keys *secrets.Keyring, own bool) map[string]login {
	logins := map[string]login{}
	for _, t := range targets {
		if t.Kind != KindDatabase {
			continue
		}
		var l login
		if own {
			l.password, l.err = TenantLoginPassword(ctx, control, keys, t.Tenant)
		} else {
			// Through to_jsonb, so that Status also reads a catalog whose
			// control migrations predate the column.
			var stored *string
			if l.err = control.QueryRow(ctx, "SELECT to_jsonb(t)->>'login_password' FROM tenants t WHERE id = $1", t.Tenant).Scan(&stored); l.err == nil && stored != nil {
				l.password, l.err = OpenTenantLogin(keys, t.Tenant, *stored)
			}
		}
		logins[t.Tenant] = l
	}
	return logins
}

func (w *worker) close(ctx context.Context) {
	for _, c := range w.conns {
		c.Close(context.WithoutCancel(ctx))
	}
}

// adminDSN is a backend's admin DSN, opened, or why it could not be: one
// backend sealed with a key that is not configured fails its own targets
// only.
type adminDSN struct {
	dsn string
	err error
}

func adminDSNs(ctx context.Context, control *pgx.Conn, keys *secrets.Keyring) (map[string]adminDSN, error) {
	rows, err := control.Query(ctx, "SELECT name, admin_dsn FROM backends")
	if err != nil {
		return nil, fmt.Errorf("migrations: listing backends: %w", err)
	}
	dsns := map[string]adminDSN{}
	var name, stored string
	_, err = pgx.ForEachRow(rows, []any{&name, &stored}, func() error {
		dsn, err := keys.OpenBackend(name, "admin DSN", stored)
		dsns[name] = adminDSN{dsn: dsn, err: err}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("migrations: listing backends: %w", err)
	}
	return dsns, nil
}
