package test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// tierDumpFlags are the pg_dump flags of a per-tenant backup through the
// proxy in the shared and schema tiers (README, "Backup and restore per
// tenant"): the rows only, since the schema is the app's migrations' and
// changes only through them (--no-owner: the owner is the tier's, never
// the tenant's to give), of schema, the tenant's own in the schema
// tier (without -n pg_dump would lock every schema's tables, other
// tenants' included), public in the shared tier; with row-level security
// on, so that a shared-tier dump holds the tenant's rows (pg_dump's
// default, row_security off, makes PostgreSQL fail rather than filter)
// and its replay loads through the policy into the tenant's share.
func tierDumpFlags(schema string) []string {
	return []string{"--data-only", "--enable-row-security", "--no-owner", "-n", schema}
}

// sequenceSet matches a data-only dump's setting of a sequence, with its
// comment: the shared tier has no sequence of the tenant's own (its ids
// come from per-tenant counters, tierddl's next_id).
var sequenceSet = regexp.MustCompile(`(?m)^--\n-- Name: [^;]*; Type: SEQUENCE SET;.*\n--\n\n(SELECT pg_catalog\.setval\(.*\n)?\n\n`)

// copyBlock matches a COPY … FROM stdin of a dump with its rows.
var copyBlock = regexp.MustCompile(`(?ms)^COPY (\S+) \(([^)]*)\) FROM stdin;\n(.*?)^\\\.$`)

// asSingleTenant turns a data-only dump of a tenant of tier (schema: its
// schema) into what the same rows give in a single-tenant database with
// the app's schema in public, by what must differ: the schema's name in
// the schema tier; in the shared tier the tenant column (holding the
// tenant's own id) and the sequences (sequenceSet).
func asSingleTenant(dump string, tier catalog.Tier, schema string) string {
	dump = normalizeDump(dump)
	if tier == catalog.TierSchema {
		return strings.ReplaceAll(dump, schema, "public")
	}
	return copyBlock.ReplaceAllStringFunc(dump, func(b string) string {
		m := copyBlock.FindStringSubmatch(b)
		cols := strings.Split(m[2], ", ")
		i := slices.Index(cols, tierddl.TenantColumn)
		if i < 0 {
			return b
		}
		var rows strings.Builder
		for _, r := range strings.SplitAfter(m[3], "\n") {
			if r != "" {
				// The tenant column may be the last (tierddl's order).
				fields := strings.Split(strings.TrimSuffix(r, "\n"), "\t")
				rows.WriteString(strings.Join(slices.Delete(fields, i, i+1), "\t") + "\n")
			}
		}
		return "COPY " + m[1] + " (" + strings.Join(slices.Delete(cols, i, i+1), ", ") + ") FROM stdin;\n" + rows.String() + `\.`
	})
}

