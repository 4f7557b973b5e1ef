package chatapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// Server is the chat API. It is an http.Handler; the caller owns the
// listener and must call Close after the HTTP server has shut down.
type Server struct {
	cfg Config
	// tokenKey signs and verifies the bearer tokens of POST /login.
	tokenKey []byte
	// logins throttles failed POST /login per source address.
	logins  *loginThrottle
	cat     *catalog.Catalog
	pools   *tenantPools
	metrics *metrics
	log     *zap.Logger
	mux     *http.ServeMux
	routes  []route
}

// scope says who may call a route and how it finds its tenant.
type scope int

const (
	// scopePublic routes need nothing (the OpenAPI document).
	scopePublic scope = iota
	// scopeTenant routes identify a tenant, need a bearer token of that
	// tenant (POST /login) and are also served under /t/{tenant}.
	scopeTenant
	// scopeLogin is POST /login: it identifies a tenant like scopeTenant,
	// and is served under /t/{tenant} too, but needs no token.
	scopeLogin
	// scopeOperator routes need the operator token.
	scopeOperator
)

// underTenant reports whether routes of scope sc are also served under
// the /t/{tenant} prefix.
func (sc scope) underTenant() bool { return sc == scopeTenant || sc == scopeLogin }

// tenantPrefix is the path fallback for naming the tenant.
const tenantPrefix = "/t/{tenant}"

// route is one method and path of the API. The OpenAPI test walks them.
type route struct {
	method, path string
	scope        scope
	handler      http.Handler
}

// tenantReq is what a tenant-scoped handler works with: the tenant as the
// catalog describes it, and a pool that reaches its data through the proxy.
type tenantReq struct {
	tenant *catalog.Tenant
	db     *pgxpool.Pool
}

type (
	tenantHandler func(w http.ResponseWriter, r *http.Request, t *tenantReq) error
	plainHandler  func(w http.ResponseWriter, r *http.Request) error
)

//go:embed openapi.json
var openAPI []byte

// New builds the API over cat; connections to tenant data go to the proxy
// at cfg.ProxyDSN.
func New(cfg Config, cat *catalog.Catalog) (*Server, error) {
	cfg, base, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer, cfg.MetricTenants)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, tokenKey: tokenKey(cfg.ServiceSecret), logins: newLoginThrottle(), cat: cat, metrics: m, log: cfg.Logger, mux: http.NewServeMux()}
	s.pools = newTenantPools(cfg, base, cat, m.pools)
	s.routes = []route{
		{"GET", "/openapi.json", scopePublic, s.plain(serveOpenAPI)},

		{"POST", "/login", scopeLogin, s.plain(s.login)},
		{"GET", "/me", scopeTenant, s.tenant(s.me)},
		{"GET", "/users", scopeTenant, s.tenant(users.list)},
		{"POST", "/users", scopeTenant, s.tenant(s.createUser)},
		{"GET", "/users/{user}", scopeTenant, s.tenant(users.get)},
		{"GET", "/channels", scopeTenant, s.tenant(channels.list)},
		{"POST", "/channels", scopeTenant, s.tenant(s.createChannel)},
		{"GET", "/channels/{channel}", scopeTenant, s.tenant(channels.get)},
		{"GET", "/channels/{channel}/messages", scopeTenant, s.tenant(s.listMessages)},
		{"POST", "/channels/{channel}/messages", scopeTenant, s.tenant(s.postMessage)},
		{"GET", "/messages/{message}", scopeTenant, s.tenant(s.getMessage)},
		{"PATCH", "/messages/{message}", scopeTenant, s.tenant(s.editMessage)},
		{"DELETE", "/messages/{message}", scopeTenant, s.tenant(s.deleteMessage)},
		{"GET", "/files", scopeTenant, s.tenant(files.list)},
		{"POST", "/files", scopeTenant, s.tenant(s.requireFeature("file_uploads", s.createFile))},
		{"GET", "/files/{file}", scopeTenant, s.tenant(files.get)},

		{"POST", "/admin/tenants", scopeOperator, s.operator(s.signUp)},
		{"GET", "/admin/tenants/{tenant}", scopeOperator, s.operator(s.showTenant)},
		{"POST", "/admin/tenants/{tenant}/suspend", scopeOperator, s.operator(s.suspend)},
		{"POST", "/admin/tenants/{tenant}/resume", scopeOperator, s.operator(s.resume)},
		{"GET", "/admin/tenants/{tenant}/export", scopeOperator, s.operator(s.export)},
		{"DELETE", "/admin/tenants/{tenant}", scopeOperator, s.operator(s.deleteTenant)},
		{"GET", "/admin/tenants/{tenant}/users", scopeOperator, s.operator(s.listLogins)},
		{"POST", "/admin/tenants/{tenant}/users", scopeOperator, s.operator(s.addLogin)},
		{"PUT", "/admin/tenants/{tenant}/users/{user}/password", scopeOperator, s.operator(s.setLoginPassword)},
		{"DELETE", "/admin/tenants/{tenant}/users/{user}", scopeOperator, s.operator(s.removeLogin)},
	}
	for _, rt := range s.routes {
		s.mux.Handle(rt.method+" "+rt.path, rt.handler)
		if rt.scope.underTenant() {
			s.mux.Handle(rt.method+" "+tenantPrefix+rt.path, rt.handler)
		}
	}
	return s, nil
}

