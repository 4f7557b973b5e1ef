package test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/chatapi"
)

// chatTenants are two tenants per tier. acme's free plan lacks
// file_uploads; hooli's trial plan has it.
var chatTenants = []struct {
	sub, plan string
	tier      catalog.Tier
}{
	{"acme", catalog.PlanFree, catalog.TierShared},
	{"hooli", catalog.PlanTrial, catalog.TierShared},
	{"globex", catalog.PlanStandard, catalog.TierSchema},
	{"umbrella", catalog.PlanStandard, catalog.TierSchema},
	{"initech", catalog.PlanEnterprise, catalog.TierDatabase},
	{"wayne", catalog.PlanEnterprise, catalog.TierDatabase},
}

// Identification styles; seeded tenants use them in turn so that every
// style carries real traffic.
const (
	byHost = iota
	byHeader
	byPath
)

// as builds a call for tenant sub in the given identification style.
func as(style int, sub, method, path string, body any) call {
	c := call{method: method, path: path, body: body}
	switch style {
	case byHost:
		c.host = hostOf(sub)
	case byHeader:
		c.tenant = sub
	case byPath:
		c.path = "/t/" + sub + path
	}
	return c
}

// seeded is what a tenant wrote through the API, as the test expects to
// read it back.
type seeded struct {
	sub     string
	style   int
	users   map[int64]string // id → username
	channel int64
	live    map[int64]string // message id → body
	files   []int64
}

func (s *seeded) call(method, path string, body any) call {
	return as(s.style, s.sub, method, path, body)
}

// seedChat gives tenant number i two users, a channel and 4+i messages, then
// deletes the message at position i and edits the last one, so tenants hold
// different id sets even where ids are numbered per tenant.
func seedChat(t *testing.T, e *chatEnv, i int, sub string, files bool) *seeded {
	t.Helper()
	s := &seeded{sub: sub, style: i % 3, users: map[int64]string{}, live: map[int64]string{}}
	var ids []int64
	for _, name := range []string{"alice", "bob"} {
		u := want[chatapi.User](t, e.do(t, s.call("POST", "/users", map[string]any{"username": name, "display_name": name + " of " + sub})), 201, "create user")
		s.users[u.ID] = name
		ids = append(ids, u.ID)
	}
	ch := want[chatapi.Channel](t, e.do(t, s.call("POST", "/channels", map[string]any{"name": "general", "created_by": ids[0]})), 201, "create channel")
	s.channel = ch.ID
	var msgs []int64
	for k := range 4 + i {
		body := fmt.Sprintf("%s says hello #%d", sub, k)
		m := want[chatapi.Message](t, e.do(t, s.call("POST", fmt.Sprintf("/channels/%d/messages", ch.ID),
			map[string]any{"author_id": ids[k%2], "body": body})), 201, "post message")
		if m.Body != body || m.ChannelID != ch.ID {
			t.Fatalf("posted %q in %d; got %+v", body, ch.ID, m)
		}
		s.live[m.ID] = body
		msgs = append(msgs, m.ID)
	}
	gone := msgs[i]
	want[any](t, e.do(t, s.call("DELETE", fmt.Sprintf("/messages/%d", gone), nil)), http.StatusNoContent, "delete own message")
	wantProblem(t, e.do(t, s.call("GET", fmt.Sprintf("/messages/%d", gone), nil)), 404, "not-found")
	delete(s.live, gone)
	last := msgs[len(msgs)-1]
	edited := want[chatapi.Message](t, e.do(t, s.call("PATCH", fmt.Sprintf("/messages/%d", last), map[string]any{"body": sub + " edited"})), 200, "edit own message")
	if edited.EditedAt == nil || edited.Body != sub+" edited" {
		t.Fatalf("edit: %+v; want the new body and edited_at", edited)
	}
	s.live[last] = sub + " edited"
	if files {
		f := want[chatapi.File](t, e.do(t, s.call("POST", "/files", map[string]any{
			"uploader_id": ids[0], "filename": sub + ".pdf", "content_type": "application/pdf", "size_bytes": 1234,
			"sha256": strings.Repeat("ab", 32)})), 201, "record file")
		s.files = append(s.files, f.ID)
	}
	return s
}

