package tierddl_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

// TestNamesMatchMigrations holds the names tierddl repeats equal to those
// of package migrations, which the proxy and the catalog use.
func TestNamesMatchMigrations(t *testing.T) {
	if tierddl.TenantGUC != migrations.TenantGUC || tierddl.ServingRole != migrations.ServingRole {
		t.Fatalf("tierddl has %q/%q, migrations %q/%q", tierddl.TenantGUC, tierddl.ServingRole, migrations.TenantGUC, migrations.ServingRole)
	}
	for _, k := range []migrations.Kind{migrations.KindShared, migrations.KindSchema, migrations.KindDatabase} {
		if _, err := tierddl.Transform(tierddl.Tier(k), "SELECT 1"); err != nil {
			t.Errorf("kind %s is not a tier: %v", k, err)
		}
	}
}

// Shorthands for the expected output: tenantCol is the column the shared
// tier adds, isolate(t) what follows every CREATE TABLE t.
const (
	guc       = "(NULLIF(current_setting('app.tenant_id', true), ''))"
	tenantCol = "tenant_id text NOT NULL DEFAULT " + guc
)

func isolate(table string) string {
	return "ALTER TABLE " + table + " ENABLE ROW LEVEL SECURITY;\n" +
		"ALTER TABLE " + table + " FORCE ROW LEVEL SECURITY;\n" +
		"CREATE POLICY tenant_isolation ON " + table + " TO public USING (tenant_id = " + guc + ") WITH CHECK (tenant_id = " + guc + ");\n" +
		grant(table)
}

func grant(rel string) string {
	return "GRANT select, insert, update, delete ON " + rel + " TO tenantproxy_serving;\n"
}

func register(key string) string {
	return "INSERT INTO tenantproxy.id_keys (key) VALUES ('" + key + "') ON CONFLICT DO NOTHING;\n"
}

func TestTransformShared(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{
			name: "identity primary key and column unique become per tenant",
			in:   "CREATE TABLE todos (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL UNIQUE)",
			want: "CREATE TABLE todos (id bigint NOT NULL DEFAULT tenantproxy.next_id('todos.id'), title text NOT NULL, " + tenantCol + ", " +
				"PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, title));\n" + isolate("todos") + register("todos.id"),
		},
		{
			name: "serial types become integers with per-tenant ids, named constraints keep their names",
			in:   "CREATE TABLE s.t (a smallserial, b serial CONSTRAINT b_key UNIQUE, c bigserial)",
			want: "CREATE TABLE s.t (a smallint NOT NULL DEFAULT tenantproxy.next_id('s.t.a'), " +
				"b int NOT NULL DEFAULT tenantproxy.next_id('s.t.b'), c bigint NOT NULL DEFAULT tenantproxy.next_id('s.t.c'), " + tenantCol + ", " +
				"CONSTRAINT b_key UNIQUE (tenant_id, b));\n" + isolate("s.t") + register("s.t.a") + register("s.t.b") + register("s.t.c"),
		},
		{
			name: "foreign keys lead with the tenant on both sides; SET NULL keeps the tenant",
			in: "CREATE TABLE todo_tags (todo_id bigint REFERENCES todos ON DELETE CASCADE, tag_id bigint, note_id bigint, " +
				"PRIMARY KEY (todo_id, tag_id), FOREIGN KEY (tag_id) REFERENCES tags (id), " +
				"CONSTRAINT n FOREIGN KEY (note_id) REFERENCES notes (id) ON DELETE SET NULL)",
			want: "CREATE TABLE todo_tags (todo_id bigint, tag_id bigint, note_id bigint, " + tenantCol + ", " +
				"PRIMARY KEY (tenant_id, todo_id, tag_id), FOREIGN KEY (tenant_id, tag_id) REFERENCES tags (tenant_id, id), " +
				"CONSTRAINT n FOREIGN KEY (tenant_id, note_id) REFERENCES notes (tenant_id, id) ON DELETE SET NULL (note_id), " +
				"FOREIGN KEY (tenant_id, todo_id) REFERENCES todos ON DELETE CASCADE);\n" + isolate("todo_tags"),
		},
		{
			name: "B-tree indexes lead with the tenant, others stay",
			in:   "CREATE UNIQUE INDEX a ON t (lower(x)) WHERE y; CREATE INDEX b ON t USING gin (doc)",
			want: "CREATE UNIQUE INDEX a ON t USING btree (tenant_id, lower(x)) WHERE y;\nCREATE INDEX b ON t USING gin (doc);\n",
		},
		{
			name: "ALTER TABLE ADD COLUMN and ADD CONSTRAINT",
			in:   "ALTER TABLE t ADD COLUMN n bigserial UNIQUE, ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES u (y), ADD PRIMARY KEY (k)",
			want: "ALTER TABLE t ADD COLUMN n bigint NOT NULL DEFAULT tenantproxy.next_id('t.n'), " +
				"ADD CONSTRAINT f FOREIGN KEY (tenant_id, x) REFERENCES u (tenant_id, y), ADD PRIMARY KEY (tenant_id, k), " +
				"ADD UNIQUE (tenant_id, n);\n" + register("t.n"),
		},
		{
			name: "views run as their invoker",
			in:   "CREATE VIEW v AS SELECT 1; CREATE OR REPLACE VIEW w WITH (security_invoker) AS SELECT 2",
			want: "CREATE VIEW v WITH (security_invoker=true) AS SELECT 1;\n" + grant("v") +
				"CREATE OR REPLACE VIEW w WITH (security_invoker) AS SELECT 2;\n" + grant("w"),
		},
		{
			name: "what needs nothing passes through",
			in: "CREATE TYPE mood AS ENUM ('a', 'b'); DROP TABLE t; COMMENT ON TABLE t IS 'x'; " +
				"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'; UPDATE t SET a = 1; " +
				"CREATE POLICY mine ON t AS RESTRICTIVE USING (a > 0); ALTER TABLE t ALTER COLUMN a SET NOT NULL",
			want: "CREATE TYPE mood AS ENUM ('a', 'b');\nDROP TABLE t;\nCOMMENT ON TABLE t IS 'x';\n" +
				"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\nUPDATE t SET a = 1;\n" +
				"CREATE POLICY mine ON t AS RESTRICTIVE USING (a > 0);\nALTER TABLE t ALTER COLUMN a SET NOT NULL;\n",
		},
		{
			name: "statements passed through keep their text, a trailing comment cannot swallow the semicolon",
			in:   "-- first\nCREATE FUNCTION g() RETURNS int\n  LANGUAGE sql AS $$ SELECT 2 /* two */ $$;\n\nDROP VIEW v -- gone",
			want: "CREATE FUNCTION g() RETURNS int\n  LANGUAGE sql AS $$ SELECT 2 /* two */ $$;\nDROP VIEW v -- gone\n;\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tierddl.Transform(tierddl.Shared, tc.in)
			if err != nil {
				t.Fatalf("Transform: %v", err)
			}
			if got != tc.want {
				t.Errorf("Transform(%q)\n got: %s\nwant: %s", tc.in, got, tc.want)
			}
		})
	}
}

