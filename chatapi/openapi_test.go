package chatapi

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// openAPIDoc is the part of openapi.json the route check reads.
type openAPIDoc struct {
	OpenAPI string                    `json:"openapi"`
	Paths   map[string]map[string]any `json:"paths"`
}

// newTestServer builds a Server that needs no catalog: enough for routes,
// the document, and requests that fail before reaching tenant data.
func newTestServer(t *testing.T) *Server {
	t.Helper()
	s, err := New(Config{
		ProxyDSN:      "postgres://127.0.0.1:1/chat?sslmode=disable",
		ServiceSecret: []byte(strings.Repeat("s", 32)),
		OperatorToken: "operator-token-for-tests",
		BaseDomain:    "chat.test",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// TestOpenAPIDocumentsEveryRouteAndOnlyThem checks both directions: every
// registered method and path is in the document, with the /t/{tenant}
// server exactly when the route is also served under that prefix, and
// every documented operation is registered.
func TestOpenAPIDocumentsEveryRouteAndOnlyThem(t *testing.T) {
	s := newTestServer(t)
	var doc openAPIDoc
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi = %q; want 3.x", doc.OpenAPI)
	}
	registered := map[string]bool{}
	for _, rt := range s.routes {
		key := strings.ToLower(rt.method) + " " + rt.path
		registered[key] = true
		item, ok := doc.Paths[rt.path]
		if !ok {
			t.Errorf("route %s %s: path missing from openapi.json", rt.method, rt.path)
			continue
		}
		if _, ok := item[strings.ToLower(rt.method)]; !ok {
			t.Errorf("route %s %s: method missing from openapi.json", rt.method, rt.path)
		}
		if got, want := serverURLs(item), rt.scope.underTenant(); slices.Contains(got, tenantPrefix) != want {
			t.Errorf("route %s %s: servers %v; served under %s: %v", rt.method, rt.path, got, tenantPrefix, want)
		}
	}
	for path, item := range doc.Paths {
		for _, m := range httpMethods {
			if _, ok := item[m]; ok && !registered[m+" "+path] {
				t.Errorf("openapi.json documents %s %s, which is not registered", strings.ToUpper(m), path)
			}
		}
	}
}

func serverURLs(item map[string]any) []string {
	servers, _ := item["servers"].([]any)
	var urls []string
	for _, sv := range servers {
		if m, ok := sv.(map[string]any); ok {
			urls = append(urls, fmt.Sprint(m["url"]))
		}
	}
	return urls
}

// TestOpenAPIReferencesResolve catches a $ref to a component that does
// not exist, which the route check above cannot see.
func TestOpenAPIReferencesResolve(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				var node any = doc
				for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
					m, _ := node.(map[string]any)
					node = m[part]
				}
				if node == nil {
					t.Errorf("$ref %s does not resolve", ref)
				}
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(doc)
}

// TestErrorsBeforeTenantDataAreProblems covers what is answered without a
// catalog: identification errors, unknown paths and methods, missing
// operator tokens, each as application/problem+json with its status.
func TestErrorsBeforeTenantDataAreProblems(t *testing.T) {
	srv := httptest.NewServer(newTestServer(t))
	defer srv.Close()
	cases := []struct {
		name, method, path, host, header, auth string
		status                                 int
		kind                                   string
	}{
		{"no tenant", "GET", "/me", "", "", "", 400, "tenant-required"},
		{"invalid header tenant", "GET", "/me", "", "Bad_Tenant", "", 400, "invalid-tenant"},
		{"invalid path tenant", "GET", "/t/-bad-/me", "", "", "", 400, "invalid-tenant"},
		{"reserved header tenant", "GET", "/me", "", "admin", "", 400, "invalid-tenant"},
		{"host and header disagree", "GET", "/me", "acme.chat.test", "globex", "", 400, "conflicting-tenant"},
		{"header and path disagree", "GET", "/t/acme/me", "", "globex", "", 400, "conflicting-tenant"},
		{"host and path disagree", "GET", "/t/globex/me", "acme.chat.test:8080", "", "", 400, "conflicting-tenant"},
		{"unknown path", "GET", "/nope", "", "", "", 404, "not-found"},
		{"wrong method", "PUT", "/me", "", "", "", 405, "method-not-allowed"},
		{"operator without token", "POST", "/admin/tenants/acme/suspend", "", "", "", 401, "unauthorized"},
		{"operator with wrong token", "POST", "/admin/tenants/acme/suspend", "", "", "Bearer nope", 401, "unauthorized"},
		{"operator with bad tenant", "POST", "/admin/tenants/Bad!/suspend", "", "", "Bearer operator-token-for-tests", 400, "invalid-tenant"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body, p := problemRequest(t, c.method, srv.URL+c.path, c.host, c.header, c.auth)
			if resp.StatusCode != c.status || p.Status != c.status || p.Type != problemBase+c.kind ||
				resp.Header.Get("Content-Type") != "application/problem+json" || p.Title == "" || p.Detail == "" || p.Instance != c.path {
				t.Fatalf("%s %s: %d %s %s; want %d problem of kind %s with title, detail and instance", c.method, c.path,
					resp.StatusCode, resp.Header.Get("Content-Type"), body, c.status, c.kind)
			}
		})
	}
}