// Close closes every tenant pool. Call it after the HTTP server stopped.
func (s *Server) Close() { s.pools.Close() }

// ServeHTTP logs and measures every request and answers unmatched paths and
// methods with problem documents too.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := &reqState{}
	r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	rw := &recorder{ResponseWriter: w, status: http.StatusOK}
	// Deferred, so that a response aborted by panic(http.ErrAbortHandler)
	// is logged and counted too.
	defer func() {
		route := routeLabel(r.Pattern)
		took := time.Since(start)
		code := strconv.Itoa(rw.status)
		if st.aborted {
			code = "aborted"
		}
		s.metrics.observe(route, st.tenant, code, took)
		s.log.Info("request", zap.String("method", r.Method), zap.String("route", route), zap.String("tenant", st.tenant),
			zap.String("status", code), zap.Duration("latency", took), zap.Int64("bytes", rw.bytes))
	}()
	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.unmatched(rw, r)
		return
	}
	s.mux.ServeHTTP(rw, r)
}

// unmatched lets the mux decide between 404 and 405 (with its Allow
// header) and sends that status as a problem instead of plain text.
func (s *Server) unmatched(w http.ResponseWriter, r *http.Request) {
	probe := &statusOnly{header: http.Header{}}
	s.mux.ServeHTTP(probe, r)
	if allow := probe.header.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
	}
	title := "Not found"
	detail := "no such endpoint; see /openapi.json"
	if probe.status == http.StatusMethodNotAllowed {
		title, detail = "Method not allowed", r.Method+" is not allowed here; allowed: "+probe.header.Get("Allow")
	}
	writeProblem(w, r, newProblem(probe.status, strings.ToLower(strings.ReplaceAll(title, " ", "-")), title, detail))
}

// routeLabel is a matched pattern without the tenant path prefix, so both
// spellings of a route share one label; unmatched requests share another.
func routeLabel(pattern string) string {
	if pattern == "" {
		return "unmatched"
	}
	return strings.Replace(pattern, " "+tenantPrefix+"/", " /", 1)
}

// plain adapts a handler that returns an error. An error after the
// response has begun (the client went away mid-body) can no longer reach
// the client as a problem, so it is only logged.
func (s *Server) plain(h plainHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r)
		if err == nil {
			return
		}
		if rw, ok := w.(*recorder); ok && rw.wrote {
			s.log.Debug("response failed after it began", zap.String("tenant", state(r).tenant), zap.Error(err))
			return
		}
		writeProblem(w, r, s.asProblem(r, err))
	})
}

// tenant identifies the request's tenant, refuses a request without a
// valid token of that tenant, refuses a tenant that is unknown, suspended
// or still being provisioned, and hands the handler a pool of connections
// to its data. The token's signature, expiry and tenant are checked before
// the tenant is looked up, so that an anonymous client cannot tell which
// tenants exist.
func (s *Server) tenant(h tenantHandler) http.Handler {
	return s.plain(func(w http.ResponseWriter, r *http.Request) error {
		id, err := identify(s.cfg.BaseDomain, r)
		if err != nil {
			return err
		}
		state(r).tenant = id
		c, err := s.bearer(w, r, id)
		if err != nil {
			return err
		}
		t, err := s.activeTenant(r.Context(), id)
		if err != nil {
			return err
		}
		if err := s.stillValid(r.Context(), w, c, t); err != nil {
			return err
		}
		tp, err := s.pools.acquire(r.Context(), t.ID)
		if errors.Is(err, catalog.ErrNotFound) {
			// Deleted since the (cached) look-up.
			return unknownTenant(id)
		}
		if err != nil {
			return err
		}
		defer tp.release()
		return h(w, r, &tenantReq{tenant: t, db: tp.Pool})
	})
}

