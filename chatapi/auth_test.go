package chatapi

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestTokenVerifiesOnlyUntamperedUnexpiredTokensOfTheKey(t *testing.T) {
	key := tokenKey([]byte(strings.Repeat("s", 32)))
	now := time.Now()
	good := sign(key, claims{Tenant: "acme", User: "alice", Expires: now.Add(time.Hour).Unix()})
	if c, err := verify(key, good, now); err != nil || c.Tenant != "acme" || c.User != "alice" {
		t.Fatalf("verify(good) = %+v, %v; want acme/alice", c, err)
	}
	payload, sig, _ := strings.Cut(good, ".")
	forged := sign(key, claims{Tenant: "hooli", User: "alice", Expires: now.Add(time.Hour).Unix()})
	forgedPayload, _, _ := strings.Cut(forged, ".")
	bad := map[string]string{
		"expired":            sign(key, claims{Tenant: "acme", User: "alice", Expires: now.Add(-time.Second).Unix()}),
		"other key":          sign(tokenKey([]byte(strings.Repeat("t", 32))), claims{Tenant: "acme", User: "alice", Expires: now.Add(time.Hour).Unix()}),
		"payload swapped":    forgedPayload + "." + sig,
		"signature trimmed":  payload + "." + sig[:len(sig)-2],
		"no signature":       payload,
		"empty":              "",
		"garbage":            "not.a-token",
		"service password":   ServicePassword([]byte(strings.Repeat("s", 32)), "acme"),
		"tenantless payload": sign(key, claims{User: "alice", Expires: now.Add(time.Hour).Unix()}),
	}
	for name, tok := range bad {
		if c, err := verify(key, tok, now); err == nil {
			t.Errorf("%s: verify accepted %+v", name, c)
		}
	}
}

// TestTenantEndpointsRefuseMissingBadAndForeignTokens needs no catalog:
// each refusal is decided before the tenant's login is looked up.
func TestTenantEndpointsRefuseMissingBadAndForeignTokens(t *testing.T) {
	s := newTestServer(t)
	srv := httptest.NewServer(s)
	defer srv.Close()
	hour := time.Now().Add(time.Hour).Unix()
	acme := sign(s.tokenKey, claims{Tenant: "acme", User: "alice", Expires: hour})
	expired := sign(s.tokenKey, claims{Tenant: "hooli", User: "alice", Expires: time.Now().Add(-time.Minute).Unix()})
	cases := []struct {
		name, path, host, header, auth string
		status                         int
		kind                           string
	}{
		{"no token", "/me", "", "hooli", "", 401, "unauthenticated"},
		{"not bearer", "/channels", "", "hooli", "Basic YWxpY2U6eA==", 401, "unauthenticated"},
		{"expired", "/me", "", "hooli", "Bearer " + expired, 401, "unauthenticated"},
		{"tampered", "/me", "", "acme", "Bearer " + acme[:len(acme)-3] + "AAA", 401, "unauthenticated"},
		{"operator token", "/me", "", "acme", "Bearer operator-token-for-tests", 401, "unauthenticated"},
		{"acme's token, hooli by header", "/messages/1", "", "hooli", "Bearer " + acme, 403, "wrong-tenant"},
		{"acme's token, hooli by host", "/me", "hooli.chat.test", "", "Bearer " + acme, 403, "wrong-tenant"},
		{"acme's token, hooli by path", "/t/hooli/me", "", "", "Bearer " + acme, 403, "wrong-tenant"},
		{"no token, unknown tenant", "/t/nosuchtenant/me", "", "", "", 401, "unauthenticated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body, p := problemRequest(t, "GET", srv.URL+c.path, c.host, c.header, c.auth)
			if resp.StatusCode != c.status || p.Type != problemBase+c.kind || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("%d %s; want %d problem of kind %s", resp.StatusCode, body, c.status, c.kind)
			}
			if got := resp.Header.Get("WWW-Authenticate"); (c.status == 401) != strings.HasPrefix(got, "Bearer") {
				t.Fatalf("WWW-Authenticate %q with status %d; want Bearer exactly on 401", got, c.status)
			}
		})
	}
}

func TestLoginThrottleHoldsOnlyTheFailingSourceForItsWindow(t *testing.T) {
	l := newLoginThrottle()
	now := time.Now()
	for k := range loginFreeFailures {
		if w := l.wait("192.0.2.1", now); w != 0 {
			t.Fatalf("held after %d failures; want %d free", k, loginFreeFailures)
		}
		l.fail("192.0.2.1", now)
	}
	if w := l.wait("192.0.2.1", now.Add(time.Second)); w <= 0 || w > loginWindow {
		t.Fatalf("wait after %d failures = %v; want up to %v", loginFreeFailures, w, loginWindow)
	}
	if w := l.wait("192.0.2.2", now); w != 0 {
		t.Fatalf("another source held for %v", w)
	}
	if w := l.wait("192.0.2.1", now.Add(loginWindow)); w != 0 {
		t.Fatalf("still held %v after the window", w)
	}
	for addr, want := range map[string]string{
		"192.0.2.1:5555": "192.0.2.1", "[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64", "[::ffff:192.0.2.9]:1": "192.0.2.9",
	} {
		r := httptest.NewRequest("POST", "/login", nil)
		r.RemoteAddr = addr
		if got := loginSource(r); got != want {
			t.Errorf("source of %s = %q; want %q", addr, got, want)
		}
	}
}
