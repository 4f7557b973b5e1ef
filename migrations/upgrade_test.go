package migrations_test

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/chatapi"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// TestUpgradeAdoptsTheChatOfAnEarlierRelease: an install whose tenants got
// the chat from the proxy's own embedded migrations, as releases before
// the chat became an app left it, keeps its chat rows through the
// upgrade. A plain migrate up leaves it as it was; migrate up with the
// chat's directory records the chat's versions as applied on every
// target without running them, after which migrate status is clean and a
// tenant created afterwards gets the chat from the app.
func TestUpgradeAdoptsTheChatOfAnEarlierRelease(t *testing.T) {
	c := pgtest.StartT(t)
	dsn := pgtest.NewDatabase(t, c)
	ctx := ctxT(t)
	earlier := migrations.Options{Migrations: func(k migrations.Kind) ([]migrations.Migration, error) {
		if k == migrations.KindControl {
			return migrations.For(k)
		}
		return migrations.LegacyChat(k)
	}}
	if _, err := migrations.Up(ctx, dsn, earlier); err != nil {
		t.Fatalf("migrate up as an earlier release: %v", err)
	}
	cat, err := catalog.Open(ctx, dsn, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	tenants := map[string]*catalog.Tenant{}
	for sub, tier := range map[string]catalog.Tier{"shared-a": catalog.TierShared, "shared-b": catalog.TierShared,
		"schema-a": catalog.TierSchema, "db-a": catalog.TierDatabase} {
		if _, err := cat.Create(ctx, catalog.CreateRequest{Subdomain: sub, Plan: catalog.PlanEnterprise, Tier: tier}); err != nil {
			t.Fatalf("create %s: %v", sub, err)
		}
		if tenants[sub], err = cat.Show(ctx, sub); err != nil {
			t.Fatal(err)
		}
	}
	// The earlier release's create applied its chat; this one's applies
	// the stored app (none yet), so its migrate up stands in for it.
	if _, err := migrations.Up(ctx, dsn, earlier); err != nil {
		t.Fatalf("migrate up as an earlier release: %v", err)
	}
	// Where the earlier release's tenant reaches its users table.
	users := func(sub string) (conn *pgx.Conn, table string) {
		tn := tenants[sub]
		switch tn.Tier {
		case catalog.TierSchema:
			return connect(t, c.DSN(migrations.SchemaDatabase)), pgx.Identifier{tn.SchemaName, "users"}.Sanitize()
		case catalog.TierDatabase:
			return connect(t, c.DSN(tn.Database)), "public.users"
		}
		return connect(t, c.DSN(migrations.SharedDatabase)), "public.users"
	}
	asTenant := func(sub string, fn func(tx pgx.Tx, table string) error) {
		t.Helper()
		conn, table := users(sub)
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT set_config($1, $2, true)", migrations.TenantGUC, tenants[sub].ID); err != nil {
				return err
			}
			return fn(tx, table)
		})
		if err != nil {
			t.Fatalf("%s: %v", sub, err)
		}
	}
	for sub := range tenants {
		asTenant(sub, func(tx pgx.Tx, table string) error {
			_, err := tx.Exec(ctx, "INSERT INTO "+table+" (username) VALUES ($1)", "kept-"+sub)
			return err
		})
	}
	kept := func(when string) {
		t.Helper()
		for sub := range tenants {
			asTenant(sub, func(tx pgx.Tx, table string) error {
				var names []string
				rows, err := tx.Query(ctx, "SELECT username FROM "+table+" WHERE username = $1", "kept-"+sub)
				if err == nil {
					names, err = pgx.CollectRows(rows, pgx.RowTo[string])
				}
				if err == nil && len(names) != 1 {
					t.Errorf("%s: %s has rows %q; want the one written before the upgrade", when, sub, names)
				}
				return err
			})
		}
	}

	// This release's migrate up without the chat's directory: nothing of
	// the chat is touched, recorded or run.
	rep, err := migrations.Up(ctx, dsn, migrations.Options{})
	if err != nil {
		t.Fatalf("plain migrate up: %v", err)
	}
	for _, r := range rep.Results[1:] {
		if r.Version < 2 || r.App == nil || r.App.Version != 0 {
			t.Errorf("plain migrate up: %s at version %d, app %+v; want the earlier chat's versions kept and no app", r.Target, r.Version, r.App)
		}
	}
	kept("after a plain migrate up")

	rep, err = chatapi.MigrateUp(ctx, dsn, migrations.Options{})
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
	kept("after the upgrade")

	st, err := migrations.Status(ctx, dsn, migrations.Options{})
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	for _, r := range st.Results[1:] {
		if r.Version != r.Latest || r.App == nil || r.App.Drifted() || r.App.Version != 2 {
			t.Errorf("status: %s at %d of %d, app %+v; want up to date", r.Target, r.Version, r.Latest, r.App)
		}
	}

	if _, err := cat.Create(ctx, catalog.CreateRequest{Subdomain: "schema-new", Plan: catalog.PlanStandard, Tier: catalog.TierSchema}); err != nil {
		t.Fatalf("create after the upgrade: %v", err)
	}
	if tenants["schema-new"], err = cat.Show(ctx, "schema-new"); err != nil {
		t.Fatal(err)
	}
	asTenant("schema-new", func(tx pgx.Tx, table string) error {
		_, err := tx.Exec(ctx, "INSERT INTO "+table+" (username) VALUES ('new')")
		return err
	})
}
