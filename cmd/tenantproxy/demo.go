package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/tenantproxy/tenantproxy/metering"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/admin"
	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/catalog/secrets"
	"github.com/tenantproxy/tenantproxy/chatapi"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// demoPassword is every demo user's password. The demo's cluster lives in
// a temporary directory, listens on 127.0.0.1 only and is deleted on exit.
const demoPassword = "demo-password"

// demoTenants cover every tier, with two shared-tier tenants so that row
// level security has something to keep apart.
var demoTenants = []struct {
	sub, name, plan string
}{
	{"acme", "Acme Corp", catalog.PlanFree},
	{"hooli", "Hooli", catalog.PlanTrial},
	{"globex", "Globex", catalog.PlanStandard},
	{"initech", "Initech", catalog.PlanEnterprise},
}

func newDemoCommand(g *globals) *cobra.Command {
	f := &serveFlags{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start a throwaway PostgreSQL, demo tenants in all three tiers and the proxy; print what to try",
		Long: "Starts PostgreSQL from local binaries in a temporary directory, migrates a catalog with the chat\n" +
			"app's migrations (as migrate up --dir chatapi/migrations), provisions demo tenants in the shared,\n" +
			"schema and database tiers with sample chat data, serves the proxy and prints psql and curl lines\n" +
			"to try. Ctrl-C stops everything and removes every file.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo(cmd.Context(), g, f, cmd.OutOrStdout())
		},
	}
	f.register(cmd.Flags(), proxy.AuthSCRAM)
	return cmd
}

func demo(ctx context.Context, g *globals, f *serveFlags, out io.Writer) (err error) {
	started := time.Now()
	fmt.Fprintln(out, "starting a throwaway PostgreSQL …")
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return fmt.Errorf("demo needs PostgreSQL server binaries (apt-get install -y postgresql, or set PG_BIN): %w", err)
	}
	defer func() {
		if serr := cluster.Stop(); serr != nil {
			err = errors.Join(err, serr)
		}
		fmt.Fprintln(out, "demo stopped; its PostgreSQL and files are gone")
	}()

	if err := cluster.Exec(ctx, "postgres", "CREATE DATABASE tenantproxy"); err != nil {
		return err
	}
	catalogDSN := cluster.DSN("tenantproxy")
	// A throwaway key, gone with the demo, so newcomers see the catalog's
	// secrets sealed as a production install should have them.
	keyLine := "demo=" + secrets.Generate()
	keys, err := (*secrets.Keyring)(nil).Parse("demo key", keyLine)
	if err != nil {
		return err
	}
	// The chat is an app like any adopter's: its migrations are stored in
	// the catalog and applied as `migrate up --dir chatapi/migrations`
	// does, before the tenants are created, which so get its tables.
	if _, err := chatapi.MigrateUp(ctx, catalogDSN, migrations.Options{Logger: g.logger, Secrets: keys}); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	fmt.Fprintf(out, "catalog migrated; the chat app's schema stored in it (migrate up --dir %s) …\n", chatapi.SchemaDir)
	fmt.Fprintln(out, "catalog secrets sealed with a throwaway AES-256-GCM key (README: Security) …")
	cat, err := catalog.Open(ctx, catalogDSN, catalog.Options{Logger: g.logger, Secrets: keys})
	if err != nil {
		return err
	}
	defer cat.Close()
	for _, t := range demoTenants {
		if _, err := cat.Create(ctx, catalog.CreateRequest{
			Subdomain: t.sub, Name: t.name, Plan: t.plan, AdminUser: "alice", AdminPassword: demoPassword,
		}); err != nil {
			return fmt.Errorf("provision %s: %w", t.sub, err)
		}
	}

	l, err := listenOrAnyPort(f.listen[0])
	if err != nil {
		return err
	}
	f.adminListen = freeAddrOr(f.adminListen)
	if f.database == "" {
		// The psql lines the demo prints name the chat app's database.
		f.database = "chat"
	}
	srv, adm, mgr, err := startProxy(g, f, cat, newRegistry(), consoleHooks{})
	if err != nil {
		l.Close()
		return err
	}
	defer mgr.Close()
	// `tenantproxy usage` against the demo's catalog shows what was used.
	defer metering.New(srv.Usage, cat, "demo", g.logger).Start(10 * time.Second)(5 * time.Second)
	// `tenant show` gives each tenant's storage against its quota, as serve
	// measures it (every minute by default; more often here to be seen).
	defer metering.StartStorage(cat, 15*time.Second, g.logger)()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	addr := l.Addr().(*net.TCPAddr)
	if err := seedChat(ctx, addr); err != nil {
		stopProxy(g, f, srv, adm, served)
		return fmt.Errorf("sample data: %w", err)
	}
	chat, chatCfg, err := startDemoChat(g, addr, cat)
	if err != nil {
		stopProxy(g, f, srv, adm, served)
		return fmt.Errorf("chat API: %w", err)
	}
	defer chat.stop()
	printDemo(out, cluster, demoCatalog{catalogDSN, keyLine}, addr, adm, chat, chatCfg, time.Since(started))
	g.logger.Debug("demo ready", zap.Stringer("addr", addr))
	return runProxy(ctx, g, f, srv, adm, served, nil)
}

