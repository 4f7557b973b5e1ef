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

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// TestDemoServesTheChatAPI follows the demo's printed chat curl lines: the
// tenant's /me by header, and an operator export with the printed token.
func TestDemoServesTheChatAPI(t *testing.T) {
	if _, err := pgtest.BinDir(); err != nil && os.Getenv("CI") != "true" {
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
	printed := make(chan string, 1)
	go func() {
		var b strings.Builder
		lines := bufio.NewScanner(pr)
		for lines.Scan() {
			b.WriteString(lines.Text() + "\n")
			if strings.HasPrefix(lines.Text(), "Ctrl-C stops") {
				printed <- b.String()
			}
		}
		io.Copy(io.Discard, pr)
	}()
	var out string
	select {
	case out = <-printed:
	case err := <-done:
		t.Fatalf("demo exited before it was ready: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("demo not ready after 90 s")
	}

	me := regexp.MustCompile(`curl -s -H 'X-Tenant-ID: acme' (http://\S+/me)`).FindStringSubmatch(out)
	export := regexp.MustCompile(`curl -s -H 'Authorization: Bearer (\S+)' (http://\S+/admin/tenants/acme/export)`).FindStringSubmatch(out)
	if me == nil || export == nil {
		t.Fatalf("no chat curl lines for /me and export in:\n%s", out)
	}
	get := func(url string, header ...string) map[string]any {
		t.Helper()
		req, err := http.NewRequest("GET", url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(header[0], header[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d, %v", url, resp.StatusCode, err)
		}
		return v
	}
	if v := get(me[1], "X-Tenant-ID", "acme"); v["tenant"] != "acme" || v["isolation_level"] != "shared" {
		t.Fatalf("/me of acme: %v", v)
	}
	if v := get(export[2], "Authorization", "Bearer "+export[1]); len(v["messages"].([]any)) != 2 {
		t.Fatalf("export of acme: %v; want its two sample messages", v)
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
}
