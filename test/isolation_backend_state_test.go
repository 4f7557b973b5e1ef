package test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// protocols are pgx's ways to send a statement: the simple protocol, and
// the extended one with the statement prepared under a name (which the
// proxy prepares on the server as tp_…).
var protocols = []struct {
	name string
	mode pgx.QueryExecMode
}{
	{"simple", pgx.QueryExecModeSimpleProtocol},
	{"extended", pgx.QueryExecModeCacheStatement},
}

// TestIsolationBackendStateNeverReachesTheNextTenant: per-backend state that
// RESET ALL leaves (README "Per-backend state") does not pass from one
// tenant to the next holder of the same server connection in transaction
// mode. Each pool has one server connection, so the attacker's and the
// victim's transactions run on the same server session, one after the
// other.
func TestIsolationBackendStateNeverReachesTheNextTenant(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx := ctxT(t)
	if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: "wayne", Plan: catalog.PlanStandard, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
		t.Fatalf("create wayne: %v", err)
	}
	for _, p := range isolationPairs[:2] {
		for _, proto := range protocols {
			a := connect(t, dsn(e.addr, "alice."+p.attacker, tenantPassword))
			v := connect(t, dsn(e.addr, "alice."+p.victim, tenantPassword))
			name := string(p.tier) + "/" + proto.name

			t.Run(name+"/random() seed", func(t *testing.T) {
				// The value random() gives right after setseed(0.5).
				var seeded float64
				tx, err := a.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "SELECT setseed(0.5)", proto.mode); err != nil {
					t.Fatal(err)
				}
				if err := tx.QueryRow(ctx, "SELECT random()", proto.mode).Scan(&seeded); err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				for _, seed := range []func() error{
					func() error { _, err := a.Exec(ctx, "SELECT setseed(0.5)", proto.mode); return err },
					// SET LOCAL reverts the setting, not the generator.
					func() error {
						return pgx.BeginFunc(ctx, a, func(tx pgx.Tx) error {
							_, err := tx.Exec(ctx, "SET LOCAL seed = 0.5", proto.mode)
							return err
						})
					},
				} {
					if err := seed(); err != nil {
						t.Fatalf("attacker seeds random(): %v", err)
					}
					var got float64
					if err := v.QueryRow(ctx, "SELECT random()", proto.mode).Scan(&got); err != nil {
						t.Fatal(err)
					}
					if got == seeded {
						t.Errorf("victim's random() is %v, the value after the attacker's setseed(0.5); want a seed nobody chose", got)
					}
				}
			})

			t.Run(name+"/pg_prepared_statements", func(t *testing.T) {
				// The attacker's statement is prepared on the server (the
				// extended protocol, whatever proto the victim uses).
				literal := "literal-of-" + p.attacker
				// An argument, or pgx would send it in the simple protocol.
				if _, err := a.Exec(ctx, "SELECT count(*) FROM messages WHERE body <> '"+literal+"' AND id > $1", 0); err != nil {
					t.Fatal(err)
				}
				var serverName string
				if err := a.QueryRow(ctx, "SELECT name FROM pg_prepared_statements WHERE statement LIKE '%literal' || '-of-"+p.attacker+"%'").Scan(&serverName); err != nil {
					t.Fatalf("the attacker's own statement on its server connection: %v", err)
				}
				var n int
				if err := v.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%literal' || '-of-"+p.attacker+"%' OR name = '"+serverName+"'", proto.mode).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n != 0 {
					t.Errorf("victim lists %d of the attacker's prepared statements in pg_prepared_statements; want 0", n)
				}
				_, err := v.Exec(ctx, "EXECUTE "+serverName, proto.mode)
				if sqlstateOf(err) != "26000" {
					t.Errorf("victim's EXECUTE %s (the attacker's statement): %v; want 26000 (no such statement)", serverName, err)
				}
			})

			t.Run(name+"/lastval", func(t *testing.T) {
				var id int64
				if err := a.QueryRow(ctx, "INSERT INTO users (username) VALUES ($1) RETURNING id", proto.mode, "lastval-"+name).Scan(&id); err != nil {
					t.Fatal(err)
				}
				// As on a fresh connection: not yet defined in this session.
				// Before, the victim got the attacker's id where the
				// sequence was readable to it, or 42501 naming the
				// attacker's sequence where not.
				var got int64
				err := v.QueryRow(ctx, "SELECT lastval()", proto.mode).Scan(&got)
				if sqlstateOf(err) != "55000" {
					t.Errorf("victim's lastval() after the attacker's insert (id %d): %d, %v; want 55000", id, got, err)
				}
			})
		}
	}
}

// TestIsolationDebugPrintPlanOnlyWhereExplainIs: where EXPLAIN is refused,
// the plan trees that debug_print_plan and its siblings send at
// client_min_messages = log never reach the client, in either pool mode
// and protocol, with SET or SET LOCAL; where EXPLAIN is allowed (schema
// tier) they do, which shows the notices are watched.
func TestIsolationDebugPrintPlanOnlyWhereExplainIs(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	addrs := map[string]string{}
	for _, mode := range poolModes {
		_, addrs[mode] = e.startProxy(t, proxy.Config{PoolMode: mode})
	}
	for _, mode := range poolModes {
		for _, tenant := range []string{"acme", "initech"} {
			allowed := tenant == "initech"
			for _, setting := range []string{"debug_print_plan", "debug_print_parse", "debug_print_rewritten"} {
				scripts := [][]string{{"BEGIN", "SET LOCAL client_min_messages = log", "SET LOCAL " + setting + " = on", "SELECT count(*) FROM messages", "COMMIT"}}
				if mode == proxy.PoolSession {
					scripts = append(scripts, []string{"SET client_min_messages = log", "SET " + setting + " = on", "SELECT count(*) FROM messages", "RESET client_min_messages"})
				}
				for _, script := range scripts {
					for _, proto := range []string{"simple", "extended"} {
						t.Run(mode+"/"+tenant+"/"+setting+"/"+script[0]+"/"+proto, func(t *testing.T) {
							var notices []string
							cfg, err := pgconn.ParseConfig(dsn(addrs[mode], "alice."+tenant, tenantPassword))
							if err != nil {
								t.Fatal(err)
							}
							cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
								notices = append(notices, n.Severity+": "+n.Message+" "+n.Detail)
							}
							conn, err := pgconn.ConnectConfig(ctx, cfg)
							if err != nil {
								t.Fatal(err)
							}
							defer conn.Close(context.Background())
							var setErr error
							if proto == "simple" {
								_, setErr = conn.Exec(ctx, strings.Join(script, "; ")).ReadAll()
							} else {
								for _, sql := range script {
									err := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read().Err
									if strings.Contains(sql, setting) {
										setErr = err
									}
								}
							}
							plans := 0
							for _, n := range notices {
								if strings.Contains(n, "PLANNEDSTMT") || strings.Contains(n, "{QUERY") {
									plans++
								}
							}
							if allowed {
								if setErr != nil || plans == 0 {
									t.Errorf("%s where EXPLAIN is allowed: %v, %d plan notices of %d; want it to work", setting, setErr, plans, len(notices))
								}
								return
							}
							if sqlstateOf(setErr) != "42501" {
								t.Errorf("%s where EXPLAIN is refused: %v; want 42501", setting, setErr)
							}
							if plans > 0 {
								t.Errorf("%d notices with a plan or query tree reached the client where EXPLAIN is refused, e.g. %.120q", plans, notices[0])
							}
						})
					}
				}
			}
		}
	}
}
