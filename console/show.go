package console

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"net"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/pool"
)

// Type OIDs of the console's columns, as PgBouncer uses them.
const (
	oidText    = 25
	oidInt4    = 23
	oidNumeric = 1700
)

// table is one result set being built.
type table struct {
	fields []pgproto3.FieldDescription
	rows   [][][]byte
}

// newTable declares the columns: names paired with type OIDs.
func newTable(cols ...any) *table {
	t := &table{}
	for i := 0; i < len(cols); i += 2 {
		oid := uint32(cols[i+1].(int))
		size := int16(-1)
		if oid == oidInt4 {
			size = 4
		}
		t.fields = append(t.fields, pgproto3.FieldDescription{Name: []byte(cols[i].(string)), DataTypeOID: oid, DataTypeSize: size, TypeModifier: -1})
	}
	return t
}

// columns declares same-typed columns.
func columns(oid int, names ...string) []any {
	cols := make([]any, 0, 2*len(names))
	for _, n := range names {
		cols = append(cols, n, oid)
	}
	return cols
}

// row adds a row: strings, ints, time.Time, or nil (NULL).
func (t *table) row(values ...any) {
	r := make([][]byte, len(values))
	for i, v := range values {
		switch v := v.(type) {
		case nil:
		case string:
			r[i] = []byte(v)
		case int:
			r[i] = strconv.AppendInt(nil, int64(v), 10)
		case uint64:
			r[i] = strconv.AppendUint(nil, v, 10)
		case uint32:
			r[i] = strconv.AppendUint(nil, uint64(v), 10)
		case bool:
			r[i] = []byte("0")
			if v {
				r[i] = []byte("1")
			}
		case time.Time:
			r[i] = []byte(v.UTC().Format("2006-01-02 15:04:05 MST"))
		default:
			panic(fmt.Sprintf("console: no text form for %T", v))
		}
	}
	t.rows = append(t.rows, r)
}

func (s *session) send(t *table) {
	s.be.Send(&pgproto3.RowDescription{Fields: t.fields})
	for _, r := range t.rows {
		s.be.Send(&pgproto3.DataRow{Values: r})
	}
	s.done("SHOW")
}

// show answers SHOW what.
func (s *session) show(ctx context.Context, q, what string) {
	var t *table
	var err error
	switch what {
	case "HELP":
		s.be.Send(&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: "Console usage", Detail: helpText})
		s.done("SHOW")
		return
	case "VERSION":
		t = newTable("version", oidText)
		t.row(s.console.cfg.Version + " (PgBouncer 1.23 console)")
	case "CLIENTS":
		t = s.clients()
	case "SERVERS":
		t = s.servers()
	case "CONFIG":
		t = s.config()
	case "LISTS":
		t, err = s.lists(ctx)
	case "POOLS":
		t, err = s.pools(ctx)
	case "DATABASES":
		t, err = s.databases(ctx)
	case "STATS":
		t, err = s.stats(ctx, true)
	case "STATS_TOTALS":
		t, err = s.stats(ctx, false)
	default:
		s.fail("invalid command '%s', use SHOW HELP;", q)
		return
	}
	if err != nil {
		s.fail("%v", err)
		return
	}
	s.send(t)
}

// socketTable has SHOW CLIENTS' and SHOW SERVERS' columns.
func socketTable() *table {
	return newTable(
		"type", oidText, "user", oidText, "database", oidText, "replication", oidText, "state", oidText,
		"addr", oidText, "port", oidInt4, "local_addr", oidText, "local_port", oidInt4,
		"connect_time", oidText, "request_time", oidText, "wait", oidInt4, "wait_us", oidInt4,
		"close_needed", oidInt4, "ptr", oidText, "link", oidText, "remote_pid", oidInt4, "tls", oidText,
		"application_name", oidText, "prepared_statements", oidInt4, "id", oidInt4)
}

// hostPort splits "host:port"; anything else (a unix socket) is a host
// with port 0.
func hostPort(addr string) (string, int) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, 0
	}
	n, _ := strconv.Atoi(port)
	return host, n
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func (s *session) clients() *table {
	t := socketTable()
	cls := s.proxy.Clients()
	sort.Slice(cls, func(i, j int) bool { return cls[i].ID < cls[j].ID })
	for _, c := range cls {
		host, port := hostPort(addrString(c.Addr))
		lhost, lport := hostPort(addrString(c.LocalAddr))
		state, tls := "active", ""
		if c.Waiting {
			state = "waiting"
		}
		if c.TLS {
			tls = "TLS"
		}
		link := ""
		if c.Link != 0 {
			link = fmt.Sprintf("0x%x", c.Link)
		}
		t.row("C", c.User, c.Database, "none", state, host, port, lhost, lport,
			c.ConnectTime, c.RequestTime, 0, 0, 0, fmt.Sprintf("0x%x", c.ID), link, c.Link, tls, "", 0, c.ID)
	}
	return t
}