// TestTransparencyDumpInTheSharedAndSchemaTiers: a shared- and a
// schema-tier tenant's pg_dump through the proxy, plain and -Fc, in both
// pool modes, holds the same rows as a single-tenant database of the
// app's schema with the same rows (a database-tier tenant's, dumped
// directly as its login role), byte for byte after asSingleTenant. The
// rows get there by that dump, loaded through the proxy (an import). Other
// tenants' rows, which each tier's tables or database hold beside the
// tenant's, are in none of the dumps. Before the proxy's stand-ins for
// pg_class's estimates and pg_db_role_setting, its holding of
// idle_in_transaction_session_timeout and transaction mode's tracking of
// set_config, pg_dump failed in every one of these.
func TestTransparencyDumpInTheSharedAndSchemaTiers(t *testing.T) {
	e := newProxyEnv(t)
	addrs := e.proxiesByMode(t)
	session := addrs[proxy.PoolSession]
	plantSecret(t, session, "umbrella")
	plantSecret(t, session, "globex")
	pgDump, pgRestore, psql := clientTool(t, "pg_dump"), clientTool(t, "pg_restore"), clientTool(t, "psql")
	single := normalizeDump(run(t, pgDump, append(tierDumpFlags("public"), e.tenantLoginDSN(t, "umbrella", e.objectName(t, "umbrella")))...))
	dir := t.TempDir()
	for _, sub := range []string{"acme", "initech"} {
		tn, err := e.cat.Show(ctxT(t), sub)
		if err != nil {
			t.Fatal(err)
		}
		load := single
		if tn.Tier == catalog.TierSchema {
			load = strings.ReplaceAll(load, "public.", tn.SchemaName+".")
		} else {
			load = sequenceSet.ReplaceAllString(load, "")
		}
		script := filepath.Join(dir, sub+"-load.sql")
		if err := os.WriteFile(script, []byte(load), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", script, dsn(session, "alice."+sub, tenantPassword))
		want := single
		if tn.Tier == catalog.TierShared {
			want = sequenceSet.ReplaceAllString(want, "")
		}
		flags := tierDumpFlags("public")
		if tn.Tier == catalog.TierSchema {
			flags = tierDumpFlags(tn.SchemaName)
		}
		for _, mode := range poolModes {
			proxied := dsn(addrs[mode], "alice."+sub, tenantPassword)
			if got := asSingleTenant(run(t, pgDump, append(flags, proxied)...), tn.Tier, tn.SchemaName); got != want {
				t.Errorf("%s, %s mode: pg_dump differs from the single-tenant database's\n--- single tenant\n%s\n--- through the proxy\n%s", sub, mode, want, got)
			}
			archive := filepath.Join(dir, sub+"-"+mode+".dump")
			run(t, pgDump, append(flags, "-Fc", "-f", archive, proxied)...)
			// The archive keeps what pg_restore's flags of the same names
			// then leave out or set.
			if got := asSingleTenant(run(t, pgRestore, "--no-owner", "--enable-row-security", "-f", "-", archive), tn.Tier, tn.SchemaName); got != want {
				t.Errorf("%s, %s mode: pg_dump -Fc differs from the single-tenant database's\n--- single tenant\n%s\n--- through the proxy\n%s", sub, mode, want, got)
			}
		}
	}
}

// TestDumpRestoreInTheSharedAndSchemaTiers: a shared- and a schema-tier
// tenant's data-only dump through the proxy (tierDumpFlags) restores with
// pg_restore through the proxy into the tenant itself after its rows were
// deleted (session mode), and clones it into another tenant of its tier
// whose rows were deleted (transaction mode): pg_restore of the archive
// in the shared tier, whose COPY FROM loads into the target's share
// whatever tenant the rows carry; psql of the plain dump in the schema
// tier, with the source's schema name replaced by the target's (README).
// Afterwards each holds the source's rows, and the clone none of its own;
// the clone's next insert takes an id past those the clone brought (in
// the shared tier, before the load moved the target's id counters, it
// took one of them: 23505).
func TestDumpRestoreInTheSharedAndSchemaTiers(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: "hooli", Plan: catalog.PlanStandard, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
		t.Fatal(err)
	}
	addrs := e.proxiesByMode(t)
	pgDump, pgRestore, psql := clientTool(t, "pg_dump"), clientTool(t, "pg_restore"), clientTool(t, "psql")
	dir := t.TempDir()
	for _, tc := range []struct{ source, clone string }{{"acme", "globex"}, {"initech", "hooli"}} {
		tenants := map[string]*catalog.Tenant{}
		for _, sub := range []string{tc.source, tc.clone} {
			plantSecret(t, addrs[proxy.PoolSession], sub)
			tn, err := e.cat.Show(ctx, sub)
			if err != nil {
				t.Fatal(err)
			}
			tenants[sub] = tn
		}
		through := func(mode, sub string) string { return dsn(addrs[mode], "alice."+sub, tenantPassword) }
		flags := func(sub string) []string {
			if tn := tenants[sub]; tn.Tier == catalog.TierSchema {
				return tierDumpFlags(tn.SchemaName)
			}
			return tierDumpFlags("public")
		}
		dataOf := func(sub string) string {
			tn := tenants[sub]
			return asSingleTenant(run(t, pgDump, append(flags(sub), through(proxy.PoolSession, sub))...), tn.Tier, tn.SchemaName)
		}
		emptied := func(mode, sub string) {
			run(t, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "DELETE FROM users", through(mode, sub))
		}
		// More of the source's users than the clone's: their ids pass the
		// clone's own counters.
		run(t, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "INSERT INTO users (username) SELECT 'more-' || g FROM generate_series(1, 3) g", through(proxy.PoolSession, tc.source))
		want := dataOf(tc.source)
		archive := filepath.Join(dir, tc.source+".dump")
		run(t, pgDump, append(flags(tc.source), "-Fc", "-f", archive, through(proxy.PoolSession, tc.source))...)

		emptied(proxy.PoolTransaction, tc.clone)
		if src, dst := tenants[tc.source], tenants[tc.clone]; src.Tier == catalog.TierSchema {
			plain := strings.ReplaceAll(run(t, pgDump, append(flags(tc.source), through(proxy.PoolTransaction, tc.source))...), src.SchemaName, dst.SchemaName)
			script := filepath.Join(dir, tc.clone+".sql")
			if err := os.WriteFile(script, []byte(plain), 0o644); err != nil {
				t.Fatal(err)
			}
			run(t, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", script, through(proxy.PoolTransaction, tc.clone))
		} else {
			run(t, pgRestore, "--no-owner", "--enable-row-security", "--exit-on-error", "-d", through(proxy.PoolTransaction, tc.clone), archive)
		}
		if got := dataOf(tc.clone); got != want {
			t.Errorf("%s's clone %s differs from it\n--- source\n%s\n--- clone\n%s", tc.source, tc.clone, want, got)
		}
		if strings.Contains(run(t, psql, "-X", "-At", "-c", "SELECT string_agg(body, ',') FROM messages", through(proxy.PoolSession, tc.clone)), "secret-of-"+tc.clone) {
			t.Errorf("the clone %s kept its own rows; want only %s's", tc.clone, tc.source)
		}
		run(t, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "INSERT INTO users (username) VALUES ('after-the-clone')", through(proxy.PoolTransaction, tc.clone))

		emptied(proxy.PoolSession, tc.source)
		run(t, pgRestore, "--no-owner", "--enable-row-security", "--exit-on-error", "-d", through(proxy.PoolSession, tc.source), archive)
		if got := dataOf(tc.source); got != want {
			t.Errorf("%s restored differs from its dump\n--- dumped\n%s\n--- restored\n%s", tc.source, want, got)
		}
	}
}

// sizeText matches a size as pg_size_pretty prints it.
var sizeText = regexp.MustCompile(`\d+ (bytes|kB|MB|GB)`)

// TestPsqlSizesInTheSharedAndSchemaTiers: psql's \dt+, \d+ and \l+ work
// for shared- and schema-tier tenants in both pool modes, and show only
// sizes that reveal nothing: a schema-tier tenant's own tables' sizes (as
// pg_table_size measures them directly), no size of another tenant's
// table (\dt+ *.messages lists every schema-tier tenant's), none of a
// shared-tier table (every tenant's rows together) and none of the
// databases tenants share. Before the proxy's stand-ins for the size
// functions, \dt+, \d+ and \l+ failed with 42501 in these tiers.
func TestPsqlSizesInTheSharedAndSchemaTiers(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: "hooli", Plan: catalog.PlanStandard, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
		t.Fatal(err)
	}
	addrs := e.proxiesByMode(t)
	for _, sub := range []string{"acme", "globex", "initech", "hooli", "umbrella"} {
		plantSecret(t, addrs[proxy.PoolSession], sub)
	}
	b, err := e.cat.Backend(ctx, migrations.MainBackend)
	if err != nil {
		t.Fatal(err)
	}
	initech, err := e.cat.Show(ctx, "initech")
	if err != nil {
		t.Fatal(err)
	}
	// The tenant's own table, measured directly as the superuser.
	var own string
	if err := connect(t, e.cluster.DSN(b.SchemaDatabase)).QueryRow(ctx,
		"SELECT pg_size_pretty(pg_table_size($1::regclass))", initech.SchemaName+".messages").Scan(&own); err != nil {
		t.Fatal(err)
	}
	psql := clientTool(t, "psql")
	for _, mode := range poolModes {
		for _, sub := range []string{"acme", "initech"} {
			query := func(meta string) []string {
				out := run(t, psql, "-X", "-A", "-t", "-c", meta, dsn(addrs[mode], "alice."+sub, tenantPassword))
				return strings.Split(strings.TrimSpace(out), "\n")
			}
			// \dt+'s Size is its seventh column.
			rows := query(`\dt+ *.messages`)
			if sub == "initech" && len(rows) < 2 {
				t.Errorf("%s, %s mode: \\dt+ *.messages: %q; want hooli's table too", sub, mode, rows)
			}
			for _, row := range rows {
				f := strings.Split(row, "|")
				if len(f) < 8 {
					t.Errorf("%s, %s mode: \\dt+ row %q; want eight columns", sub, mode, row)
					continue
				}
				want := ""
				if sub == "initech" && f[0] == initech.SchemaName {
					want = own
				}
				if f[6] != want {
					t.Errorf("%s, %s mode: \\dt+ gives %s.messages the size %q; want %q", sub, mode, f[0], f[6], want)
				}
			}
			if out := strings.Join(query(`\d+`), "\n"); (sub == "initech") != sizeText.MatchString(out) {
				t.Errorf("%s, %s mode: \\d+ shows sizes: %v; want them only for a schema-tier tenant's own relations\n%s", sub, mode, sizeText.MatchString(out), out)
			}
			for _, db := range []string{b.SharedDatabase, b.SchemaDatabase} {
				if out := strings.Join(query(`\l+ `+db), "\n"); !strings.Contains(out, db) || sizeText.MatchString(out) {
					t.Errorf("%s, %s mode: \\l+ %s: %q; want the database without its size", sub, mode, db, out)
				}
			}
		}
	}
}