func TestTransformSharedRefuses(t *testing.T) {
	for _, tc := range []struct{ in, why string }{
		{"CREATE MATERIALIZED VIEW m AS SELECT * FROM t", "materialized views cannot have row-level security"},
		{"CREATE VIEW v WITH (security_invoker = false) AS SELECT 1", "runs as its owner"},
		{"ALTER VIEW v SET (security_invoker = off)", "runs as its owner"},
		{"ALTER VIEW v RESET (security_invoker)", "runs as its owner"},
		{"ALTER TABLE t DISABLE ROW LEVEL SECURITY", "row-level security is what keeps"},
		{"ALTER TABLE t NO FORCE ROW LEVEL SECURITY", "row-level security is what keeps"},
		{"ALTER TABLE t OWNER TO tenantproxy_serving", "owner may turn"},
		{"CREATE POLICY p ON t USING (true)", "permissive policy"},
		{"CREATE POLICY tenant_isolation ON t AS RESTRICTIVE USING (true)", "tool's tenant isolation"},
		{"DROP POLICY tenant_isolation ON t", "tool's tenant isolation"},
		{"ALTER POLICY tenant_isolation ON t USING (true)", "tool's tenant isolation"},
		{"ALTER POLICY p ON t RENAME TO tenant_isolation", "tool's tenant isolation"},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'", "SECURITY DEFINER"},
		{"ALTER FUNCTION f() SECURITY DEFINER", "SECURITY DEFINER"},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'f'", "language c"},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.tenant_id = 'x' AS 'SELECT 1'", "run as another tenant"},
		{"ALTER FUNCTION f() SET app.tenant_id FROM CURRENT", "run as another tenant"},
		{"CREATE TABLE c (x int) INHERITS (p)", "INHERITS"},
		{"CREATE TABLE p (x int) PARTITION BY RANGE (x)", "partitioned tables"},
		{"CREATE TABLE c PARTITION OF p FOR VALUES FROM (1) TO (2)", "partitioned tables"},
		{"CREATE TEMP TABLE t (x int)", "temporary table"},
		{"CREATE TABLE t OF mytype", "OF a type"},
		{"CREATE TABLE t (LIKE u)", "LIKE copies"},
		{"CREATE TABLE IF NOT EXISTS t (x int)", "IF NOT EXISTS"},
		{"CREATE TABLE t (tenant_id text)", "tenant_id is the column"},
		{"ALTER TABLE t DROP COLUMN tenant_id", "tenant_id is the column"},
		{"ALTER TABLE t RENAME COLUMN tenant_id TO x", "tenant_id is the column"},
		{"ALTER TABLE t ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY", "identity columns"},
		{"CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY (START WITH 10))", "sequence options"},
		{"CREATE TABLE t (x int, EXCLUDE USING gist (x WITH =))", "exclusion constraint"},
		{"CREATE TABLE t (x int REFERENCES u MATCH FULL)", "MATCH FULL"},
		{"CREATE TABLE t (x int REFERENCES u ON UPDATE SET NULL)", "ON UPDATE SET NULL"},
		{"CREATE SEQUENCE s", "sequence every tenant shares"},
		{"ALTER SEQUENCE s RESTART", "sequence every tenant shares"},
		{"CREATE TABLE t AS SELECT 1", "CREATE TABLE AS"},
		{"SELECT 1 INTO t", "SELECT INTO"},
		{"GRANT SELECT ON t TO PUBLIC", "privileges"},
		{"REVOKE SELECT ON t FROM tenantproxy_serving", "privileges"},
		{"BEGIN", "transaction control"},
		{"CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", "rules run"},
		{"CREATE EXTENSION hstore", "CreateExtensionStmt is not allowed"},
		{"CREATE SCHEMA s", "CreateSchemaStmt is not allowed"},
		{"SET search_path = x", "VariableSetStmt is not allowed"},
		{"DO $$ BEGIN END $$", "DoStmt is not allowed"},
		{"DROP SCHEMA s", "schemas are the tool's"},
		{"DROP FUNCTION tenantproxy.next_id(text)", "belong to the proxy"},
		{"CREATE TABLE tenantproxy_ids.t (x int)", "belong to the proxy"},
		{"INSERT INTO tenantproxy.id_keys VALUES ('x')", "belong to the proxy"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			in := "CREATE TABLE ok (x int);\n-- a comment\n" + tc.in + ";\nDROP TABLE ok"
			got, err := tierddl.Transform(tierddl.Shared, in)
			var e *tierddl.Error
			if !errors.As(err, &e) {
				t.Fatalf("Transform(%q) = %q, %v; want a refusal saying %q", tc.in, got, err, tc.why)
			}
			if e.Statement != 2 || e.Line != 3 || !strings.Contains(e.Reason, tc.why) || !strings.HasPrefix(tc.in, strings.TrimSuffix(e.Text, " …")) {
				t.Errorf("refusal %+v; want statement 2, line 3, text %q, reason saying %q", e, tc.in, tc.why)
			}
		})
	}
}