// TestChatAPI runs the chat API's end-to-end suites over real HTTP, the
// real proxy and PostgreSQL, on six tenants signed up through the API.
func TestChatAPI(t *testing.T) {
	e := newChatEnv(t, chatEnvOptions{metricTenants: []string{"acme"}})
	var tenants []*seeded
	for i, ct := range chatTenants {
		su := e.signUp(t, ct.sub, ct.plan)
		if su.Tenant.Tier != ct.tier || su.Tenant.Status != catalog.StatusActive || su.AdminPassword == "" {
			t.Fatalf("sign-up of %s: %+v; want an active %s-tier tenant and a generated admin password", ct.sub, su, ct.tier)
		}
		t.Logf("sign-up of %s (%s plan, %s tier) ready in %.1f ms: provision %.1f, service login %.1f, first query through the proxy %.1f",
			ct.sub, ct.plan, ct.tier, su.ReadyMS, su.Timings.ProvisionMS, su.Timings.ServiceLoginMS, su.Timings.FirstQueryMS)
		tenants = append(tenants, seedChat(t, e, i, ct.sub, ct.plan != catalog.PlanFree))
	}
	t.Run("EndUserAuth", func(t *testing.T) { testEndUserAuth(t, e, tenants) })
	t.Run("AnotherTenantsIDsAreNotFound", func(t *testing.T) { testCrossTenantIDs(t, e, tenants) })
	t.Run("ExportHasExactlyTheTenantsData", func(t *testing.T) { testExport(t, e, tenants) })
	t.Run("IdentificationStyles", func(t *testing.T) { testIdentification(t, e) })
	t.Run("ErrorCases", func(t *testing.T) { testErrorCases(t, e, tenants) })
	t.Run("MaxUsersHoldsUnderConcurrency", func(t *testing.T) { testMaxUsersConcurrently(t, e) })
	t.Run("KeysetPaginationNewestFirst", func(t *testing.T) { testPagination(t, e, tenants[5]) })
	t.Run("SignUpErrors", func(t *testing.T) { testSignUpErrors(t, e) })
	t.Run("GDPRDelete", func(t *testing.T) { testDelete(t, e) })
	t.Run("MetricsKeepTenantLabelsBounded", func(t *testing.T) { testMetrics(t, e) })
	t.Run("PoolsBeyondTheLRUAreClosedWithoutFailingRequests", func(t *testing.T) { testPoolEviction(t, e, tenants) })
}