// activeTenant looks id up in the catalog (cached, invalidated by
// LISTEN/NOTIFY) and refuses a tenant that may not reach its data.
func (s *Server) activeTenant(ctx context.Context, id string) (*catalog.Tenant, error) {
	t, err := s.cat.TenantBySubdomain(ctx, id)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, unknownTenant(id)
	}
	if err != nil {
		return nil, err
	}
	switch t.Status {
	case catalog.StatusActive:
		return t, nil
	case catalog.StatusSuspended:
		p := newProblem(http.StatusForbidden, "tenant-suspended", "Tenant suspended",
			"tenant \""+id+"\" is suspended; its data cannot be reached until it is resumed")
		p.Tenant = id
		return nil, p
	default:
		p := unavailable("tenant \"" + id + "\" is still being provisioned")
		p.Tenant = id
		return nil, p
	}
}

func unknownTenant(id string) *problem {
	p := newProblem(http.StatusNotFound, "unknown-tenant", "Unknown tenant", "tenant \""+id+"\" does not exist")
	p.Tenant = id
	return p
}

// planColumns are the tenant's plan and features (JSON) as the proxy sets
// them for SQL (current_setting('tenant.plan'), 'tenant.features'): the
// chat API reads them there rather than from its catalog look-up, so that
// it gates on exactly what the tenant's row-level policies see, and a
// change reaches it as it reaches them.
const planColumns = "current_setting('tenant.plan'), current_setting('tenant.features')"

// requireFeature answers 403 unless the tenant's plan enables feature.
func (s *Server) requireFeature(feature string, h tenantHandler) tenantHandler {
	return func(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
		var plan, features string
		if err := t.db.QueryRow(r.Context(), "SELECT "+planColumns).Scan(&plan, &features); err != nil {
			return err
		}
		if !hasFeature(features, feature) {
			p := newProblem(http.StatusForbidden, "feature-disabled", "Feature not enabled",
				"feature "+feature+" is not enabled for tenant \""+t.tenant.ID+"\" on plan "+plan)
			p.Tenant, p.Feature = t.tenant.ID, feature
			return p
		}
		return h(w, r, t)
	}
}

// hasFeature reports whether features, a JSON object, sets feature to
// true; anything else enables nothing.
func hasFeature(features, feature string) bool {
	var fs map[string]any
	if json.Unmarshal([]byte(features), &fs) != nil {
		return false
	}
	return fs[feature] == true
}

// operator checks the bearer token. Both sides are hashed first so the
// comparison takes the same time whatever the length of the guess.
func (s *Server) operator(h plainHandler) http.Handler {
	want := sha256.Sum256([]byte(s.cfg.OperatorToken))
	return s.plain(func(w http.ResponseWriter, r *http.Request) error {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		got := sha256.Sum256([]byte(token))
		if !ok || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tenantproxy-chatapi"`)
			return newProblem(http.StatusUnauthorized, "unauthorized", "Operator token required",
				"this endpoint needs the operator's bearer token")
		}
		return h(w, r)
	})
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(openAPI)
	return err
}

// reqState is what the outer middleware learns from the inner handlers.
type reqState struct {
	tenant string
	// aborted marks a response cut off after its status was sent.
	aborted bool
}

type stateKey struct{}

func state(r *http.Request) *reqState {
	if st, ok := r.Context().Value(stateKey{}).(*reqState); ok {
		return st
	}
	return &reqState{}
}

// recorder remembers the status and size of a response. Unwrap lets
// http.ResponseController reach the connection's Flush for streaming.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	wrote  bool
}

func (rw *recorder) WriteHeader(code int) {
	if !rw.wrote {
		rw.status, rw.wrote = code, true
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *recorder) Write(b []byte) (int, error) {
	rw.wrote = true
	n, err := rw.ResponseWriter.Write(b)
	rw.bytes += int64(n)
	return n, err
}

func (rw *recorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// statusOnly captures what the mux would answer for an unmatched request.
type statusOnly struct {
	header http.Header
	status int
}

func (s *statusOnly) Header() http.Header         { return s.header }
func (s *statusOnly) WriteHeader(code int)        { s.status = code }
func (s *statusOnly) Write(b []byte) (int, error) { return io.Discard.Write(b) }

// writeJSON sends v with status.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// maxBody bounds request bodies; chat messages are at most 40000
// characters, which fits with room to spare.
const maxBody = 1 << 20

// decode reads one JSON object into v, refusing unknown fields so that a
// misspelt field is an error rather than silently ignored.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalidBody("%v", err)
	}
	if dec.More() {
		return invalidBody("one JSON object expected")
	}
	return nil
}
