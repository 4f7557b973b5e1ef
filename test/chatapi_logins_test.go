package test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/chatapi"
)

// TestOperatorAPIManagesTenantLogins drives /admin/tenants/{tenant}/users
// end to end: the logins it adds, re-passwords and removes are what the
// proxy lets in, a removed login's open session ends with 57P01, and bad
// requests get the problem a client can act on.
func TestOperatorAPIManagesTenantLogins(t *testing.T) {
	e := newChatEnv(t, chatEnvOptions{})
	e.signUp(t, "acme", catalog.PlanFree) // 5 people, the admin included; the API's own login is a service
	users := "/admin/tenants/acme/users"
	op := func(method, path string, body any) reply {
		return e.do(t, call{method: method, path: path, operator: true, body: body})
	}

	bob := want[chatapi.TenantLoginPassword](t, op("POST", users, chatapi.NewTenantLogin{Username: "bob", Password: "bobs-first-password"}),
		http.StatusCreated, "add bob")
	if bob.Password != "" || bob.Role != "member" {
		t.Fatalf("add bob with a password: %+v; want role member and no password echoed", bob)
	}
	carol := want[chatapi.TenantLoginPassword](t, op("POST", users, chatapi.NewTenantLogin{Username: "carol", Role: "admin"}),
		http.StatusCreated, "add carol")
	if carol.Password == "" || carol.Role != "admin" {
		t.Fatalf("add carol without a password: %+v; want a generated one, role admin", carol)
	}
	connect(t, dsn(e.proxyAddr, "bob.acme", "bobs-first-password"))
	connect(t, dsn(e.proxyAddr, "carol.acme", carol.Password))

	r := op("GET", users, nil)
	listed := want[[]catalog.User](t, r, http.StatusOK, "list")
	var names []string
	for _, u := range listed {
		names = append(names, u.Username+":"+u.Role)
	}
	if got := strings.Join(names, ","); got != "admin:admin,bob:member,carol:admin" || strings.Contains(string(r.body), "SCRAM") {
		t.Fatalf("GET users = %s; want admin, bob and carol by name, no verifier, no service login", r.body)
	}

	want[chatapi.TenantLoginPassword](t, op("PUT", users+"/bob/password", chatapi.PasswordChange{Password: "bobs-second-password"}),
		http.StatusOK, "passwd bob")
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err := connectErr(t, dsn(e.proxyAddr, "bob.acme", "bobs-first-password"))
		if sqlstateOf(err) == "28P01" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob's old password 2 s after the change: %v; want 28P01", err)
		}
	}
	session := connect(t, dsn(e.proxyAddr, "bob.acme", "bobs-second-password"))

	want[any](t, op("DELETE", users+"/bob", nil), http.StatusNoContent, "remove bob")
	var err error
	for deadline := time.Now().Add(2 * time.Second); err == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		_, err = session.Exec(context.Background(), "SELECT 1")
	}
	assertPgError(t, err, "FATAL", "57P01", "terminating connection due to administrator command")
	assertPgError(t, connectErr(t, dsn(e.proxyAddr, "bob.acme", "bobs-second-password")), "FATAL", "28P01", "password authentication failed")

	duplicate := op("POST", users, chatapi.NewTenantLogin{Username: "carol"}) // before the limit, which is checked first
	for _, who := range []string{"dave", "erin", "gus"} {
		want[chatapi.TenantLoginPassword](t, op("POST", users, chatapi.NewTenantLogin{Username: who}), http.StatusCreated, "add "+who)
	}
	for _, tc := range []struct {
		name   string
		r      reply
		status int
		kind   string
	}{
		{"no operator token", e.do(t, call{method: "POST", path: users, anonymous: true, body: chatapi.NewTenantLogin{Username: "x"}}), 401, "unauthorized"},
		{"past max_users", op("POST", users, chatapi.NewTenantLogin{Username: "frank"}), 409, "user-limit"},
		{"duplicate", duplicate, 400, "invalid-body"},
		{"bad user name", op("POST", users, chatapi.NewTenantLogin{Username: "Frank"}), 400, "invalid-body"},
		{"short password", op("PUT", users+"/carol/password", chatapi.PasswordChange{Password: "short"}), 400, "invalid-body"},
		{"bad role", op("POST", users, map[string]any{"username": "x", "role": "owner"}), 400, "invalid-body"},
		{"unknown field", op("POST", users, map[string]any{"username": "x", "verifier": "SCRAM-SHA-256$…"}), 400, "invalid-body"},
		{"service login", op("PUT", users+"/chatapi/password", chatapi.PasswordChange{}), 400, "invalid-body"},
		{"unknown user", op("PUT", users+"/bob/password", chatapi.PasswordChange{}), 404, "unknown-user"},
		{"remove unknown user", op("DELETE", users+"/bob", nil), 404, "unknown-user"},
		{"bad user in the path", op("DELETE", users+"/Bob", nil), 400, "invalid-parameter"},
		{"unknown tenant", op("GET", "/admin/tenants/nosuch/users", nil), 404, "unknown-tenant"},
		{"bad tenant in the path", op("GET", "/admin/tenants/No_Such/users", nil), 400, "invalid-tenant"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := wantProblem(t, tc.r, tc.status, tc.kind)
			if tc.kind == "user-limit" && (p.Limit != 5 || p.Tenant != "acme") {
				t.Fatalf("user-limit problem %+v; want limit 5 of tenant acme", p)
			}
		})
	}
	// The service login's password is its service's: the refused change
	// left the API able to reach the tenant.
	want[any](t, e.do(t, call{method: "GET", path: "/me", tenant: "acme"}), http.StatusOK, "the API's own login after the refused change")
}