// testCrossTenantIDs asks every tenant for every other tenant's message,
// channel and user ids. In the schema and database tiers each tenant
// numbers its own rows, so another tenant's id may also name one of the
// caller's own rows: then the caller must get its own row, never the other
// tenant's. Every other id must be a 404 for read, edit, delete and
// listing, and the other tenant's rows must be unchanged afterwards.
func testCrossTenantIDs(t *testing.T, e *chatEnv, tenants []*seeded) {
	for _, x := range tenants {
		notFound := 0
		for _, y := range tenants {
			if x == y {
				continue
			}
			for id, theirs := range y.live {
				path := fmt.Sprintf("/messages/%d", id)
				r := e.do(t, x.call("GET", path, nil))
				if mine, own := x.live[id]; own {
					if m := want[chatapi.Message](t, r, 200, "own message by id"); m.Body != mine {
						t.Fatalf("%s GET %s: %q; want its own %q (never %s's %q)", x.sub, path, m.Body, mine, y.sub, theirs)
					}
					continue
				}
				wantProblem(t, r, 404, "not-found")
				wantProblem(t, e.do(t, x.call("PATCH", path, map[string]any{"body": "hijacked by " + x.sub})), 404, "not-found")
				wantProblem(t, e.do(t, x.call("DELETE", path, nil)), 404, "not-found")
				notFound++
			}
			list := fmt.Sprintf("/channels/%d/messages", y.channel)
			if y.channel == x.channel {
				page := want[chatapi.Page[chatapi.Message]](t, e.do(t, x.call("GET", list, nil)), 200, "own channel")
				for _, m := range page.Items {
					if x.live[m.ID] != m.Body {
						t.Fatalf("%s lists %q in channel %d; want only its own messages", x.sub, m.Body, x.channel)
					}
				}
			} else {
				wantProblem(t, e.do(t, x.call("GET", list, nil)), 404, "not-found")
				wantProblem(t, e.do(t, x.call("POST", list, map[string]any{"author_id": 1, "body": "intruder"})), 404, "not-found")
				wantProblem(t, e.do(t, x.call("GET", fmt.Sprintf("/channels/%d", y.channel), nil)), 404, "not-found")
			}
			for id := range y.users {
				if _, own := x.users[id]; !own {
					wantProblem(t, e.do(t, x.call("GET", fmt.Sprintf("/users/%d", id), nil)), 404, "not-found")
					// Writing as another tenant's user fails too: in the
					// shared tier the foreign key includes the tenant.
					wantProblem(t, e.do(t, x.call("POST", fmt.Sprintf("/channels/%d/messages", x.channel),
						map[string]any{"author_id": id, "body": "spoofed"})), 422, "unknown-reference")
				}
			}
		}
		if notFound == 0 {
			t.Fatalf("%s met no foreign message id outside its own; the seed no longer tests isolation", x.sub)
		}
		t.Logf("%s: %d foreign message ids answered 404 to GET, PATCH and DELETE", x.sub, notFound)
	}
	for _, y := range tenants {
		page := want[chatapi.Page[chatapi.Message]](t, e.do(t, y.call("GET", fmt.Sprintf("/channels/%d/messages", y.channel), nil)), 200, "list")
		got := map[int64]string{}
		for _, m := range page.Items {
			got[m.ID] = m.Body
		}
		if !maps.Equal(got, y.live) {
			t.Fatalf("%s's messages after the other tenants' attempts: %v; want %v", y.sub, got, y.live)
		}
	}
}

type export struct {
	Tenant         catalog.Tenant       `json:"tenant"`
	Users          []chatapi.User       `json:"users"`
	Channels       []chatapi.Channel    `json:"channels"`
	ChannelMembers []chatapi.Membership `json:"channel_members"`
	Messages       []chatapi.Message    `json:"messages"`
	Files          []chatapi.File       `json:"files"`
}

func testExport(t *testing.T, e *chatEnv, tenants []*seeded) {
	for _, x := range tenants {
		r := e.do(t, call{method: "GET", path: "/admin/tenants/" + x.sub + "/export", operator: true})
		ex := want[export](t, r, 200, "export "+x.sub)
		if !strings.Contains(r.header.Get("Content-Disposition"), x.sub+"-export.json") {
			t.Errorf("export of %s: Content-Disposition %q", x.sub, r.header.Get("Content-Disposition"))
		}
		users := map[int64]string{}
		for _, u := range ex.Users {
			users[u.ID] = u.Username
		}
		msgs := map[int64]string{}
		for _, m := range ex.Messages {
			msgs[m.ID] = m.Body
		}
		var files []int64
		for _, f := range ex.Files {
			files = append(files, f.ID)
		}
		if ex.Tenant.ID != x.sub || !maps.Equal(users, x.users) || len(ex.Channels) != 1 || ex.Channels[0].ID != x.channel ||
			len(ex.ChannelMembers) != 1 || !maps.Equal(msgs, x.live) || !slices.Equal(files, x.files) {
			t.Fatalf("export of %s: %s\nwant users %v, channel %d with one member, messages %v, files %v",
				x.sub, r.body, x.users, x.channel, x.live, x.files)
		}
		for _, y := range tenants {
			if y != x && strings.Contains(string(r.body), y.sub+" says") {
				t.Fatalf("export of %s contains a message of %s", x.sub, y.sub)
			}
		}
	}
}