// servers lists every server connection; database is the backend's
// database, link the tenant holding it.
func (s *session) servers() *table {
	t := socketTable()
	servers := s.console.cfg.Pools.Stats().Servers
	sort.Slice(servers, func(i, j int) bool { return servers[i].PID < servers[j].PID })
	for _, c := range servers {
		host, port := hostPort(c.Addr)
		lhost, lport := hostPort(c.LocalAddr)
		request := c.Since
		if request.IsZero() {
			request = c.Created
		}
		t.row("S", c.User, c.Database, "none", c.State, host, port, lhost, lport,
			c.Created, request, 0, 0, 0, fmt.Sprintf("0x%x", c.PID), c.Tenant, c.PID, "", "", 0, c.PID)
	}
	return t
}

func (s *session) config() *table {
	t := newTable(columns(oidText, "key", "value", "default", "changeable")...)
	pc := s.console.cfg.Pools.Config()
	settings := append(s.proxy.Settings(),
		Setting{Key: "admin_users", Value: s.console.cfg.User},
		Setting{Key: "default_pool_size", Value: strconv.Itoa(pc.MaxConnsPerKey), Default: "20"},
		Setting{Key: "max_user_connections", Value: strconv.Itoa(max(pc.MaxConnsPerTenant, 0)), Default: "0"},
		Setting{Key: "min_pool_size", Value: strconv.Itoa(pc.MinIdle), Default: "0"},
		Setting{Key: "query_wait_timeout", Value: seconds(pc.WaitTimeout), Default: "10"},
		Setting{Key: "server_idle_timeout", Value: seconds(pc.IdleTimeout), Default: "300"},
		Setting{Key: "server_lifetime", Value: seconds(pc.MaxLifetime), Default: "3600"},
		Setting{Key: "server_connect_timeout", Value: seconds(pc.ConnectTimeout), Default: "10"},
	)
	sort.Slice(settings, func(i, j int) bool { return settings[i].Key < settings[j].Key })
	for _, st := range settings {
		ch := "no"
		if st.Changeable {
			ch = "yes"
		}
		t.row(st.Key, st.Value, st.Default, ch)
	}
	return t
}

// seconds renders d as PgBouncer does its timeouts: whole seconds.
func seconds(d time.Duration) string { return strconv.FormatInt(int64(d/time.Second), 10) }

func (s *session) lists(ctx context.Context) (*table, error) {
	ts, err := s.console.cfg.Tenants.List(ctx)
	if err != nil {
		return nil, err
	}
	st := s.console.cfg.Pools.Stats()
	free := 0
	for _, p := range st.Pools {
		free += p.Idle
	}
	t := newTable("list", oidText, "items", oidInt4)
	for _, r := range []struct {
		name string
		n    int
	}{
		{"databases", len(ts)}, {"users", 1}, {"peers", 0}, {"pools", len(ts)}, {"peer_pools", 0},
		{"free_clients", 0}, {"used_clients", len(s.proxy.Clients())}, {"login_clients", 0},
		{"free_servers", free}, {"used_servers", len(st.Servers) - free},
		{"dns_names", 0}, {"dns_zones", 0}, {"dns_queries", 0}, {"dns_pending", 0},
	} {
		t.row(r.name, r.n)
	}
	return t, nil
}

// perTenant is what the pools hold and wait for on behalf of one tenant,
// summed over pools.
type perTenant struct {
	user          string
	held, waiting int
	maxWait       time.Duration
}

func tenantShares(st pool.Stats) map[string]perTenant {
	m := make(map[string]perTenant)
	for _, sh := range st.Tenants {
		pt := m[sh.Tenant]
		pt.user = sh.User
		pt.held += sh.Held
		pt.waiting += sh.Waiting
		pt.maxWait = max(pt.maxWait, sh.MaxWait)
		m[sh.Tenant] = pt
	}
	return m
}

