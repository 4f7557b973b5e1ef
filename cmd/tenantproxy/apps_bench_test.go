package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// BenchmarkAppMigrationsThousandSchemaTenants times `migrate up --dir`
// of the todos app (two versions) over 1,000 schema-tier tenants, whose
// schemas, roles and catalog rows are made directly (as provisioning
// makes them) and brought up to the proxy's own migrations first, so that
// the figure is the app's alone. One run per benchmark invocation:
//
//	go test ./cmd/tenantproxy -run '^$' -bench AppMigrationsThousand -benchtime 1x
func BenchmarkAppMigrationsThousandSchemaTenants(b *testing.B) {
	const tenants = 1000
	cluster := pgtest.StartT(b)
	dsn := pgtest.NewDatabase(b, cluster)
	ctx := context.Background()
	cliB(b, "migrate", "up", "--catalog-dsn", dsn)
	seedSchemaTenants(b, ctx, dsn, cluster.DSN(migrations.SchemaDatabase), tenants)
	cliB(b, "migrate", "up", "--catalog-dsn", dsn)
	for b.Loop() {
		start := time.Now()
		out := cliB(b, "migrate", "up", "--dir", todosDir, "--catalog-dsn", dsn)
		took := time.Since(start)
		b.ReportMetric(took.Seconds(), "s/1000-tenants")
		b.Logf("migrate up --dir over %d schema-tier tenants: %s (%s)", tenants, took.Round(time.Millisecond), strings.TrimSpace(out))
		b.StopTimer()
		cliB(b, "migrate", "down", "--to", "0", "--catalog-dsn", dsn)
		b.StartTimer()
	}
}

func cliB(b *testing.B, args ...string) string {
	b.Helper()
	var out, errOut bytes.Buffer
	if err := run(context.Background(), append(args, "--log-level", "warn"), &out, &errOut); err != nil {
		b.Fatalf("tenantproxy %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String()
}

// seedSchemaTenants registers n schema-tier tenants as provisioning
// does (role, schema, the serving role's membership, the catalog row),
// without their migrations.
func seedSchemaTenants(b *testing.B, ctx context.Context, controlDSN, schemaDSN string, n int) {
	b.Helper()
	control, err := pgx.Connect(ctx, controlDSN)
	if err != nil {
		b.Fatal(err)
	}
	defer control.Close(ctx)
	schemas, err := pgx.Connect(ctx, schemaDSN)
	if err != nil {
		b.Fatal(err)
	}
	defer schemas.Close(ctx)
	var ddl strings.Builder
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%04d", i)
		fmt.Fprintf(&ddl, "CREATE ROLE %[1]s NOLOGIN; CREATE SCHEMA %[1]s AUTHORIZATION %[1]s; GRANT %[1]s TO %[2]s;\n",
			pgx.Identifier{"tenant_bench_" + fmt.Sprint(i)}.Sanitize(), migrations.ServingRole)
	}
	if _, err := schemas.Exec(ctx, ddl.String()); err != nil {
		b.Fatal(err)
	}
	if _, err := control.Exec(ctx, `INSERT INTO tenants (id, name, subdomain, isolation_level, plan, status,
		data_region, backend, database, schema_name, max_users, max_storage_gb)
		SELECT id, id, id, 'schema', 'standard', 'active', 'default', 'main', $2, 'tenant_bench_' || (ord - 1), 50, 50
		FROM unnest($1::text[]) WITH ORDINALITY AS u(id, ord)`, ids, migrations.SchemaDatabase); err != nil {
		b.Fatal(err)
	}
}