func testIdentification(t *testing.T, e *chatEnv) {
	for _, style := range []int{byHost, byHeader, byPath} {
		me := want[chatapi.Me](t, e.do(t, as(style, "globex", "GET", "/me", nil)), 200, "me")
		var features map[string]bool
		if me.Tenant != "globex" || me.IsolationLevel != catalog.TierSchema || me.Plan != catalog.PlanStandard ||
			me.Status != catalog.StatusActive || me.Limits.MaxUsers != 50 || me.Usage.Users != 2 || me.Usage.StorageBytes != 1234 ||
			json.Unmarshal(me.Features, &features) != nil || !features["file_uploads"] {
			t.Fatalf("GET /me of globex in style %d: %+v (features %s)", style, me, me.Features)
		}
	}
	// All three at once, agreeing.
	all := call{method: "GET", path: "/t/wayne/me", host: hostOf("wayne"), tenant: "wayne"}
	if me := want[chatapi.Me](t, e.do(t, all), 200, "me"); me.Tenant != "wayne" {
		t.Fatalf("Host, header and path naming wayne: %+v", me)
	}
	// The API's own host names no tenant, so the header decides.
	own := call{method: "GET", path: "/me", host: "api." + chatBaseDomain, tenant: "hooli"}
	if me := want[chatapi.Me](t, e.do(t, own), 200, "me"); me.Tenant != "hooli" {
		t.Fatalf("api host with X-Tenant-ID hooli: %+v", me)
	}
}