// listenOrAnyPort listens on addr, or on another free port of its host when
// that one is taken (another demo, a local PgBouncer), so the demo starts.
func listenOrAnyPort(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		return l, nil
	}
	host, _, splitErr := net.SplitHostPort(addr)
	if splitErr != nil {
		return nil, err
	}
	return net.Listen("tcp", net.JoinHostPort(host, "0"))
}

// freeAddrOr keeps addr when it can be bound, else picks a free port on its
// host; admin.Start binds it right after.
func freeAddrOr(addr string) string {
	if addr == "" {
		return ""
	}
	l, err := listenOrAnyPort(addr)
	if err != nil {
		return addr
	}
	defer l.Close()
	return l.Addr().String()
}

// seedChat writes sample chat data through the proxy, as each tenant, with
// SQL that names no tenant: the proxy puts it where it belongs.
func seedChat(ctx context.Context, addr *net.TCPAddr) error {
	for _, t := range demoTenants {
		conn, err := pgx.Connect(ctx, demoDSN(addr, t.sub))
		if err != nil {
			return fmt.Errorf("%s: %w", t.sub, err)
		}
		_, err = conn.Exec(ctx, `
			WITH u AS (
				INSERT INTO users (username, display_name) VALUES ('alice', 'Alice'), ('bob', 'Bob') RETURNING id, username
			), c AS (
				INSERT INTO channels (name, topic, created_by)
				SELECT 'general', 'Company-wide chat', id FROM u WHERE username = 'alice' RETURNING id
			)
			INSERT INTO messages (channel_id, author_id, body)
			SELECT c.id, u.id, format('Hello from %s at %s!', u.username, $1::text)
			FROM c, u`, t.name)
		conn.Close(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", t.sub, err)
		}
	}
	return nil
}

func demoDSN(addr *net.TCPAddr, tenant string) string {
	return fmt.Sprintf("postgres://alice.%s:%s@%s/chat?sslmode=disable", tenant, demoPassword, addr)
}

// demoCatalog is what the CLI needs to work on the demo's catalog.
type demoCatalog struct{ dsn, key string }

func printDemo(out io.Writer, cluster *pgcluster.Cluster, cat demoCatalog, addr *net.TCPAddr, adm *admin.Server, chat *chatServer, chatCfg *chatFlags, took time.Duration) {
	var b strings.Builder
	fmt.Fprintf(&b, "\ntenantproxy demo is ready (%s)\n\n", took.Round(time.Millisecond))
	fmt.Fprintf(&b, "  proxy       %s  (SCRAM-SHA-256; every demo user is alice, password %s)\n", addr, demoPassword)
	fmt.Fprintf(&b, "  PostgreSQL  %s in %s\n", cluster.Addr(), cluster.Dir)
	if adm != nil {
		fmt.Fprintf(&b, "  metrics     http://%s/metrics\n", adm.Addr())
	}
	b.WriteString("\nTenants (same SQL everywhere, each sees only its own rows):\n")
	for _, t := range demoTenants {
		fmt.Fprintf(&b, "  %-8s plan %-10s  PGPASSWORD=%s psql \"host=%s port=%d user=alice.%s dbname=chat sslmode=disable\"\n",
			t.sub, t.plan, demoPassword, addr.IP, addr.Port, t.sub)
	}
	fmt.Fprintf(&b, "\nTry:\n")
	fmt.Fprintf(&b, "  PGPASSWORD=%s psql \"host=%s port=%d user=alice.acme dbname=chat sslmode=disable\" -c 'SELECT * FROM messages'\n", demoPassword, addr.IP, addr.Port)
	fmt.Fprintf(&b, "  PGPASSWORD=%s psql \"host=%s port=%d user=alice dbname=chat sslmode=disable options=-ctenant=globex\" -c '\\dt'\n", demoPassword, addr.IP, addr.Port)
	fmt.Fprintf(&b, "  PGPASSWORD=%s pg_dump -Fc \"host=%s port=%d user=alice.initech dbname=chat sslmode=disable\" | pg_restore -l   (a tenant's own backup)\n", demoPassword, addr.IP, addr.Port)
	if adm != nil {
		fmt.Fprintf(&b, "  curl -s http://%s/metrics | grep ^tenantproxy_\n", adm.Addr())
	}
	writeDemoChat(&b, chat, chatCfg)
	b.WriteString("\nEvery CLI command works on this demo's catalog (its secrets key included), e.g.:\n")
	fmt.Fprintf(&b, "  export TENANTPROXY_CATALOG_DSN='%s' TENANTPROXY_SECRETS_KEY='%s'\n", cat.dsn, cat.key)
	b.WriteString("  go run ./cmd/tenantproxy tenant list\n  go run ./cmd/tenantproxy migrate status\n")
	fmt.Fprintf(&b, "  go run ./cmd/tenantproxy migrate up --dir %s   (what the demo ran: the chat is an app like yours)\n", chatapi.SchemaDir)
	b.WriteString("  go run ./cmd/tenantproxy tenant update acme --limit transactions_per_second=50 --limit server_time_per_second=100ms\n  go run ./cmd/tenantproxy usage    (flushed every 10 s)\n")
	b.WriteString("\nCtrl-C stops the demo and removes everything.\n")
	io.WriteString(out, b.String())
}
