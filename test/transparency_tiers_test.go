package test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
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
				fields := strings.Split(r, "\t")
				rows.WriteString(strings.Join(slices.Delete(fields, i, i+1), "\t"))
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