func testErrorCases(t *testing.T, e *chatEnv, tenants []*seeded) {
	t.Run("UnknownTenantLooksLikeAnyAnonymousCall401", func(t *testing.T) {
		// Without a token nothing tells whether the tenant exists; a
		// deleted tenant's token gets 404 (GDPRDelete).
		for _, style := range []int{byHost, byHeader, byPath} {
			r := e.do(t, as(style, "nosuch", "GET", "/me", nil))
			wantProblem(t, r, 401, "unauthenticated")
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("401 without a Bearer challenge: %v", r.header)
			}
		}
		wantProblem(t, e.login(t, "nosuch", "admin", "whatever-password"), 401, "unauthenticated")
	})
	t.Run("SuspendedTenant403", func(t *testing.T) {
		ten := want[catalog.Tenant](t, e.do(t, call{method: "POST", path: "/admin/tenants/umbrella/suspend", operator: true}), 200, "suspend")
		if ten.Status != catalog.StatusSuspended {
			t.Fatalf("suspend answered %+v", ten)
		}
		// Other processes learn of the change through the catalog's
		// notification, within milliseconds.
		eventually(t, e, as(byHeader, "umbrella", "GET", "/me", nil), 403)
		for _, c := range []call{as(byHost, "umbrella", "GET", "/me", nil), as(byPath, "umbrella", "GET", "/messages/1", nil),
			{method: "GET", path: "/admin/tenants/umbrella/export", operator: true}} {
			p := wantProblem(t, e.do(t, c), 403, "tenant-suspended")
			if p.Tenant != "umbrella" || !strings.Contains(p.Detail, "suspended") {
				t.Fatalf("suspended tenant: %+v", p)
			}
		}
		want[catalog.Tenant](t, e.do(t, call{method: "POST", path: "/admin/tenants/umbrella/resume", operator: true}), 200, "resume")
		eventually(t, e, as(byHeader, "umbrella", "GET", "/me", nil), 200)
	})
	t.Run("ConflictingTenants400", func(t *testing.T) {
		for _, c := range []call{
			{method: "GET", path: "/me", host: hostOf("acme"), tenant: "hooli"},
			{method: "GET", path: "/t/globex/me", tenant: "acme"},
			{method: "GET", path: "/t/globex/me", host: hostOf("acme")},
		} {
			p := wantProblem(t, e.do(t, c), 400, "conflicting-tenant")
			if !strings.Contains(p.Detail, "names") {
				t.Fatalf("conflict: %+v", p)
			}
		}
	})
	t.Run("BadIDs400", func(t *testing.T) {
		p := wantProblem(t, e.do(t, call{method: "GET", path: "/me", tenant: "Acme_Corp"}), 400, "invalid-tenant")
		if !strings.Contains(p.Detail, "Acme_Corp") {
			t.Fatalf("invalid tenant: %+v", p)
		}
		wantProblem(t, e.do(t, call{method: "GET", path: "/t/-acme/me"}), 400, "invalid-tenant")
		wantProblem(t, e.do(t, call{method: "GET", path: "/me", tenant: "www"}), 400, "invalid-tenant")
		for _, id := range []string{"abc", "0", "-3", "99999999999999999999"} {
			p := wantProblem(t, e.do(t, as(byHeader, "acme", "GET", "/messages/"+id, nil)), 400, "invalid-id")
			if !strings.Contains(p.Detail, id) {
				t.Fatalf("bad message id %s: %+v", id, p)
			}
		}
		wantProblem(t, e.do(t, as(byHeader, "acme", "GET", "/channels/1/messages?limit=1000", nil)), 400, "invalid-parameter")
	})
	t.Run("NoTenant400", func(t *testing.T) {
		wantProblem(t, e.do(t, call{method: "GET", path: "/me"}), 400, "tenant-required")
	})
	t.Run("FeatureOff403", func(t *testing.T) {
		p := wantProblem(t, e.do(t, as(byHeader, "acme", "POST", "/files", map[string]any{"uploader_id": 1, "filename": "x", "size_bytes": 1})),
			403, "feature-disabled")
		if p.Feature != "file_uploads" || p.Tenant != "acme" || !strings.Contains(p.Detail, "plan free") {
			t.Fatalf("feature off: %+v", p)
		}
	})
	t.Run("MaxUsers409", func(t *testing.T) {
		acme := tenants[0]
		for k := len(acme.users); k < 5; k++ {
			u := want[chatapi.User](t, e.do(t, acme.call("POST", "/users", map[string]any{"username": fmt.Sprintf("extra%d", k)})), 201, "user within limit")
			acme.users[u.ID] = u.Username
		}
		p := wantProblem(t, e.do(t, acme.call("POST", "/users", map[string]any{"username": "sixth"})), 409, "user-limit")
		if p.Limit != 5 || p.Tenant != "acme" || !strings.Contains(p.Detail, "free plan") {
			t.Fatalf("max users: %+v", p)
		}
		if me := want[chatapi.Me](t, e.do(t, acme.call("GET", "/me", nil)), 200, "me"); me.Usage.Users != 5 {
			t.Fatalf("acme has %d users; want 5", me.Usage.Users)
		}
	})
	t.Run("BodyAndReferenceErrors", func(t *testing.T) {
		wantProblem(t, e.do(t, as(byHeader, "hooli", "POST", "/users", map[string]any{"username": "x", "favourite_colour": "red"})), 400, "invalid-body")
		wantProblem(t, e.do(t, as(byHeader, "hooli", "POST", "/users", map[string]any{"display_name": "nameless"})), 400, "invalid-body")
		wantProblem(t, e.do(t, as(byHeader, "hooli", "POST", "/users", map[string]any{"username": "alice"})), 409, "conflict")
		wantProblem(t, e.do(t, as(byHeader, "hooli", "POST", "/channels", map[string]any{"name": "orphan", "created_by": 987654})), 422, "unknown-reference")
	})
	t.Run("RoutesAndOperator", func(t *testing.T) {
		wantProblem(t, e.do(t, as(byHeader, "hooli", "GET", "/nowhere", nil)), 404, "not-found")
		r := e.do(t, as(byHeader, "hooli", "PUT", "/me", nil))
		wantProblem(t, r, 405, "method-not-allowed")
		if r.header.Get("Allow") == "" {
			t.Fatalf("405 without Allow: %v", r.header)
		}
		r = e.do(t, call{method: "POST", path: "/admin/tenants/acme/suspend"})
		wantProblem(t, r, 401, "unauthorized")
		if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Fatalf("401 without a Bearer challenge: %v", r.header)
		}
		wantProblem(t, e.do(t, call{method: "POST", path: "/admin/tenants/nosuch/suspend", operator: true}), 404, "unknown-tenant")
	})
}

