package test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// seed gives a tenant a user, a channel and n messages that name the
// tenant, through the proxy.
func seed(t *testing.T, conn *pgx.Conn, sub string, n int) {
	t.Helper()
	ctx := ctxT(t)
	var uid, cid int64
	if err := conn.QueryRow(ctx, "INSERT INTO users (username) VALUES ($1) RETURNING id", "u-"+sub).Scan(&uid); err != nil {
		t.Fatalf("%s: insert user: %v", sub, err)
	}
	if err := conn.QueryRow(ctx, "INSERT INTO channels (name, created_by) VALUES ('general', $1) RETURNING id", uid).Scan(&cid); err != nil {
		t.Fatalf("%s: insert channel: %v", sub, err)
	}
	for i := range n {
		if _, err := conn.Exec(ctx, "INSERT INTO messages (channel_id, author_id, body) VALUES ($1, $2, $3)", cid, uid, fmt.Sprintf("%s message %d", sub, i)); err != nil {
			t.Fatalf("%s: insert message: %v", sub, err)
		}
	}
}

// TestClientsThroughProxy drives every tier with pgx, psql and pgbench.
func TestClientsThroughProxy(t *testing.T) {
	e := newProxyEnv(t)
	e.unthrottled(t, "acme", "globex", "initech")
	_, addr := e.startProxy(t, proxy.Config{})
	for i, tt := range tierTenants {
		seed(t, connect(t, dsn(addr, "alice."+tt.sub, tenantPassword)), tt.sub, 3+i)
	}

	for i, tt := range tierTenants {
		t.Run(string(tt.tier)+"/"+tt.sub, func(t *testing.T) {
			ctx := ctxT(t)
			conn := connect(t, dsn(addr, "alice."+tt.sub, tenantPassword))

			// Only the tenant's own rows, whatever the tier.
			rows, err := conn.Query(ctx, "SELECT body FROM messages ORDER BY id")
			if err != nil {
				t.Fatal(err)
			}
			bodies, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			if len(bodies) != 3+i {
				t.Fatalf("got %d messages %q; want the tenant's %d", len(bodies), bodies, 3+i)
			}
			for _, b := range bodies {
				if !strings.HasPrefix(b, tt.sub+" ") {
					t.Fatalf("tenant %s sees another tenant's message %q", tt.sub, b)
				}
			}

			// Prepared statement, extended protocol.
			if _, err := conn.Prepare(ctx, "count_like", "SELECT count(*) FROM messages WHERE body LIKE $1"); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := conn.QueryRow(ctx, "count_like", tt.sub+"%").Scan(&n); err != nil || n != 3+i {
				t.Fatalf("prepared count = %d, %v; want %d", n, err, 3+i)
			}

			// COPY in and out.
			var uid, cid int64
			if err := conn.QueryRow(ctx, "SELECT author_id, channel_id FROM messages LIMIT 1").Scan(&uid, &cid); err != nil {
				t.Fatal(err)
			}
			copied, err := conn.CopyFrom(ctx, pgx.Identifier{"messages"}, []string{"channel_id", "author_id", "body"},
				pgx.CopyFromSlice(100, func(j int) ([]any, error) { return []any{cid, uid, fmt.Sprintf("%s copied %d", tt.sub, j)}, nil }))
			// In the shared tier too, where PostgreSQL has no COPY FROM
			// under RLS and the proxy loads the rows (copyshared.go).
			want := 103 + i
			if err != nil || copied != 100 {
				t.Fatalf("COPY FROM = %d, %v", copied, err)
			}
			var out bytes.Buffer
			tag, err := conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT body FROM messages ORDER BY id) TO STDOUT")
			if err != nil || tag.RowsAffected() != int64(want) {
				t.Fatalf("COPY TO = %v, %v; want %d rows", tag, err, want)
			}
			if strings.Count(out.String(), tt.sub+" ") != want {
				t.Fatalf("COPY TO returned other tenants' rows")
			}

			// A large result streams through.
			var total int64
			if err := conn.QueryRow(ctx, "SELECT sum(length(s)) FROM (SELECT repeat('x', 1000) || g AS s FROM generate_series(1, 20000) g) q").Scan(&total); err != nil {
				t.Fatal(err)
			}
			rows, err = conn.Query(ctx, "SELECT repeat('y', 1000) || g FROM generate_series(1, 20000) g")
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for rows.Next() {
				var s string
				if err := rows.Scan(&s); err != nil {
					t.Fatal(err)
				}
				got++
			}
			if rows.Err() != nil || got != 20000 {
				t.Fatalf("large result: %d rows, %v", got, rows.Err())
			}

			// An error in the middle of a result, and the session goes on.
			_, err = conn.Exec(ctx, "SELECT 1 / (g - 5000) FROM generate_series(1, 10000) g")
			if sqlstateOf(err) != "22012" {
				t.Fatalf("division by zero mid-stream: %v; want 22012", err)
			}
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
				t.Fatalf("after an error: %v", err)
			}

			// LISTEN/NOTIFY: the policy decides per tenant (channel names
			// are shared by every session of a database); when it allows
			// them, notifications must come through.
			listener := connect(t, dsn(addr, "alice."+tt.sub, tenantPassword))
			if _, err := listener.Exec(ctx, "LISTEN chat"); sqlstateOf(err) == "42501" {
				t.Logf("the policy refuses LISTEN for %s: %v", tt.sub, err)
			} else if err != nil {
				t.Fatal(err)
			} else {
				if _, err := conn.Exec(ctx, fmt.Sprintf("NOTIFY chat, 'hello %s'", tt.sub)); err != nil {
					t.Fatal(err)
				}
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				note, err := listener.WaitForNotification(wctx)
				if err != nil || note.Payload != "hello "+tt.sub {
					t.Fatalf("notification = %+v, %v", note, err)
				}
			}

			// Context cancel becomes a CancelRequest with the proxy's key,
			// which the proxy forwards to the right server: the server
			// reports 57014 and the session stays usable.
			cfg, err := pgx.ParseConfig(dsn(addr, "alice."+tt.sub, tenantPassword))
			if err != nil {
				t.Fatal(err)
			}
			cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
				return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 20 * time.Second}
			}
			cconn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer cconn.Close(ctx)
			cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer ccancel()
			start := time.Now()
			_, err = cconn.Exec(cctx, "SELECT pg_sleep(30)")
			if sqlstateOf(err) != "57014" || time.Since(start) > 10*time.Second {
				t.Fatalf("pg_sleep under a cancelled context: %v after %s; want 57014 from the server", err, time.Since(start))
			}
			if err := cconn.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
				t.Fatalf("after cancel: %v", err)
			}
		})
	}

	psql := clientTool(t, "psql")
	for _, tt := range tierTenants {
		t.Run("psql/"+tt.sub, func(t *testing.T) {
			url := dsn(addr, "alice."+tt.sub, tenantPassword)
			out := run(t, psql, url, "-X", "-A", "-t", "-c", `\dt`)
			if !strings.Contains(out, "messages") || !strings.Contains(out, "channels") {
				t.Fatalf(`\dt lists %q; want the chat tables`, out)
			}
			out = run(t, psql, url, "-X", "-A", "-t", "-c", "SELECT DISTINCT split_part(body, ' ', 1) FROM messages")
			if strings.TrimSpace(out) != tt.sub {
				t.Fatalf("messages of tenants %q; want only %s", out, tt.sub)
			}
			file := filepath.Join(t.TempDir(), "messages.csv")
			run(t, psql, url, "-X", "-c", fmt.Sprintf(`\copy (SELECT channel_id, author_id, body FROM messages) TO '%s' CSV`, file))
			before := strings.TrimSpace(run(t, psql, url, "-X", "-A", "-t", "-c", "SELECT count(*) FROM messages"))
			run(t, psql, url, "-X", "-c", fmt.Sprintf(`\copy messages (channel_id, author_id, body) FROM '%s' CSV`, file))
			after := strings.TrimSpace(run(t, psql, url, "-X", "-A", "-t", "-c", "SELECT count(*) FROM messages"))
			var b, a int
			fmt.Sscan(before, &b)
			fmt.Sscan(after, &a)
			if b == 0 || a != 2*b {
				t.Fatalf(`\copy round trip: %s rows before, %s after; want double`, before, after)
			}
		})
	}

	t.Run("psql Ctrl-C cancels on the server", func(t *testing.T) {
		var out bytes.Buffer
		cmd := exec.Command(psql, dsn(addr, "alice.initech", tenantPassword), "-X", "-c", "SELECT pg_sleep(30)")
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		start := time.Now()
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if !strings.Contains(out.String(), "canceling statement due to user request") || time.Since(start) > 10*time.Second {
			t.Fatalf("psql after SIGINT (%s): %s", time.Since(start), out.String())
		}
	})

	pgbench := clientTool(t, "pgbench")
	script := filepath.Join(t.TempDir(), "chat.sql")
	if err := os.WriteFile(script, []byte("\\set n random(1, 100)\nSELECT count(*) FROM messages WHERE id > :n;\nBEGIN;\nSELECT body FROM messages ORDER BY id DESC LIMIT 5;\nCOMMIT;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tierTenants {
		for _, mode := range []string{"simple", "extended"} {
			t.Run("pgbench/"+mode+"/"+tt.sub, func(t *testing.T) {
				out := run(t, pgbench, "-n", "-M", mode, "-c", "4", "-t", "50", "-f", script, dsn(addr, "alice."+tt.sub, tenantPassword))
				if !strings.Contains(out, "number of transactions actually processed: 200/200") {
					t.Fatalf("pgbench -M %s: %s", mode, out)
				}
			})
		}
	}
}

// clientTool finds a PostgreSQL client binary next to the server's.
func clientTool(t testing.TB, name string) string {
	t.Helper()
	path, err := pgcluster.Tool(name)
	if err != nil {
		if p, lerr := exec.LookPath(name); lerr == nil {
			return p
		}
		t.Fatalf("%s: %v", name, err)
	}
	return path
}

// run runs a client tool and returns its output; a failure fails t.
func run(t testing.TB, bin string, args ...string) string {
	t.Helper()
	out, err := runErr(bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), redact(strings.Join(args, " ")), err, out)
	}
	return out
}

// runErr runs a client tool and returns its stdout and stderr.
func runErr(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
