package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
)

// TestDemoServesEveryTierAndCleansUp runs `tenantproxy demo` as a newcomer
// would, follows a printed psql line with a real client and the chat API's
// curl lines over HTTP, and checks that Ctrl-C leaves no cluster behind.
func TestDemoServesEveryTierAndCleansUp(t *testing.T) {
	if _, err := pgcluster.BinDir(); err != nil && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--drain-timeout", "2s", "--log-level", "warn"}, pw, io.Discard)
		pw.Close()
	}()

	var printed strings.Builder
	lines := bufio.NewScanner(pr)
	ready := make(chan struct{})
	go func() {
		for lines.Scan() {
			printed.WriteString(lines.Text() + "\n")
			if strings.HasPrefix(lines.Text(), "Ctrl-C stops") {
				close(ready)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("demo exited before it was ready: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("demo not ready after 90 s")
	}
	out := printed.String()

	// The printed line for the database tier, turned into a pgx DSN.
	m := regexp.MustCompile(`psql "host=(\S+) port=(\d+) user=alice\.initech dbname=chat sslmode=disable"`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no psql line for initech in:\n%s", out)
	}
	conn, err := pgx.Connect(ctx, "postgres://alice.initech:"+demoPassword+"@"+m[1]+":"+m[2]+"/chat?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, "SELECT body FROM messages ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	bodies, err := pgx.CollectRows(rows, pgx.RowTo[string])
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(bodies) != 2 || !strings.Contains(bodies[0], "Initech") || !strings.Contains(bodies[1], "Initech") {
		t.Fatalf("initech sees %q; want its two sample messages only", bodies)
	}

	// The chat's tables came from the chat app stored in the catalog, the
	// directory an adopter would pass to migrate up --dir.
	dsn := regexp.MustCompile(`export TENANTPROXY_CATALOG_DSN='([^']+)'`).FindStringSubmatch(out)
	if dsn == nil || !strings.Contains(out, "migrate up --dir chatapi/migrations") {
		t.Fatalf("no catalog DSN or migrate up --dir line in:\n%s", out)
	}
	stored := storedApp(t, dsn[1])
	if want := dirApp(t, chatDir); stored != want {
		t.Fatalf("the demo's catalog stores app versions %s; want the chat directory's %s", stored, want)
	}

	// The chat API's printed curl lines: acme's login, whose token the
	// next lines send; acme's /me by header; the same token refused on
	// hooli; and an operator export with the printed token.
	login := regexp.MustCompile(`TOKEN=\$\(curl -s -H 'X-Tenant-ID: acme' -d '(\{[^']*\})' (http://\S+/login) \| sed`).FindStringSubmatch(out)
	me := regexp.MustCompile(`curl -s -H "Authorization: Bearer \$TOKEN" -H 'X-Tenant-ID: acme' (http://\S+/me)`).FindStringSubmatch(out)
	foreign := regexp.MustCompile(`curl -s -H "Authorization: Bearer \$TOKEN" -H 'X-Tenant-ID: hooli' (http://\S+/messages/1)`).FindStringSubmatch(out)
	export := regexp.MustCompile(`curl -s -H 'Authorization: Bearer (\S+)' (http://\S+/admin/tenants/acme/export)`).FindStringSubmatch(out)
	if login == nil || me == nil || foreign == nil || export == nil {
		t.Fatalf("no chat curl lines for login, /me, hooli's message and export in:\n%s", out)
	}
	do := func(method, url, body string, status int, header ...string) map[string]any {
		t.Helper()
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != status {
			t.Fatalf("%s %s: %d, %v; want %d", method, url, resp.StatusCode, err, status)
		}
		return v
	}
	token, _ := do("POST", login[2], login[1], 200, "X-Tenant-ID", "acme")["token"].(string)
	if token == "" {
		t.Fatalf("the printed login line gave no token")
	}
	bearer := "Bearer " + token
	if v := do("GET", me[1], "", 200, "X-Tenant-ID", "acme", "Authorization", bearer); v["tenant"] != "acme" || v["isolation_level"] != "shared" {
		t.Fatalf("/me of acme: %v", v)
	}
	do("GET", foreign[1], "", 403, "X-Tenant-ID", "hooli", "Authorization", bearer)
	if v := do("GET", export[2], "", 200, "Authorization", "Bearer "+export[1]); len(v["messages"].([]any)) != 2 {
		t.Fatalf("export of acme: %v; want its two sample messages", v)
	}
	dm := regexp.MustCompile(`PostgreSQL\s+\S+ in (\S+)`).FindStringSubmatch(out)
	if dm == nil {
		t.Fatalf("demo did not say where its PostgreSQL lives:\n%s", out)
	}
	if _, err := os.Stat(dm[1]); err != nil {
		t.Fatalf("cluster directory %s: %v", dm[1], err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo stopped with %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("demo did not stop within 60 s of Ctrl-C")
	}
	if _, err := os.Stat(dm[1]); !os.IsNotExist(err) {
		t.Fatalf("cluster directory %s survived the demo (stat: %v)", dm[1], err)
	}
}
