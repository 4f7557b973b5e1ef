package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/chatapi"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
)

func TestMain(m *testing.M) { pgtest.RunMain(m) }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// freshCatalog starts a private cluster (the serving role and backend
// databases are cluster-wide) and returns its control DSN, migrated, with
// no app stored.
func freshCatalog(t testing.TB) (*pgcluster.Cluster, string) {
	t.Helper()
	return newCatalog(t, migrations.Up)
}

// chatCatalog is freshCatalog with the chat stored as its app (migrate up
// --dir chatapi/migrations), for tests that need tables to lock and fill.
func chatCatalog(t testing.TB) (*pgcluster.Cluster, string) {
	t.Helper()
	return newCatalog(t, chatapi.MigrateUp)
}

func newCatalog(t testing.TB, up func(context.Context, string, migrations.Options) (*migrations.Report, error)) (*pgcluster.Cluster, string) {
	t.Helper()
	c := pgtest.StartT(t)
	dsn := pgtest.NewDatabase(t, c)
	if _, err := up(ctxT(t), dsn, migrations.Options{}); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	return c, dsn
}

// seedSchemaTenants registers n schema-tier tenants the way provisioning
// does, minus their migrations, so that Up has every one of them to migrate.
func seedSchemaTenants(t testing.TB, c *pgcluster.Cluster, controlDSN, prefix string, n int) []string {
	t.Helper()
	ctx := ctxT(t)
	control := connect(t, controlDSN)
	tenants := connect(t, c.DSN(migrations.SchemaDatabase))
	var ids []string
	for i := range n {
		ids = append(ids, fmt.Sprintf("%s-%04d", prefix, i))
	}
	for chunk := range slicesChunk(ids, 100) {
		var ddl strings.Builder
		for _, id := range chunk {
			name := pgx.Identifier{"tenant_" + id}.Sanitize()
			fmt.Fprintf(&ddl, "CREATE ROLE %[1]s NOLOGIN; CREATE SCHEMA %[1]s AUTHORIZATION %[1]s; GRANT %[1]s TO %[2]s;\n",
				name, migrations.ServingRole)
		}
		if _, err := tenants.Exec(ctx, ddl.String()); err != nil {
			t.Fatal(err)
		}
		if _, err := control.Exec(ctx, `INSERT INTO tenants (id, name, subdomain, isolation_level, plan, status,
			data_region, backend, database, schema_name, max_users, max_storage_gb)
			SELECT id, id, id, 'schema', 'standard', 'active', 'default', 'main', $2, 'tenant_' || id, 50, 50
			FROM unnest($1::text[]) id`, chunk, migrations.SchemaDatabase); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func slicesChunk(s []string, n int) func(func([]string) bool) {
	return func(yield func([]string) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k]) {
				return
			}
			s = s[k:]
		}
	}
}