// testMaxUsersConcurrently races more sign-ups than hooli's trial plan has
// room for: exactly the remaining places are taken.
func testMaxUsersConcurrently(t *testing.T, e *chatEnv) {
	me := want[chatapi.Me](t, e.do(t, as(byHeader, "hooli", "GET", "/me", nil)), 200, "me")
	room := int64(me.Limits.MaxUsers) - me.Usage.Users
	var wg sync.WaitGroup
	codes := make(chan int, room+4)
	for k := range room + 4 {
		wg.Go(func() {
			r, err := e.try(http.DefaultClient, as(byHeader, "hooli", "POST", "/users", map[string]any{"username": fmt.Sprintf("racer%d", k)}))
			if err != nil {
				t.Error(err)
				return
			}
			codes <- r.status
		})
	}
	wg.Wait()
	close(codes)
	count := map[int]int64{}
	for c := range codes {
		count[c]++
	}
	if count[201] != room || count[409] != 4 {
		t.Fatalf("racing %d creates for %d places: %v; want %d created and 4 refused with 409", room+4, room, count, room)
	}
}

func testPagination(t *testing.T, e *chatEnv, s *seeded) {
	var got []int64
	path := fmt.Sprintf("/channels/%d/messages?limit=3", s.channel)
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
		page := want[chatapi.Page[chatapi.Message]](t, e.do(t, s.call("GET", path, nil)), 200, "page")
		for _, m := range page.Items {
			got = append(got, m.ID)
		}
		if page.Next == nil {
			break
		}
		path = fmt.Sprintf("/channels/%d/messages?limit=3&before=%d", s.channel, *page.Next)
	}
	wantIDs := slices.Sorted(maps.Keys(s.live))
	slices.Reverse(wantIDs)
	if !slices.Equal(got, wantIDs) {
		t.Fatalf("pages of 3: %v; want %v, newest first", got, wantIDs)
	}
}

func testSignUpErrors(t *testing.T, e *chatEnv) {
	p := wantProblem(t, e.do(t, call{method: "POST", path: "/admin/tenants", operator: true,
		body: chatapi.SignUpRequest{Subdomain: "acme", Plan: catalog.PlanFree}}), 409, "tenant-exists")
	if p.Tenant != "acme" {
		t.Fatalf("duplicate sign-up: %+v", p)
	}
	wantProblem(t, e.do(t, call{method: "POST", path: "/admin/tenants", operator: true,
		body: chatapi.SignUpRequest{Subdomain: "newco", Plan: "platinum"}}), 400, "invalid-body")
	wantProblem(t, e.do(t, call{method: "POST", path: "/admin/tenants", operator: true,
		body: chatapi.SignUpRequest{Subdomain: "api", Plan: catalog.PlanFree}}), 400, "invalid-body")
	wantProblem(t, e.do(t, call{method: "POST", path: "/admin/tenants",
		body: chatapi.SignUpRequest{Subdomain: "newco", Plan: catalog.PlanFree}}), 401, "unauthorized")
}