// problemRequest sends a body-less request naming its tenant by host
// and/or header, with an Authorization header when auth is set, and
// returns the response, its body and the body read as a problem.
func problemRequest(t *testing.T, method, url, host, header, auth string) (*http.Response, []byte, problem) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if header != "" {
		req.Header.Set(TenantHeader, header)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var p problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	return resp, body, p
}

func TestIdentifyPrefersHostThenHeaderThenPath(t *testing.T) {
	cases := []struct {
		host, header, path, want string
	}{
		{"acme.chat.test", "", "", "acme"},
		{"ACME.Chat.Test.", "", "", "acme"},
		{"acme.chat.test:443", "acme", "acme", "acme"},
		{"api.chat.test", "globex", "", "globex"}, // the API's own host names no tenant
		{"chat.test", "", "initech", "initech"},
		{"a.b.chat.test", "", "initech", "initech"},
		{"acme.example.com", "hooli", "", "hooli"},
		{"127.0.0.1:8080", "", "hooli", "hooli"},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/me", nil)
		r.Host = c.host
		if c.header != "" {
			r.Header.Set(TenantHeader, c.header)
		}
		if c.path != "" {
			r.SetPathValue("tenant", c.path)
		}
		got, err := identify("chat.test", r)
		if err != nil || got != c.want {
			t.Errorf("Host %q, header %q, path %q: %q, %v; want %q", c.host, c.header, c.path, got, err, c.want)
		}
	}
	r := httptest.NewRequest("GET", "/me", nil)
	r.Host = "acme.chat.test"
	if got, err := identify("", r); err == nil {
		t.Errorf("Host identification without a base domain named %q; want tenant-required", got)
	}
}

func TestServicePasswordIsStablePerTenantAndSecret(t *testing.T) {
	a := ServicePassword([]byte("secret-one"), "acme")
	if a != ServicePassword([]byte("secret-one"), "acme") {
		t.Fatal("same secret and tenant gave two passwords")
	}
	if a == ServicePassword([]byte("secret-one"), "globex") || a == ServicePassword([]byte("secret-two"), "acme") {
		t.Fatal("another tenant or secret gave the same password")
	}
	if len(a) != 43 || strings.ContainsAny(a, "+/=") {
		t.Fatalf("password %q: want 43 base64url characters", a)
	}
}

func TestMetricsTenantLabelIsBounded(t *testing.T) {
	m, err := newMetrics(nil, []string{"acme"})
	if err != nil {
		t.Fatal(err)
	}
	for tenant, want := range map[string]string{"": "none", "acme": "acme", "globex": "other", "t-9999": "other"} {
		if got := m.tenantLabel(tenant); got != want {
			t.Errorf("label of %q = %q; want %q", tenant, got, want)
		}
	}
}
