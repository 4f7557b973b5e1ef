package test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestCreateExtensionIfNotExistsOfAnAllowedExtension: in every tier and
// pool mode, CREATE EXTENSION IF NOT EXISTS plpgsql (installed in every
// database) succeeds with PostgreSQL's "already exists, skipping"
// notice, as it does directly. An allowed extension that is not installed
// (citext) is installed by PostgreSQL only where the role may create it:
// in the database tier, the tenant's own database; the shared and schema
// tiers' serving role gets 42501 from PostgreSQL. One not allowed stays
// refused by the proxy (42501) everywhere.
func TestCreateExtensionIfNotExistsOfAnAllowedExtension(t *testing.T) {
	e := newProxyEnv(t)
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		_, addr := e.startProxy(t, proxy.Config{PoolMode: mode, Extensions: []string{"plpgsql", "citext"}})
		for _, tt := range tierTenants {
			var notices []string
			cfg, err := pgx.ParseConfig(dsn(addr, "alice."+tt.sub, tenantPassword))
			if err != nil {
				t.Fatal(err)
			}
			cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
			c, err := pgx.ConnectConfig(ctxT(t), cfg)
			if err != nil {
				t.Fatalf("%s: %v", tt.sub, err)
			}
			defer c.Close(context.Background())
			if _, err := c.Exec(ctxT(t), "CREATE EXTENSION IF NOT EXISTS plpgsql"); err != nil {
				t.Errorf("%s, %s mode: CREATE EXTENSION IF NOT EXISTS plpgsql: %v; want a no-op", tt.sub, mode, err)
			} else if want := `extension "plpgsql" already exists, skipping`; len(notices) != 1 || notices[0] != want {
				t.Errorf("%s, %s mode: notices %q; want %q", tt.sub, mode, notices, want)
			}
			_, err = c.Exec(ctxT(t), "CREATE EXTENSION IF NOT EXISTS citext")
			var pgErr *pgconn.PgError
			if tt.tier == catalog.TierDatabase {
				if err != nil {
					t.Errorf("%s, %s mode: CREATE EXTENSION IF NOT EXISTS citext in the tenant's own database: %v", tt.sub, mode, err)
				}
			} else if !errors.As(err, &pgErr) || pgErr.Code != "42501" || pgErr.Message != `permission denied to create extension "citext"` {
				t.Errorf("%s, %s mode: CREATE EXTENSION IF NOT EXISTS citext: %v; want PostgreSQL's 42501 for the serving role", tt.sub, mode, err)
			}
			if _, err := c.Exec(ctxT(t), "CREATE EXTENSION IF NOT EXISTS pgcrypto"); sqlstateOf(err) != "42501" {
				t.Errorf("%s, %s mode: CREATE EXTENSION IF NOT EXISTS pgcrypto (not allowed): %v; want 42501", tt.sub, mode, err)
			}
		}
	}
}

// TestSelfTerminateInTheDatabaseTier: a database-tier session ending
// itself with pg_terminate_backend(pg_backend_pid()) gets PostgreSQL's
// FATAL 57P01 and its connection closed, as directly, and the tenant's
// next session works: in session mode from the server (the tenant's login
// role is the only one granted the function in its database, and signals
// only its own sessions), in transaction mode from the proxy, which never
// sends it to the pool's connection. Every other tier refuses it with
// 42501, as any other pg_terminate_backend.
func TestSelfTerminateInTheDatabaseTier(t *testing.T) {
	e := newProxyEnv(t)
	const q = "SELECT pg_terminate_backend(pg_backend_pid())"
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		_, addr := e.startProxy(t, proxy.Config{PoolMode: mode})
		for _, tt := range tierTenants {
			c := connect(t, dsn(addr, "alice."+tt.sub, tenantPassword))
			_, err := c.Exec(ctxT(t), q)
			if tt.tier != catalog.TierDatabase {
				if sqlstateOf(err) != "42501" {
					t.Errorf("%s, %s mode: %s: %v; want 42501", tt.sub, mode, q, err)
				}
				continue
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" {
				t.Fatalf("%s, %s mode: %s: %v; want FATAL 57P01", tt.sub, mode, q, err)
			}
			if _, err := c.Exec(ctxT(t), "SELECT 1"); err == nil {
				t.Errorf("%s, %s mode: the session still answers after ending itself", tt.sub, mode)
			}
			var n int
			if err := connect(t, dsn(addr, "alice."+tt.sub, tenantPassword)).QueryRow(ctxT(t), "SELECT 1").Scan(&n); err != nil {
				t.Errorf("%s, %s mode: a new session after the self-termination: %v", tt.sub, mode, err)
			}
		}
	}
}
