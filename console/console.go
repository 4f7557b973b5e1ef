package console

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/scram"
	"github.com/tenantproxy/tenantproxy/pool"
)

// Databases are the virtual database names that reach the console, as in
// PgBouncer ("pgbouncer") and under the proxy's own name.
var Databases = []string{"pgbouncer", "tenantproxy"}

// IsDatabase reports whether a start-up packet's database names the
// console.
func IsDatabase(name string) bool {
	for _, d := range Databases {
		if name == d {
			return true
		}
	}
	return false
}

// Client is a client connection as SHOW CLIENTS lists it.
type Client struct {
	// User and Database are the client's user and tenant (for a console
	// client, the console user and the virtual database).
	User, Database string
	// Waiting: held by PAUSE or waiting for a server connection.
	Waiting                  bool
	Addr, LocalAddr          net.Addr
	ConnectTime, RequestTime time.Time
	TLS                      bool
	// ID is the client's cancel key process id.
	ID uint32
	// Link is the process id of the server connection a
	// transaction-mode client is pinned to by session state (LISTEN,
	// temporary tables, …) until it disconnects, 0 for none: SHOW
	// CLIENTS' link and remote_pid, as PgBouncer shows a client's server.
	Link uint32
}

// TenantState is what the proxy knows of one tenant's clients.
type TenantState struct {
	// Clients are in session; Held of them wait for RESUME.
	Clients, Held int
	// IsPaused and IsDisabled: the console's PAUSE and DISABLE are on
	// (PAUSE of every tenant included).
	IsPaused, IsDisabled  bool
	Queries, Transactions uint64
	// Received and Sent are bytes from and to the tenant's clients.
	Received, Sent uint64
	// Assignments counts server connections bound to the tenant's
	// clients; QueryTime, XactTime and WaitTime (for a server
	// connection) are totals in microseconds.
	Assignments                   uint64
	QueryTime, XactTime, WaitTime uint64
}

// Setting is one row of SHOW CONFIG.
type Setting struct {
	Key, Value, Default string
	// Changeable: a reload applies it.
	Changeable bool
}

// Proxy is the client side the console reads and steers;
// *proxy.Server implements it. Tenant names are subdomains.
type Proxy interface {
	Clients() []Client
	TenantStates() map[string]TenantState
	// PoolMode is the tenant's effective pool mode.
	PoolMode(t *catalog.Tenant) string
	// MaxClientsPerTenant is the per-tenant client cap, 0 for none.
	MaxClientsPerTenant() int
	Settings() []Setting
	// Pause holds the tenant's new transactions (and logins); "" pauses
	// every tenant. Resume releases them.
	Pause(tenant string)
	Resume(tenant string)
	// Disable refuses the tenant's new logins; Enable lets them in again.
	Disable(tenant string)
	Enable(tenant string)
	// Kill ends the tenant's client sessions now and returns how many.
	Kill(tenant string) int
}

// Pools is the server side; *pool.Manager implements it.
type Pools interface {
	Stats() pool.Stats
	Reconnect(database string)
	Config() pool.Config
}

// Tenants lists the tenants; *catalog.Catalog implements it.
type Tenants interface {
	List(ctx context.Context) ([]catalog.Tenant, error)
}

var (
	_ Pools   = (*pool.Manager)(nil)
	_ Tenants = (*catalog.Catalog)(nil)
)

// Config configures a Console.
type Config struct {
	// User and Password are the console's login; both are required.
	User, Password string
	Tenants        Tenants
	Pools          Pools
	// Version is the build SHOW VERSION reports ("tenantproxy v1.2.0
	// 1a2b3c go1.24"). Zero means "tenantproxy".
	Version string
	// Reload and Shutdown run RELOAD and SHUTDOWN; nil refuses them.
	Reload   func() error
	Shutdown func()
	// Logger logs the commands that change state. Nil discards.
	Logger *zap.Logger
}

// Console serves console connections; it holds no per-connection state.
type Console struct {
	cfg      Config
	verifier scram.Verifier
	// started is when the averages of SHOW STATS begin.
	started time.Time
}

// maxQuery bounds a console message: commands are one short line.
const maxQuery = 64 << 10

// New derives the console user's SCRAM verifier from cfg.Password.
func New(cfg Config) (*Console, error) {
	if cfg.User == "" || cfg.Password == "" {
		return nil, errors.New("console: a user and a password are required")
	}
	if cfg.Tenants == nil || cfg.Pools == nil {
		return nil, errors.New("console: Tenants and Pools are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Version == "" {
		cfg.Version = "tenantproxy"
	}
	salt := make([]byte, 16)
	rand.Read(salt)
	v, err := scram.Derive(cfg.Password, salt, scram.DefaultIterations)
	if err != nil {
		return nil, fmt.Errorf("console: password: %w", err)
	}
	return &Console{cfg: cfg, verifier: v, started: time.Now()}, nil
}

// User is the console user's name.
func (c *Console) User() string { return c.cfg.User }

// Verifier is the SCRAM verifier of user, and false for any other name.
func (c *Console) Verifier(user string) (scram.Verifier, bool) {
	if user != c.cfg.User {
		return scram.Verifier{}, false
	}
	return c.verifier, true
}

// Serve runs the console for conn, whose user the proxy has
// authenticated (AuthenticationSASLFinal sent): it completes the start-up
// and answers queries until the client terminates, conn fails or ctx
// ends. It does not close conn.
func (c *Console) Serve(ctx context.Context, conn net.Conn, p Proxy) error {
	be := pgproto3.NewBackend(conn, conn)
	be.SetMaxBodyLen(maxQuery)
	s := &session{console: c, proxy: p, be: be}
	s.greet()
	if err := be.Flush(); err != nil {
		return err
	}
	// Extended-protocol messages are refused once, up to their Sync.
	failed := false
	for ctx.Err() == nil {
		msg, err := be.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			s.query(ctx, m.String)
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Terminate:
			return nil
		case *pgproto3.Sync:
			failed = false
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Flush:
		default:
			if !failed {
				s.fail("the admin console supports the simple query protocol only")
			}
			failed = true
		}
		if err := be.Flush(); err != nil {
			return err
		}
		if s.closing {
			return nil
		}
	}
	return ctx.Err()
}

// session is one console connection.
type session struct {
	console *Console
	proxy   Proxy
	be      *pgproto3.Backend
	// closing: SHUTDOWN ran; the connection ends after its reply.
	closing bool
}

// greet is what PgBouncer's console tells a client at start-up: no
// PostgreSQL server stands behind it, so the settings are its own.
func (s *session) greet() {
	s.be.Send(&pgproto3.AuthenticationOk{})
	for _, ps := range [][2]string{
		{"server_version", "1.23.1/tenantproxy"},
		{"client_encoding", "UTF8"},
		{"server_encoding", "UTF8"},
		{"standard_conforming_strings", "on"},
		{"DateStyle", "ISO"},
		{"TimeZone", "UTC"},
		{"integer_datetimes", "on"},
	} {
		s.be.Send(&pgproto3.ParameterStatus{Name: ps[0], Value: ps[1]})
	}
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
}

// fail answers with PgBouncer's console error: ERROR, SQLSTATE 08P01.
func (s *session) fail(format string, args ...any) {
	s.be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "08P01", Message: fmt.Sprintf(format, args...)})
}

// done completes a command that returns no rows.
func (s *session) done(tag string) {
	s.be.Send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
}
