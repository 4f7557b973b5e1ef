package test

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/chatapi"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

const (
	chatBaseDomain = "chat.test"
	chatOperator   = "operator-token-for-the-e2e-tests"
)

// chatEnv is the whole path of a chat request: HTTP → chat API → proxy →
// PostgreSQL, on a private cluster (the serving role is cluster-wide) with
// an empty catalog; tenants are signed up through the API.
type chatEnv struct {
	*proxyEnv
	url string
	reg *prometheus.Registry
	// proxyAddr is where the proxy listens, for a second API instance.
	proxyAddr string
	// tokens holds each signed-up tenant's bearer token (tenant → token),
	// from logging in as its admin user; shared with a second instance,
	// which accepts the first one's tokens (same service secret).
	tokens *sync.Map
	// admins holds each signed-up tenant's adminLogin.
	admins *sync.Map
}

type chatEnvOptions struct {
	// maxConnections is the cluster's max_connections; zero means 100.
	maxConnections string
	// poolPerKey is the proxy's MaxConnsPerKey; zero means its default.
	poolPerKey int
	// apiPoolConns is the API's PoolMaxConns; zero means its default.
	apiPoolConns  int
	metricTenants []string
	quiet         bool
}

func newChatEnv(t *testing.T, o chatEnvOptions) *chatEnv {
	t.Helper()
	var opts pgcluster.Options
	if o.maxConnections != "" {
		opts.Conf = map[string]string{"max_connections": o.maxConnections}
	}
	c, _, cat := newChatCatalog(t, opts)
	log := zap.NewNop()
	if !o.quiet {
		log = zaptest.NewLogger(t)
	}
	mgr, err := pool.NewManager(pool.Config{MaxConnsPerKey: o.poolPerKey}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	pe := &proxyEnv{cluster: c, cat: cat, pool: mgr}
	_, addr := pe.startProxy(t, proxy.Config{Logger: log})

	reg := prometheus.NewRegistry()
	api, err := chatapi.New(chatapi.Config{
		ProxyDSN:      "postgres://" + addr + "/chat?sslmode=disable",
		ServiceSecret: []byte("a-service-secret-of-at-least-32-bytes"),
		OperatorToken: chatOperator,
		BaseDomain:    chatBaseDomain,
		PoolMaxConns:  o.apiPoolConns,
		MetricTenants: o.metricTenants,
		Logger:        log,
		Registerer:    reg,
	}, cat)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-registered first: HTTP stops, then the API's
	// pools close their proxy sessions, then the proxy shuts down.
	t.Cleanup(api.Close)
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	return &chatEnv{proxyEnv: pe, url: srv.URL, reg: reg, proxyAddr: addr, tokens: &sync.Map{}, admins: &sync.Map{}}
}

// call is one HTTP request to the chat API.
type call struct {
	method, path string
	// host, when set, is the Host header (e.g. "acme.chat.test").
	host string
	// tenant, when set, is the X-Tenant-ID header.
	tenant string
	// operator sends the operator token.
	operator bool
	// token, when set, is the bearer token sent; otherwise a tenant-scoped
	// call sends the token of the tenant it names (chatEnv.tokens) unless
	// anonymous is set.
	token     string
	anonymous bool
	body      any
}

// namedTenant is the tenant a call names by header, Host or path, for
// picking its token; identification itself is the API's business.
func (c call) namedTenant() string {
	if c.tenant != "" {
		return c.tenant
	}
	if host, _, err := net.SplitHostPort(c.host); err == nil {
		if sub, ok := strings.CutSuffix(host, "."+chatBaseDomain); ok {
			return sub
		}
	}
	if rest, ok := strings.CutPrefix(c.path, "/t/"); ok {
		sub, _, _ := strings.Cut(rest, "/")
		return sub
	}
	return ""
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) String() string {
	return http.StatusText(r.status) + " " + strings.TrimSpace(string(r.body))
}

func (e *chatEnv) do(t testing.TB, c call) reply {
	t.Helper()
	r, err := e.try(http.DefaultClient, c)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	return r
}

// try is do for goroutines that must not call t.Fatal.
func (e *chatEnv) try(client *http.Client, c call) (reply, error) {
	var body io.Reader
	if c.body != nil {
		b, err := json.Marshal(c.body)
		if err != nil {
			return reply{}, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(c.method, e.url+c.path, body)
	if err != nil {
		return reply{}, err
	}
	if c.host != "" {
		req.Host = c.host
	}
	if c.tenant != "" {
		req.Header.Set(chatapi.TenantHeader, c.tenant)
	}
	token := c.token
	if token == "" && !c.operator && !c.anonymous && e.tokens != nil {
		if tok, ok := e.tokens.Load(c.namedTenant()); ok {
			token = tok.(string)
		}
	}
	if c.operator {
		token = chatOperator
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}, err
}

// want decodes a reply of the given status into v (when not nil).
func want[T any](t testing.TB, r reply, status int, what string) T {
	t.Helper()
	var v T
	if r.status != status {
		t.Fatalf("%s: %s; want %d", what, r, status)
	}
	if len(r.body) > 0 {
		if err := json.Unmarshal(r.body, &v); err != nil {
			t.Fatalf("%s: body %q: %v", what, r.body, err)
		}
	}
	return v
}

// problem is an RFC 9457 document as the API sends it.
type problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Instance string `json:"instance"`
	Tenant   string `json:"tenant"`
	Feature  string `json:"feature"`
	Limit    int64  `json:"limit"`
}

// wantProblem checks status, media type and every member a client reads.
func wantProblem(t testing.TB, r reply, status int, kind string) problem {
	t.Helper()
	p := want[problem](t, r, status, kind)
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("%s: Content-Type %q; want application/problem+json", kind, ct)
	}
	if p.Type != "urn:tenantproxy:chatapi:problem:"+kind || p.Status != status || p.Title == "" || p.Detail == "" || p.Instance == "" {
		t.Fatalf("problem %s; want kind %s, status %d, a title, a detail and an instance", r.body, kind, status)
	}
	return p
}

// signUp provisions a tenant through the API and logs in as its admin
// user, keeping the token for the tenant's later calls.
func (e *chatEnv) signUp(t testing.TB, sub, plan string) chatapi.SignUp {
	t.Helper()
	su := want[chatapi.SignUp](t, e.do(t, call{method: "POST", path: "/admin/tenants", operator: true,
		body: chatapi.SignUpRequest{Subdomain: sub, Name: "Tenant " + sub, Plan: plan}}), http.StatusCreated, "sign up "+sub)
	// The catalog's caches learn of changes by notification: when sub was
	// deleted and signed up again within milliseconds, the old admin's
	// verifier may still be cached for a moment (the proxy sees the same
	// window). A few retries stay under the login throttle's allowance.
	r := e.login(t, sub, su.AdminUser, su.AdminPassword)
	for try := 0; r.status == http.StatusUnauthorized && try < 10; try++ {
		time.Sleep(100 * time.Millisecond)
		r = e.login(t, sub, su.AdminUser, su.AdminPassword)
	}
	in := want[chatapi.Login](t, r, http.StatusOK, "log in to "+sub)
	if in.Token == "" || in.Tenant != sub || in.User != su.AdminUser {
		t.Fatalf("login to %s as %s: %+v", sub, su.AdminUser, in)
	}
	e.tokens.Store(sub, in.Token)
	e.admins.Store(sub, adminLogin{su.AdminUser, su.AdminPassword})
	return su
}

// login is POST /login for tenant sub, named by the X-Tenant-ID header.
func (e *chatEnv) login(t testing.TB, sub, user, password string) reply {
	t.Helper()
	return e.do(t, call{method: "POST", path: "/login", tenant: sub, anonymous: true,
		body: chatapi.LoginRequest{User: user, Password: password}})
}

func hostOf(sub string) string { return net.JoinHostPort(sub+"."+chatBaseDomain, "80") }
