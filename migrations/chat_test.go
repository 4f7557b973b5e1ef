package migrations_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

// chatDir is the chat API's migrations, written as for a database of its
// own, the way an adopter's are.
const chatDir = "../chatapi/migrations"

// TestChatDirectoryMatchesTheEmbeddedChat: the chat API's migrations
// directory, applied in each tier's form as an app's are (tierddl),
// makes the tables the chat templates earlier releases embedded made (0001, 0002 and, in
// the shared tier, 0004's per-tenant ids): the same columns, types,
// defaults, constraints, indexes, row-level security, policies and
// grants, and the same id columns declared for per-tenant ids. This is
// what lets a target that applied the embedded chat record the
// directory's versions as applied instead of running them again
// (TestUpgradeAdoptsTheChatOfAnEarlierRelease).
//
// Not compared, on purpose: the position of the shared tier's tenant_id
// column (first in the templates, last from tierddl), which only SELECT *
// and INSERT without a column list see, and the serving role's grants in
// the database tier, where it no longer connects. The database tier runs
// the same statements as the schema tier (tierddl leaves both as
// written).
func TestChatDirectoryMatchesTheEmbeddedChat(t *testing.T) {
	c, _ := freshCatalog(t)
	ctx := ctxT(t)
	app, err := migrations.ReadAppDir(chatDir)
	if err != nil {
		t.Fatal(err)
	}
	asApp := func(k migrations.Kind) ([]migrations.Migration, error) {
		var out []migrations.Migration
		for _, m := range app {
			sql, err := tierddl.Transform(tierddl.Tier(k), m.Up)
			if err != nil {
				return nil, err
			}
			out = append(out, migrations.Migration{Version: m.Version, Name: m.Name, SQL: sql, Checksum: m.Checksum})
		}
		return out, nil
	}
	admin := connect(t, c.DSN("postgres"))
	// Roles are the server's, schemas the database's: one tenant role
	// owns a schema of one name in both databases of the schema tier.
	for _, sql := range []string{"CREATE ROLE chat_tenant NOLOGIN", "CREATE DATABASE shared_embedded", "CREATE DATABASE shared_app",
		"CREATE DATABASE schema_embedded", "CREATE DATABASE schema_app"} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	for _, tier := range []struct {
		kind            migrations.Kind
		schema          string
		embedded, asApp string
	}{
		{migrations.KindShared, "public", "shared_embedded", "shared_app"},
		{migrations.KindSchema, "chat_tenant", "schema_embedded", "schema_app"},
	} {
		shapes := map[string]string{}
		for db, opts := range map[string]migrations.Options{tier.embedded: {Migrations: migrations.LegacyChat}, tier.asApp: {Migrations: asApp}} {
			conn := connect(t, c.DSN(db))
			if tier.kind == migrations.KindSchema {
				if _, err := conn.Exec(ctx, "CREATE SCHEMA chat_tenant AUTHORIZATION chat_tenant"); err != nil {
					t.Fatal(err)
				}
			}
			target := migrations.Target{Kind: tier.kind, Backend: migrations.MainBackend, Database: db, Schema: tier.schema}
			if tier.kind == migrations.KindShared {
				target.Schema = ""
			}
			if _, err := migrations.ApplyWith(ctx, conn, target, opts); err != nil {
				t.Fatalf("%s: %v", db, err)
			}
			shapes[db] = shape(t, conn, tier.schema)
		}
		if got, want := shapes[tier.asApp], shapes[tier.embedded]; got != want {
			t.Errorf("%s tier: the chat directory makes\n%s\nthe embedded chat made\n%s", tier.kind, got, want)
		}
		if !strings.Contains(shapes[tier.asApp], "messages_channel_keyset") {
			t.Errorf("%s tier: the shape lacks the chat's tables, so it proves nothing:\n%s", tier.kind, shapes[tier.asApp])
		}
	}
}

// shape describes the tables of schema as lines in a stable order, with
// no column positions.
func shape(t *testing.T, conn *pgx.Conn, schema string) string {
	t.Helper()
	idKeys := ""
	if schema == "public" {
		// The id columns the shared tier's migrations declared.
		idKeys = "UNION ALL SELECT 'id key ' || key FROM tenantproxy.id_keys"
	}
	var out string
	err := conn.QueryRow(ctxT(t), `SELECT string_agg(line, E'\n' ORDER BY line) FROM (
		SELECT format('%s.%s %s notnull=%s default=%s identity=%s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
			a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity) AS line
		FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
		WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'r'
		UNION ALL
		SELECT format('%s constraint %s %s', c.relname, k.conname, pg_get_constraintdef(k.oid))
		FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid WHERE c.relnamespace = $1::regnamespace
		UNION ALL
		SELECT format('index %s', replace(pg_get_indexdef(i.indexrelid), $1 || '.', ''))
		FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = $1::regnamespace
		UNION ALL
		SELECT format('%s rls=%s force=%s acl=%s', c.relname, c.relrowsecurity, c.relforcerowsecurity, c.relacl)
		FROM pg_class c WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'r'
		UNION ALL
		SELECT format('%s policy %s %s %s %s', c.relname, p.polname, p.polcmd, pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
		FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace = $1::regnamespace
		`+idKeys+`
	) lines`, schema).Scan(&out)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