// pools is one row per tenant: its clients, and the server connections
// held for it. Idle connections belong to no tenant (they are shared), so
// sv_idle is 0 here; SHOW SERVERS and SHOW LISTS count them.
func (s *session) pools(ctx context.Context) (*table, error) {
	ts, err := s.console.cfg.Tenants.List(ctx)
	if err != nil {
		return nil, err
	}
	shares := tenantShares(s.console.cfg.Pools.Stats())
	states := s.proxy.TenantStates()
	t := newTable(append(append([]any{"database", oidText, "user", oidText},
		columns(oidInt4, "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
			"sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
			"maxwait", "maxwait_us")...), "pool_mode", oidText, "load_balance_hosts", oidText)...)
	for i := range ts {
		tn := &ts[i]
		sh, st := shares[tn.Subdomain], states[tn.Subdomain]
		waiting := min(st.Held+sh.waiting, st.Clients)
		t.row(tn.Subdomain, sh.user, st.Clients-waiting, waiting, 0, 0,
			sh.held, 0, 0, 0, 0, 0, 0,
			int(sh.maxWait/time.Second), int(sh.maxWait%time.Second/time.Microsecond), s.proxy.PoolMode(tn), nil)
	}
	return t, nil
}

// databases is one row per tenant, as PgBouncer lists its databases:
// host is the catalog's backend name.
func (s *session) databases(ctx context.Context) (*table, error) {
	ts, err := s.console.cfg.Tenants.List(ctx)
	if err != nil {
		return nil, err
	}
	pc := s.console.cfg.Pools.Config()
	states := s.proxy.TenantStates()
	t := newTable("name", oidText, "host", oidText, "port", oidInt4, "database", oidText, "force_user", oidText,
		"pool_size", oidInt4, "min_pool_size", oidInt4, "reserve_pool", oidInt4, "server_lifetime", oidInt4,
		"pool_mode", oidText, "load_balance_hosts", oidText, "max_connections", oidInt4,
		"current_connections", oidInt4, "paused", oidInt4, "disabled", oidInt4)
	for i := range ts {
		tn := &ts[i]
		st := states[tn.Subdomain]
		t.row(tn.Subdomain, tn.Backend, nil, tn.Database, nil,
			max(pc.MaxConnsPerTenant, 0), pc.MinIdle, 0, int(pc.MaxLifetime/time.Second),
			s.proxy.PoolMode(tn), nil, s.proxy.MaxClientsPerTenant(),
			st.Clients, st.IsPaused, st.IsDisabled)
	}
	return t, nil
}

// stats is SHOW STATS (totals and averages) or SHOW STATS_TOTALS, one row
// per tenant, times in microseconds. Parses and binds are not counted and
// read 0. The averages are since the console started, not over
// PgBouncer's last stats_period: counts and bytes per second, query and
// transaction times per query and per transaction, wait time per server
// assignment.
func (s *session) stats(ctx context.Context, withAverages bool) (*table, error) {
	ts, err := s.console.cfg.Tenants.List(ctx)
	if err != nil {
		return nil, err
	}
	cols := []string{"server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent",
		"xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count"}
	if withAverages {
		cols = nil
		for _, n := range []string{"server_assignment_count", "xact_count", "query_count", "received", "sent",
			"xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count"} {
			cols = append(cols, "total_"+n)
		}
		for _, n := range []string{"server_assignment_count", "xact_count", "query_count", "recv", "sent",
			"xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count"} {
			cols = append(cols, "avg_"+n)
		}
	}
	t := newTable(append([]any{"database", oidText}, columns(oidNumeric, cols...)...)...)
	states := s.proxy.TenantStates()
	// Whole seconds, as PgBouncer's rates, and never 0.
	secs := max(uint64(time.Since(s.console.started)/time.Second), 1)
	for i := range ts {
		st := states[ts[i].Subdomain]
		totals := []uint64{st.Assignments, st.Transactions, st.Queries, st.Received, st.Sent,
			st.XactTime, st.QueryTime, st.WaitTime, 0, 0, 0}
		row := []any{ts[i].Subdomain}
		for _, v := range totals {
			row = append(row, v)
		}
		if withAverages {
			row = append(row, st.Assignments/secs, st.Transactions/secs, st.Queries/secs,
				st.Received/secs, st.Sent/secs, perEvent(st.XactTime, st.Transactions),
				perEvent(st.QueryTime, st.Queries), perEvent(st.WaitTime, st.Assignments),
				uint64(0), uint64(0), uint64(0))
		}
		t.row(row...)
	}
	return t, nil
}

// perEvent is total/n, 0 with no event.
func perEvent(total, n uint64) uint64 {
	if n == 0 {
		return 0
	}
	return total / n
}
