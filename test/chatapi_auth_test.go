package test

import (
	"encoding/base64"
	"fmt"

	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantproxy/tenantproxy/chatapi"
)

// testEndUserAuth: tenant endpoints need a token from POST /login for the
// tenant they name, issued against the catalog login the proxy
// authenticates; a token reads its own tenant's data and no other's.
func testEndUserAuth(t *testing.T, e *chatEnv, tenants []*seeded) {
	acme, hooli := tenants[0], tenants[1]
	acmeToken, _ := e.tokens.Load("acme")
	hooliMsg := anyKey(hooli.live)
	t.Run("NoToken401", func(t *testing.T) {
		for _, style := range []int{byHost, byHeader, byPath} {
			c := as(style, "hooli", "GET", fmt.Sprintf("/messages/%d", hooliMsg), nil)
			c.anonymous = true
			r := e.do(t, c)
			wantProblem(t, r, 401, "unauthenticated")
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") || strings.Contains(string(r.body), hooli.live[hooliMsg]) {
				t.Fatalf("anonymous read of hooli: %v %s; want a Bearer challenge and none of hooli's data", r.header, r.body)
			}
		}
	})
	t.Run("AnotherTenantsToken403", func(t *testing.T) {
		for _, style := range []int{byHost, byHeader, byPath} {
			for _, path := range []string{"/me", fmt.Sprintf("/messages/%d", hooliMsg), fmt.Sprintf("/channels/%d/messages", hooli.channel)} {
				c := as(style, "hooli", "GET", path, nil)
				c.token = acmeToken.(string)
				r := e.do(t, c)
				if p := wantProblem(t, r, 403, "wrong-tenant"); p.Tenant != "hooli" || strings.Contains(string(r.body), hooli.live[hooliMsg]) {
					t.Fatalf("acme's token on hooli's %s: %s", path, r.body)
				}
			}
		}
		c := as(byHeader, "hooli", "POST", fmt.Sprintf("/channels/%d/messages", hooli.channel), map[string]any{"author_id": 1, "body": "from acme"})
		c.token = acmeToken.(string)
		wantProblem(t, e.do(t, c), 403, "wrong-tenant")
	})
	t.Run("WrongPassword401NoToken", func(t *testing.T) {
		for _, user := range []string{"admin", "nosuchuser"} {
			r := e.login(t, "acme", user, "not-the-password")
			wantProblem(t, r, 401, "unauthenticated")
			if strings.Contains(string(r.body), "token\"") || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("failed login as %s: %v %s", user, r.header, r.body)
			}
		}
		wantProblem(t, e.login(t, "acme", "", "x"), 400, "invalid-body")
	})
	t.Run("TamperedOrExpiredToken401", func(t *testing.T) {
		tok := acmeToken.(string)
		payload, sig, _ := strings.Cut(tok, ".")
		claims, _ := base64.RawURLEncoding.DecodeString(payload)
		forged := base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(claims), `"acme"`, `"hooli"`, 1)))
		for name, bad := range map[string]call{
			"payload for hooli, acme's signature": {method: "GET", path: "/me", tenant: "hooli", token: forged + "." + sig},
			"signature cut":                       {method: "GET", path: "/me", tenant: "acme", token: payload + "." + sig[:20]},
			"operator token":                      {method: "GET", path: "/me", tenant: "acme", token: chatOperator},
		} {
			if r := e.do(t, bad); r.status != 401 {
				t.Fatalf("%s: %s; want 401", name, r)
			}
		}
		// A replica issuing tokens that are already expired (same secret,
		// so the main instance checks its signatures and refuses them).
		srv := e.replica(t, time.Nanosecond)
		su := e.signUpAdmin("acme")
		in := want[chatapi.Login](t, (&chatEnv{url: srv.URL}).login(t, "acme", su.user, su.password), 200, "login to the short-lived replica")
		r := e.do(t, call{method: "GET", path: "/me", tenant: "acme", token: in.Token})
		wantProblem(t, r, 401, "unauthenticated")
	})
	t.Run("FailingSourceThrottled429", func(t *testing.T) {
		// A replica of its own, so that its throttle holds no other test.
		srv := e.replica(t, 0)
		replica := &chatEnv{url: srv.URL}
		su := e.signUpAdmin("acme")
		for range 20 {
			wantProblem(t, replica.login(t, "acme", su.user, "guess"), 401, "unauthenticated")
		}
		// Even the right password is not checked now.
		r := replica.login(t, "acme", su.user, su.password)
		wantProblem(t, r, 429, "too-many-logins")
		if r.header.Get("Retry-After") == "" || strings.Contains(string(r.body), "token\"") {
			t.Fatalf("throttled login: %v %s", r.header, r.body)
		}
	})
	t.Run("LoginReadsOnlyItsTenant", func(t *testing.T) {
		su := e.signUpAdmin("hooli")
		for _, style := range []int{byHost, byHeader, byPath} {
			c := as(style, "hooli", "POST", "/login", chatapi.LoginRequest{User: su.user, Password: su.password})
			c.anonymous = true
			in := want[chatapi.Login](t, e.do(t, c), 200, "login")
			if in.Tenant != "hooli" || in.TokenType != "Bearer" || time.Until(in.ExpiresAt) < 59*time.Minute {
				t.Fatalf("login: %+v; want hooli's bearer token for an hour", in)
			}
			get := as(style, "hooli", "GET", fmt.Sprintf("/channels/%d/messages", hooli.channel), nil)
			get.token = in.Token
			page := want[chatapi.Page[chatapi.Message]](t, e.do(t, get), 200, "hooli's messages")
			for _, m := range page.Items {
				if hooli.live[m.ID] != m.Body {
					t.Fatalf("hooli's token listed %q; want only hooli's messages", m.Body)
				}
			}
			// acme's message ids are 404 to hooli's token, as to hooli.
			for id := range acme.live {
				if _, own := hooli.live[id]; !own {
					mine := as(style, "hooli", "GET", fmt.Sprintf("/messages/%d", id), nil)
					mine.token = in.Token
					wantProblem(t, e.do(t, mine), 404, "not-found")
				}
			}
		}
	})
	t.Run("CatalogLoginsOtherThanTheAdmin", func(t *testing.T) {
		if _, _, err := e.cat.AddUser(ctxT(t), "globex", "carol", "carols-password-123", "member"); err != nil {
			t.Fatal(err)
		}
		in := want[chatapi.Login](t, e.login(t, "globex", "carol", "carols-password-123"), 200, "carol's login")
		me := want[chatapi.Me](t, e.do(t, call{method: "GET", path: "/me", tenant: "globex", token: in.Token}), 200, "carol's /me")
		if me.Tenant != "globex" || in.User != "carol" {
			t.Fatalf("carol: %+v %+v", in, me)
		}
		// carol is not a login of umbrella.
		wantProblem(t, e.login(t, "umbrella", "carol", "carols-password-123"), 401, "unauthenticated")
	})
}

// adminLogin is a tenant's admin login as sign-up returned it.
type adminLogin struct{ user, password string }

// signUpAdmin returns the admin login kept by signUp.
func (e *chatEnv) signUpAdmin(sub string) adminLogin {
	v, _ := e.admins.Load(sub)
	a, _ := v.(adminLogin)
	return a
}

func anyKey[K comparable, V any](m map[K]V) K {
	for k := range m {
		return k
	}
	var zero K
	return zero
}

// replica starts a chat API of its own on the same catalog and proxy, with
// tokens living ttl (0: the default), so that its throttle and token
// lifetime touch no other test; it stops with the test.
func (e *chatEnv) replica(t *testing.T, ttl time.Duration) *httptest.Server {
	t.Helper()
	api, err := chatapi.New(chatapi.Config{
		ProxyDSN:      "postgres://" + e.proxyAddr + "/chat?sslmode=disable",
		ServiceSecret: []byte("a-service-secret-of-at-least-32-bytes"),
		OperatorToken: chatOperator,
		TokenTTL:      ttl,
		Registerer:    prometheus.NewRegistry(),
	}, e.cat)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	t.Cleanup(func() {
		srv.Close()
		api.Close()
	})
	return srv
}