func TestUpOnEmptyCatalogRegistersMainWithServingRole(t *testing.T) {
	c, dsn := freshCatalog(t)
	ctx := ctxT(t)
	control := connect(t, dsn)

	var name, region, adminDSN, user, password string
	if err := control.QueryRow(ctx, "SELECT name, region, admin_dsn, serving_user, serving_password FROM backends").
		Scan(&name, &region, &adminDSN, &user, &password); err != nil {
		t.Fatal(err)
	}
	if name != "main" || region != "default" || adminDSN != dsn || user != migrations.ServingRole || len(password) < 20 {
		t.Fatalf("backend row = %q %q dsn-equal=%v %q password-len=%d; want main default true %s >=20",
			name, region, adminDSN == dsn, user, len(password), migrations.ServingRole)
	}

	var login, super, bypass, createRole, createDB, inherit bool
	if err := control.QueryRow(ctx, `SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolinherit
		FROM pg_roles WHERE rolname = $1`, user).Scan(&login, &super, &bypass, &createRole, &createDB, &inherit); err != nil {
		t.Fatal(err)
	}
	if !login || super || bypass || createRole || createDB || inherit {
		t.Fatalf("serving role login=%v super=%v bypassrls=%v createrole=%v createdb=%v inherit=%v; want only login",
			login, super, bypass, createRole, createDB, inherit)
	}

	// PUBLIC may not connect to the backend databases; the serving role may,
	// with the password the catalog stores.
	if _, err := control.Exec(ctx, "CREATE ROLE outsider LOGIN PASSWORD 'outsider-pw'"); err != nil {
		t.Fatal(err)
	}
	for _, db := range []string{migrations.SharedDatabase, migrations.SchemaDatabase} {
		var public, serving bool
		if err := control.QueryRow(ctx, "SELECT has_database_privilege('outsider', $1, 'CONNECT'), has_database_privilege($2, $1, 'CONNECT')",
			db, user).Scan(&public, &serving); err != nil {
			t.Fatal(err)
		}
		if public || !serving {
			t.Errorf("%s: CONNECT for PUBLIC=%v serving=%v; want false true", db, public, serving)
		}
		cfg, err := pgx.ParseConfig(c.DSN(db))
		if err != nil {
			t.Fatal(err)
		}
		cfg.User, cfg.Password = user, password
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("serving role cannot log in to %s: %v", db, err)
		}
		conn.Close(ctx)
	}

	// A second up changes nothing.
	rep, err := migrations.Up(ctx, dsn, migrations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Results {
		if r.Applied != 0 || r.Version != r.Latest {
			t.Errorf("second up: %s applied %d, at %d of %d; want 0 applied, up to date", r.Target, r.Applied, r.Version, r.Latest)
		}
	}
}

func TestEditedAppliedMigrationIsRefused(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := ctxT(t)
	conn := connect(t, pgtest.NewDatabase(t, c))
	target := migrations.Target{Kind: migrations.KindControl}
	if _, err := migrations.Apply(ctx, conn, target); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1"); err != nil {
		t.Fatal(err)
	}
	_, err := migrations.Apply(ctx, conn, target)
	var ce *migrations.ChecksumError
	if !errors.As(err, &ce) || ce.Version != 1 {
		t.Fatalf("apply after an edit: err = %v; want a ChecksumError for version 1", err)
	}
}

