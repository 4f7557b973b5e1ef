package migrations

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/template"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

//go:embed control/*.sql legacychat/*.sql
var files embed.FS

// Names every backend shares. They are fixed rather than configurable so
// that the proxy, the catalog and an operator reading pg_roles agree on them.
const (
	// ServingRole is the non-superuser login role that carries tenant traffic.
	ServingRole = "tenantproxy_serving"
	// SharedDatabase holds the shared tier's RLS tables.
	SharedDatabase = "tenantproxy_shared"
	// SchemaDatabase holds one schema per schema-tier tenant.
	SchemaDatabase = "tenantproxy_tenants"
	// TenantGUC is the setting the shared tier's RLS policies compare
	// tenant_id with. It is the one name: the policies created here read
	// it, router's setup sets it for a shared-tier tenant, package policy
	// refuses clients' changes to it, and catalog's lifecycle sets it to
	// reach a tenant's rows. It is not configurable: a proxy setting one
	// name while the policies read another would hide every shared row.
	TenantGUC = "app.tenant_id"
)

// Kind says what a migration target is and which set of migrations it gets.
type Kind string

// The four kinds of target. The last three are tenant targets: the proxy
// embeds no migrations for them (its tables there are proxytables.go's);
// they get the app's migrations (app.go) in their tier's form.
const (
	KindControl  Kind = "control"
	KindShared   Kind = "shared"
	KindSchema   Kind = "schema"
	KindDatabase Kind = "database"
)

// Migration is one versioned SQL script, rendered for its kind of target.
// Checksum is the hex SHA-256 of SQL; an applied migration whose checksum
// changed has been edited after the fact, which the runner refuses.
type Migration struct {
	Version  int
	Name     string
	SQL      string
	Checksum string
}

// sets reads the control migrations once; they are embedded, so an error
// is a bug in this package and every caller sees it. Tenant targets get
// no embedded migrations: what they hold is the app's (app.go).
var sets = sync.OnceValues(func() (map[Kind][]Migration, error) {
	control, err := load("control", nil)
	if err != nil {
		return nil, err
	}
	return map[Kind][]Migration{KindControl: control, KindShared: nil, KindSchema: nil, KindDatabase: nil}, nil
})

// For returns the migrations a target of kind k gets, in version order.
func For(k Kind) ([]Migration, error) {
	all, err := sets()
	if err != nil {
		return nil, err
	}
	ms, ok := all[k]
	if !ok {
		return nil, fmt.Errorf("migrations: unknown target kind %q", k)
	}
	return ms, nil
}

// load reads dir's "<version>_<name>.sql" files, rendering them as templates
// when funcs is not nil.
func load(dir string, funcs template.FuncMap) ([]Migration, error) {
	entries, err := fs.ReadDir(files, dir)
	if err != nil {
		return nil, err
	}
	var ms []Migration
	seen := map[int]string{}
	for _, e := range entries {
		base := e.Name()
		num, name, ok := strings.Cut(strings.TrimSuffix(base, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migrations: %s/%s: want <version>_<name>.sql", dir, base)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations: %s: version %d used by %s and %s", dir, v, prev, base)
		}
		seen[v] = base
		raw, err := files.ReadFile(path.Join(dir, base))
		if err != nil {
			return nil, err
		}
		sql := string(raw)
		if funcs != nil {
			t, err := template.New(base).Funcs(funcs).Parse(sql)
			if err != nil {
				return nil, fmt.Errorf("migrations: %s/%s: %w", dir, base, err)
			}
			var b bytes.Buffer
			if err := t.Execute(&b, nil); err != nil {
				return nil, fmt.Errorf("migrations: %s/%s: %w", dir, base, err)
			}
			sql = b.String()
		}
		sum := sha256.Sum256([]byte(sql))
		ms = append(ms, Migration{Version: v, Name: name, SQL: sql, Checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms, nil
}

// tenantFuncs are the template markers of legacychat/*.sql for one tier. Only the
// shared tier has a tenant column and RLS; the schema tier's objects are
// owned by the tenant's role, so only the other two grant to the serving role.
func tenantFuncs(k Kind) template.FuncMap {
	shared := k == KindShared
	return template.FuncMap{
		"tenantColumn": func() string {
			if !shared {
				return ""
			}
			return tenantColumnDef + ","
		},
		"key": func() string {
			if !shared {
				return ""
			}
			return "tenant_id, "
		},
		"isolate": func(table string) string {
			if !shared {
				return ""
			}
			return isolateSQL(ident(table))
		},
		// perTenantIDs moves the shared tier's id columns, filled from
		// sequences every tenant shares (whose gaps counted other tenants'
		// inserts), to ids numbered per tenant (tierddl.AdoptIDs).
		"perTenantIDs": func(tableColumns ...string) string {
			if !shared {
				return ""
			}
			var b strings.Builder
			for _, tc := range tableColumns {
				table, column, _ := strings.Cut(tc, ".")
				b.WriteString(tierddl.AdoptIDs(table, column))
			}
			return b.String()
		},
		"grant": func(table string) string {
			if k == KindSchema {
				return ""
			}
			return fmt.Sprintf("GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s;", ident(table), ident(ServingRole))
		},
	}
}

// tenantGUCValue is the session's tenant in the shared tier, NULL when
// unset or reset to the empty string.
var tenantGUCValue = "NULLIF(current_setting(" + quoteLiteral(TenantGUC) + ", true), '')"

// tenantColumnDef is the shared tier's tenant column, filled from the
// session's tenant.
var tenantColumnDef = "tenant_id text NOT NULL DEFAULT " + tenantGUCValue

// isolateSQL is the shared tier's forced row-level security on table
// (qualified). The policy compares through tenantGUCValue: an unset GUC
// (NULL) or one reset to the empty string matches no row and lets no row in, so
// forgetting to set the tenant fails closed.
func isolateSQL(table string) string {
	return fmt.Sprintf("ALTER TABLE %[1]s ENABLE ROW LEVEL SECURITY;\n"+
		"ALTER TABLE %[1]s FORCE ROW LEVEL SECURITY;\n"+
		"CREATE POLICY tenant_isolation ON %[1]s USING (tenant_id = %[2]s) WITH CHECK (tenant_id = %[2]s);",
		table, tenantGUCValue)
}

func ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings
// on, the default since PostgreSQL 9.1).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
