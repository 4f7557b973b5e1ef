package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/test"
)

// TestUsageCountsEveryTransactionAcrossARestart runs serve twice (in
// transaction mode, then in session mode), stopping it as SIGTERM does
// while its clients are still connected, with a flush interval longer
// than the test so that only the flush after draining stores anything;
// the usage command and the admin API then report exactly the
// transactions and statements the clients ran, and server time that
// counts a statement's time but not a transaction's idle time.
func TestUsageCountsEveryTransactionAcrossARestart(t *testing.T) {
	dsn := pgtest.NewDatabase(t, pgtest.Shared(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-user", "alice", "--admin-password", "correct-horse")
	mustCLI(t, "tenant", "create", "globex", "--plan", "free", "--admin-user", "alice", "--admin-password", "correct-horse")

	ran, statements := 0, 0
	for i, mode := range []string{"transaction", "session"} {
		listen, adminAddr := test.FreeAddr(t), test.FreeAddr(t)
		config := filepath.Join(t.TempDir(), "tenantproxy.yaml")
		// No storage measuring: its hourly rows would list globex, whose
		// absence shows that a tenant with no traffic has no row.
		if err := os.WriteFile(config, []byte("listen: "+listen+"\nadmin-listen: "+adminAddr+"\npool-mode: "+mode+
			"\nusage-flush-interval: 1h\nstorage-interval: 0\ndrain-timeout: 2s\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, []string{"serve", "--config", config, "--log-level", "warn"}, io.Discard, io.Discard)
		}()
		conn := waitForProxy(t, "postgres://alice.acme:correct-horse@"+listen+"/chat?sslmode=disable", done)
		n := 25 + 10*i
		for j := range n {
			if j%5 == 0 {
				// A transaction block of three statements counts once.
				if _, err := conn.Exec(ctx, "BEGIN; SELECT 1; COMMIT"); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
		}
		ran, statements = ran+n, statements+n
		if i == 0 {
			// 200 ms of server time, then a second idle in the transaction.
			for _, sql := range []string{"BEGIN", "SELECT pg_sleep(0.2)", "", "COMMIT"} {
				if sql == "" {
					time.Sleep(time.Second)
				} else if _, err := conn.Exec(ctx, sql); err != nil {
					t.Fatal(err)
				}
			}
			ran, statements = ran+1, statements+3
		}
		if resp, err := http.Get("http://" + adminAddr + "/usage?tenant=acme"); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /usage: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		cancel() // as SIGTERM: drain, then the last flush
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("serve stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("serve did not stop")
		}
		conn.Close(context.Background())
	}

	var recs []catalog.UsageRecord
	if err := json.Unmarshal([]byte(mustCLI(t, "usage", "acme", "-o", "json")), &recs); err != nil {
		t.Fatal(err)
	}
	var xacts, stmts, in, out int64
	var serverMS float64
	for _, r := range recs {
		if r.Tenant != "acme" {
			t.Fatalf("usage acme listed %s", r.Tenant)
		}
		xacts, stmts, in, out = xacts+r.Transactions, stmts+r.Statements, in+r.BytesIn, out+r.BytesOut
		serverMS += r.ServerTimeMS
	}
	if xacts != int64(ran) || stmts != int64(statements) || in == 0 || out == 0 {
		t.Fatalf("usage across a restart: %d transactions, %d statements (Query messages), %d bytes in, %d out; want %d and %d, bytes both ways",
			xacts, stmts, in, out, ran, statements)
	}
	if serverMS < 200 || serverMS >= 1000 {
		t.Fatalf("usage across a restart: %.1f ms of server time; want the 200 ms statement's and the others', not the second idle in its transaction", serverMS)
	}
	if csv := mustCLI(t, "usage", "-o", "csv"); !strings.HasPrefix(csv, "tenant,hour,transactions") || strings.Contains(csv, "globex") {
		t.Fatalf("usage -o csv:\n%s", csv)
	}
}

// waitForProxy connects to clientDSN until serve (which reports on done)
// accepts.
func waitForProxy(t *testing.T, clientDSN string, done <-chan error) *pgx.Conn {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(context.Background(), clientDSN)
		if err == nil {
			return conn
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve never accepted a client: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
