package migrations_test

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/chatapi"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// earlierInstall is a catalog as a release before the chat became an app
// left it: tenants in every tier (two sharing the shared target) with the
// chat's tables from the proxy's own migrations, and a row each in users.
type earlierInstall struct {
	c       *pgcluster.Cluster
	dsn     string
	cat     *catalog.Catalog
	tenants map[string]*catalog.Tenant
}

func newEarlierInstall(t *testing.T) *earlierInstall {
	t.Helper()
	c := pgtest.StartT(t)
	e := &earlierInstall{c: c, dsn: pgtest.NewDatabase(t, c), tenants: map[string]*catalog.Tenant{}}
	ctx := ctxT(t)
	earlier := migrations.Options{Migrations: func(k migrations.Kind) ([]migrations.Migration, error) {
		if k == migrations.KindControl {
			return migrations.For(k)
		}
		return migrations.LegacyChat(k)
	}}
	if _, err := migrations.Up(ctx, e.dsn, earlier); err != nil {
		t.Fatalf("migrate up as an earlier release: %v", err)
	}
	var err error
	if e.cat, err = catalog.Open(ctx, e.dsn, catalog.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.cat.Close)
	for sub, tier := range map[string]catalog.Tier{"shared-a": catalog.TierShared, "shared-b": catalog.TierShared,
		"schema-a": catalog.TierSchema, "db-a": catalog.TierDatabase} {
		e.create(t, sub, tier)
	}
	// The earlier release's create applied its chat; this one's applies
	// the stored app (none yet), so its migrate up stands in for it.
	if _, err := migrations.Up(ctx, e.dsn, earlier); err != nil {
		t.Fatalf("migrate up as an earlier release: %v", err)
	}
	for sub := range e.tenants {
		e.asTenant(t, sub, func(tx pgx.Tx, table string) error {
			_, err := tx.Exec(ctx, "INSERT INTO "+table+" (username) VALUES ($1)", "kept-"+sub)
			return err
		})
	}
	return e
}

func (e *earlierInstall) create(t *testing.T, sub string, tier catalog.Tier) {
	t.Helper()
	ctx := ctxT(t)
	if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: sub, Plan: catalog.PlanEnterprise, Tier: tier}); err != nil {
		t.Fatalf("create %s: %v", sub, err)
	}
	tn, err := e.cat.Show(ctx, sub)
	if err != nil {
		t.Fatal(err)
	}
	e.tenants[sub] = tn
}

// asTenant runs fn in a transaction on tenant sub's data with its tenant
// set, as the admin role, handing it where sub's users table is.
func (e *earlierInstall) asTenant(t *testing.T, sub string, fn func(tx pgx.Tx, table string) error) {
	t.Helper()
	ctx := ctxT(t)
	tn := e.tenants[sub]
	db, table := migrations.SharedDatabase, "public.users"
	switch tn.Tier {
	case catalog.TierSchema:
		db, table = migrations.SchemaDatabase, pgx.Identifier{tn.SchemaName, "users"}.Sanitize()
	case catalog.TierDatabase:
		db = tn.Database
	}
	err := pgx.BeginFunc(ctx, connect(t, e.c.DSN(db)), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config($1, $2, true)", migrations.TenantGUC, tn.ID); err != nil {
			return err
		}
		return fn(tx, table)
	})
	if err != nil {
		t.Fatalf("%s: %v", sub, err)
	}
}

// kept fails t unless every tenant still has the row it wrote before
// (as the admin role, which row-level security does not hold back).
func (e *earlierInstall) kept(t *testing.T, when string) {
	t.Helper()
	for sub := range e.tenants {
		e.asTenant(t, sub, func(tx pgx.Tx, table string) error {
			rows, err := tx.Query(ctxT(t), "SELECT username FROM "+table+" WHERE username = $1", "kept-"+sub)
			if err != nil {
				return err
			}
			names, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err == nil && len(names) != 1 {
				t.Errorf("%s: %s has rows %q; want the one written before the upgrade", when, sub, names)
			}
			return err
		})
	}
}

// TestUpgradeAdoptsTheChatOfAnEarlierRelease: an install whose tenants got
// the chat from the proxy's own embedded migrations keeps its chat rows
// through the upgrade. A plain migrate up leaves it as it was; migrate up
// with the chat's directory records the chat's versions as applied on
// every target without running them, after which migrate status is clean
// and a tenant created afterwards gets the chat from the app.
func TestUpgradeAdoptsTheChatOfAnEarlierRelease(t *testing.T) {
	e := newEarlierInstall(t)
	ctx := ctxT(t)

	rep, err := migrations.Up(ctx, e.dsn, migrations.Options{})
	if err != nil {
		t.Fatalf("plain migrate up: %v", err)
	}
	for _, r := range rep.Results[1:] {
		if r.Version < 2 || r.App == nil || r.App.Version != 0 {
			t.Errorf("plain migrate up: %s at version %d, app %+v; want the earlier chat's versions kept and no app", r.Target, r.Version, r.App)
		}
	}
	e.kept(t, "after a plain migrate up")

	rep, err = chatapi.MigrateUp(ctx, e.dsn, migrations.Options{})
	if err != nil {
		t.Fatalf("migrate up --dir chatapi/migrations: %v", err)
	}
	if len(rep.Results) != 4 {
		t.Fatalf("migrate up reported %d targets; want control, shared, schema-a and db-a", len(rep.Results))
	}
	for _, r := range rep.Results[1:] {
		if r.Applied != 0 || r.Version != 0 || r.App == nil || r.App.Applied != 0 || r.App.Version != 2 || r.App.Drifted() {
			t.Errorf("upgrade: %s applied %d, at version %d, app %+v; want the chat recorded as app version 2, nothing run", r.Target, r.Applied, r.Version, r.App)
		}
	}
	e.kept(t, "after the upgrade")

	st, err := migrations.Status(ctx, e.dsn, migrations.Options{})
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	for _, r := range st.Results[1:] {
		if r.Version != r.Latest || r.App == nil || r.App.Drifted() || r.App.Version != 2 {
			t.Errorf("status: %s at %d of %d, app %+v; want up to date", r.Target, r.Version, r.Latest, r.App)
		}
	}

	e.create(t, "schema-new", catalog.TierSchema)
	e.asTenant(t, "schema-new", func(tx pgx.Tx, table string) error {
		_, err := tx.Exec(ctx, "INSERT INTO "+table+" (username) VALUES ('new')")
		return err
	})
}

// TestUpgradeWithAnotherAppLeavesTheEarlierChat: a catalog whose app is
// not the chat does not adopt the earlier chat's tables: they and their
// rows stay, recorded as before, and the app applies beside them.
func TestUpgradeWithAnotherAppLeavesTheEarlierChat(t *testing.T) {
	e := newEarlierInstall(t)
	todos, err := migrations.ReadAppDir("../test/testdata/todos")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := migrations.Up(ctxT(t), e.dsn, migrations.Options{App: todos})
	if err != nil {
		t.Fatalf("migrate up --dir todos: %v", err)
	}
	for _, r := range rep.Results[1:] {
		if r.Version < 2 || r.App == nil || r.App.Applied != len(todos) || r.App.Drifted() {
			t.Errorf("%s at version %d, app %+v; want the earlier chat's versions kept and todos applied", r.Target, r.Version, r.App)
		}
	}
	e.kept(t, "after migrate up with another app")
}