func testDelete(t *testing.T, e *chatEnv) {
	e.signUp(t, "gone", catalog.PlanFree)
	seedChat(t, e, 0, "gone", false)
	want[any](t, e.do(t, call{method: "DELETE", path: "/admin/tenants/gone", operator: true}), http.StatusNoContent, "delete")
	eventually(t, e, as(byHeader, "gone", "GET", "/me", nil), 404)
	wantProblem(t, e.do(t, as(byHeader, "gone", "GET", "/me", nil)), 404, "unknown-tenant")
	wantProblem(t, e.do(t, call{method: "DELETE", path: "/admin/tenants/gone", operator: true}), 404, "unknown-tenant")
	// A new tenant of the same name starts empty, and the old tenant's
	// token does not open it.
	old, _ := e.tokens.Load("gone")
	e.signUp(t, "gone", catalog.PlanFree)
	r := e.do(t, call{method: "GET", path: "/me", tenant: "gone", token: old.(string)})
	wantProblem(t, r, 401, "unauthenticated")
	if me := want[chatapi.Me](t, e.do(t, as(byHeader, "gone", "GET", "/me", nil)), 200, "me"); me.Usage.Users != 0 {
		t.Fatalf("re-created tenant has %d users; want 0", me.Usage.Users)
	}
}

func testMetrics(t *testing.T, e *chatEnv) {
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range families {
		if f.GetName() != "tenantproxy_chatapi_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" {
					seen[l.GetValue()] = true
				}
			}
		}
	}
	if !seen["acme"] || !seen["other"] || !seen["none"] || len(seen) != 3 {
		t.Fatalf("tenant label values %v; want exactly acme (opted in), other and none", seen)
	}
}

// eventually repeats c until it answers status, for changes that reach the
// API's catalog cache asynchronously.
func eventually(t *testing.T, e *chatEnv, c call, status int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := e.do(t, c)
		if r.status == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: still %s after 5 s; want %d", c.method, c.path, r, status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testPoolEviction runs a second API instance (replicas derive the same
// service passwords) whose LRU holds two tenant pools, and sends six
// tenants' requests at it concurrently: pools are evicted and closed while
// other requests are using them, and no request may fail for it.
func testPoolEviction(t *testing.T, e *chatEnv, tenants []*seeded) {
	// Everything the second instance starts, in the API and in the proxy
	// sessions it opens, must be gone once it is closed.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	reg := prometheus.NewRegistry()
	api, err := chatapi.New(chatapi.Config{
		ProxyDSN:       "postgres://" + e.proxyAddr + "/chat?sslmode=disable",
		ServiceSecret:  []byte("a-service-secret-of-at-least-32-bytes"),
		OperatorToken:  chatOperator,
		MaxTenantPools: 2,
		PoolMaxConns:   2,
		Registerer:     reg,
	}, e.cat)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	second := &chatEnv{url: srv.URL, tokens: e.tokens}
	var wg sync.WaitGroup
	for _, x := range tenants {
		for range 3 {
			wg.Go(func() {
				for range 8 {
					r, err := second.try(http.DefaultClient, as(byHeader, x.sub, "GET", fmt.Sprintf("/channels/%d/messages", x.channel), nil))
					if err != nil || r.status != 200 {
						t.Errorf("%s through a 2-pool API: %v %v", x.sub, r, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	srv.Close()
	if got := metricValue(t, reg, "tenantproxy_chatapi_tenant_pools"); got != 2 {
		t.Errorf("open pools = %v; want the LRU's 2", got)
	}
	closed := make(chan struct{})
	go func() { api.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return: an evicted pool was never closed")
	}
}

// metricValue is the value of the one unlabelled gauge or counter name.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name || len(f.GetMetric()) != 1 {
			continue
		}
		if m := f.GetMetric()[0]; m.GetGauge() != nil {
			return m.GetGauge().GetValue()
		} else if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no unlabelled gauge or counter %s", name)
	return 0
}