func TestTransformOtherTiersIsIdentity(t *testing.T) {
	in := "CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY); -- as written\nCREATE MATERIALIZED VIEW m AS SELECT 1"
	for _, tier := range []tierddl.Tier{tierddl.Schema, tierddl.Database} {
		if got, err := tierddl.Transform(tier, in); err != nil || got != in {
			t.Errorf("Transform(%s) = %q, %v; want the input unchanged", tier, got, err)
		}
	}
	if _, err := tierddl.Transform("control", in); err == nil {
		t.Error("an unknown tier was accepted")
	}
}

func TestTransformNamesTheLineOfASyntaxError(t *testing.T) {
	_, err := tierddl.Transform(tierddl.Shared, "CREATE TABLE a (x int);\n-- é\nCREATE TABLE b (y int,);")
	if err == nil || !strings.Contains(err.Error(), "line 3: syntax error") {
		t.Fatalf("got %v; want a syntax error on line 3", err)
	}
}

func TestTransformRefusesDeepNesting(t *testing.T) {
	deep := "SELECT " + strings.Repeat("(", 30000) + "1" + strings.Repeat(")", 30000)
	if _, err := tierddl.Transform(tierddl.Shared, deep); err == nil || !strings.Contains(err.Error(), "nests brackets") {
		t.Fatalf("30,000-deep brackets: %v; want a refusal before the parser", err)
	}
}