func TestConcurrentUpMigratesEachTargetExactlyOnce(t *testing.T) {
	c, dsn := chatCatalog(t)
	ids := seedSchemaTenants(t, c, dsn, "conc", 40)

	var wg sync.WaitGroup
	reps := make([]*migrations.Report, 2)
	errs := make([]error, 2)
	for i := range reps {
		wg.Go(func() { reps[i], errs[i] = migrations.Up(ctxT(t), dsn, migrations.Options{Concurrency: 4}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("up #%d: %v", i, err)
		}
	}
	applied := map[string]int{}
	for _, rep := range reps {
		for _, r := range rep.Results {
			if r.App != nil {
				applied[r.Target.String()] += r.App.Applied
			}
			if r.App != nil && r.App.Drifted() {
				t.Errorf("%s after up: %s; want up to date", r.Target, r.App.State())
			}
		}
	}
	chat, err := chatapi.Schema()
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, c.DSN(migrations.SchemaDatabase))
	for _, id := range ids {
		var rows int
		if err := conn.QueryRow(ctxT(t), "SELECT count(*) FROM "+pgx.Identifier{migrations.ProxySchema, "tenant_" + id + "_app_schema_migrations"}.Sanitize()).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows != len(chat) {
			t.Errorf("tenant %s has %d app_schema_migrations rows; want %d", id, rows, len(chat))
		}
	}
	for target, n := range applied {
		if strings.HasPrefix(target, "tenant ") && n != len(chat) {
			t.Errorf("%s: the two runs applied %d app migrations together; want exactly %d", target, n, len(chat))
		}
	}
	if len(applied) != len(ids)+1 {
		t.Errorf("reports name %d tenant targets; want %d tenants + shared", len(applied), len(ids)+1)
	}
}

func TestUpReportsAFailingTenantAndMigratesTheOthers(t *testing.T) {
	c, dsn := chatCatalog(t)
	ids := seedSchemaTenants(t, c, dsn, "part", 5)
	broken := ids[2]
	if err := c.Exec(ctxT(t), migrations.SchemaDatabase, "DROP SCHEMA "+pgx.Identifier{"tenant_" + broken}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	var seen int
	rep, err := migrations.Up(ctxT(t), dsn, migrations.Options{Progress: func(migrations.Progress) { seen++ }})
	if err == nil || !strings.Contains(err.Error(), "1 of") {
		t.Fatalf("up with a broken tenant: err = %v; want one failed target", err)
	}
	if rep.Failed != 1 || seen != len(ids)+1 {
		t.Fatalf("report failed=%d progress calls=%d; want 1 and %d", rep.Failed, seen, len(ids)+1)
	}
	for _, r := range rep.Results {
		if wantErr := r.Target.Tenant == broken; (r.Err != nil) != wantErr || (!wantErr && r.Version != r.Latest) {
			t.Errorf("%s: err=%v version=%d; want failure only for %s, the rest up to date", r.Target, r.Err, r.Version, broken)
		}
	}

	st, err := migrations.Status(ctxT(t), dsn, migrations.Options{})
	if err != nil || len(st.Results) != len(ids)+2 {
		t.Fatalf("status: err=%v results=%d; want %d results", err, len(st.Results), len(ids)+2)
	}
	for _, r := range st.Results {
		if behind := r.App != nil && r.App.Drifted(); behind != (r.Target.Tenant == broken) {
			t.Errorf("status %s: app %+v; want only %s behind", r.Target, r.App, broken)
		}
	}
}

// BenchmarkUp500SchemaTenants times `migrate up` over 500 schema-tier
// tenants that each need every version of the stored app (the chat). Run it once:
//
//	go test ./migrations -run '^$' -bench Up500 -benchtime 1x
func BenchmarkUp500SchemaTenants(b *testing.B) {
	c, dsn := chatCatalog(b)
	i := 0
	for b.Loop() {
		b.StopTimer()
		seedSchemaTenants(b, c, dsn, fmt.Sprintf("b%d", i), 500)
		i++
		b.StartTimer()
		rep, err := migrations.Up(ctxT(b), dsn, migrations.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(len(rep.Results)), "targets/op")
		b.StopTimer()
		// The common case after a release: everything is up to date.
		start := time.Now()
		if _, err := migrations.Up(ctxT(b), dsn, migrations.Options{}); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "noop-up-s")
		b.StartTimer()
	}
}

func TestConcurrentUpOnAnEmptyCatalogRegistersMainOnce(t *testing.T) {
	c := pgtest.StartT(t)
	dsn := pgtest.NewDatabase(t, c)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { _, errs[i] = migrations.Up(ctxT(t), dsn, migrations.Options{}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("up #%d: %v", i, err)
		}
	}
	control := connect(t, dsn)
	ms, _ := migrations.For(migrations.KindControl)
	var backends, versions int
	if err := control.QueryRow(ctxT(t), "SELECT (SELECT count(*) FROM backends), (SELECT count(*) FROM schema_migrations)").Scan(&backends, &versions); err != nil {
		t.Fatal(err)
	}
	if backends != 1 || versions != len(ms) {
		t.Fatalf("after 3 concurrent ups: %d backends, %d control versions; want 1 and %d", backends, versions, len(ms))
	}
}

// TestSharedTierIDsBecomePerTenant: the chat's migration 0004 of earlier
// releases (which an upgrade applies where they left it out) moves the shared tier's
// id columns from sequences every tenant shares (whose gaps counted other
// tenants' inserts) to per-tenant ones, each tenant continuing past its
// highest id, a new tenant starting at 1.
func TestSharedTierIDsBecomePerTenant(t *testing.T) {
	c, _ := freshCatalog(t)
	ctx := ctxT(t)
	if _, err := connect(t, c.DSN("postgres")).Exec(ctx, "CREATE DATABASE adopt"); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, c.DSN("adopt"))
	target := migrations.Target{Kind: migrations.KindShared, Backend: migrations.MainBackend, Database: "adopt"}
	all, err := migrations.LegacyChat(migrations.KindShared)
	if err != nil {
		t.Fatal(err)
	}
	upTo := func(v int) {
		t.Helper()
		upToV := slices.DeleteFunc(slices.Clone(all), func(m migrations.Migration) bool { return m.Version > v })
		opts := migrations.Options{Migrations: func(migrations.Kind) ([]migrations.Migration, error) { return upToV, nil }}
		if _, err := migrations.ApplyWith(ctx, conn, target, opts); err != nil {
			t.Fatal(err)
		}
	}
	insert := func(tenant string) (id int64) {
		t.Helper()
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT set_config($1, $2, true)", migrations.TenantGUC, tenant); err != nil {
				return err
			}
			return tx.QueryRow(ctx, "INSERT INTO users (username) VALUES (gen_random_uuid()::text) RETURNING id").Scan(&id)
		})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	upTo(3)
	for _, tenant := range []string{"a", "b", "a"} { // ids 1, 2, 3 from the shared sequence
		insert(tenant)
	}
	upTo(4)
	for _, step := range []struct {
		tenant string
		want   int64
	}{{"a", 4}, {"b", 3}, {"c", 1}, {"b", 4}, {"a", 5}, {"c", 2}} {
		if got := insert(step.tenant); got != step.want {
			t.Errorf("tenant %s got id %d; want %d", step.tenant, got, step.want)
		}
	}
}

// TestUpHardensRegisteredBackendsAgain: a server prepared by an earlier
// release (here: pg_class's estimates readable again, as before they were
// hidden) gets this release's hardening from migrate up, not only from a
// new registration.
func TestUpHardensRegisteredBackendsAgain(t *testing.T) {
	c, dsn := freshCatalog(t)
	ctx := ctxT(t)
	readable := func(db string) bool {
		t.Helper()
		var ok bool
		if err := connect(t, c.DSN(db)).QueryRow(ctx,
			"SELECT has_column_privilege($1, 'pg_catalog.pg_class', 'reltuples', 'SELECT')", migrations.ServingRole).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for _, db := range []string{migrations.SharedDatabase, migrations.SchemaDatabase} {
		if _, err := connect(t, c.DSN(db)).Exec(ctx, "GRANT SELECT ON pg_catalog.pg_class TO PUBLIC"); err != nil {
			t.Fatal(err)
		}
		if !readable(db) {
			t.Fatalf("%s: the loosening did not take", db)
		}
	}
	if _, err := migrations.Up(ctx, dsn, migrations.Options{}); err != nil {
		t.Fatal(err)
	}
	for _, db := range []string{migrations.SharedDatabase, migrations.SchemaDatabase} {
		if readable(db) {
			t.Errorf("%s: pg_class.reltuples still readable by the serving role after migrate up", db)
		}
	}
}

// TestUpGivesTheServingRoleTempInTheSharedDatabaseOnly: the staging table
// of the shared tier's COPY FROM STDIN needs TEMP there, also on a backend
// registered before it did; no other database gets it.
func TestUpGivesTheServingRoleTempInTheSharedDatabaseOnly(t *testing.T) {
	c, dsn := freshCatalog(t)
	ctx := ctxT(t)
	temp := func(db string) bool {
		t.Helper()
		var ok bool
		if err := connect(t, c.DSN(db)).QueryRow(ctx, "SELECT has_database_privilege($1, current_database(), 'TEMP')", migrations.ServingRole).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if _, err := connect(t, c.DSN(migrations.SharedDatabase)).Exec(ctx, "REVOKE TEMP ON DATABASE "+migrations.SharedDatabase+" FROM "+migrations.ServingRole); err != nil {
		t.Fatal(err)
	}
	if temp(migrations.SharedDatabase) {
		t.Fatal("the revoke did not take")
	}
	if _, err := migrations.Up(ctx, dsn, migrations.Options{}); err != nil {
		t.Fatal(err)
	}
	if !temp(migrations.SharedDatabase) {
		t.Errorf("no TEMP for the serving role in %s after migrate up", migrations.SharedDatabase)
	}
	if temp(migrations.SchemaDatabase) {
		t.Errorf("TEMP for the serving role in %s; want none", migrations.SchemaDatabase)
	}
}
