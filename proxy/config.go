package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/console"
	"github.com/tenantproxy/tenantproxy/router"
)

// Auth methods for Config.AuthMethod.
const (
	// AuthSCRAM authenticates clients with SCRAM-SHA-256 against the
	// catalog's verifiers. md5 is not offered: the catalog stores SCRAM
	// verifiers only, from which an md5 exchange cannot be checked.
	AuthSCRAM = "scram-sha-256"
	// AuthTrust lets any existing user of the tenant in without a password.
	// Meant for the demo only.
	AuthTrust = "trust"
)

// Config configures a Server. The zero value (plus Directory and Backends
// given to New) serves plaintext SCRAM on 127.0.0.1:6432. Fields marked
// "live" take effect for new connections on Reload; the others are read
// once by New.
type Config struct {
	// Listen are the TCP addresses ListenAndServe listens on. Zero means
	// "127.0.0.1:6432". Live: Reload opens added addresses and closes
	// removed ones (their sessions go on).
	Listen []string
	// UnixSocket is a path ListenAndServe also listens on (e.g.
	// /run/tenantproxy/.s.PGSQL.6432). Empty means none. Read once by
	// ListenAndServe.
	UnixSocket string

	// TLSCertFile and TLSKeyFile are a PEM certificate and key; when both
	// are set, SSLRequest is answered with TLS, otherwise with 'N'. Live:
	// Reload re-reads the files.
	TLSCertFile, TLSKeyFile string
	// TLS, when non-nil, is used as is instead of the files (tests, demo).
	// Live.
	TLS *tls.Config
	// RequireTLS refuses clients that did not negotiate TLS (28000). Live.
	RequireTLS bool

	// Identify says where tenants are named: base domain for SNI, order
	// of sources, user separator. Live.
	Identify router.IdentifyConfig

	// AuthMethod is AuthSCRAM or AuthTrust. Zero means AuthSCRAM. Live.
	AuthMethod string
	// MaxLoginFailures is how many failed logins one source address may
	// make for one tenant user (and 4 times as many over all users) before
	// its attempts are slowed down: each is held up to 1 s before its
	// password is checked and, if it fails, answered only after a delay
	// from 250 ms doubling up to MaxLoginDelay. A correct password is never
	// refused and never held longer than 1 s (throttle.go). Zero means 5;
	// negative disables throttling. Live.
	MaxLoginFailures int
	// LoginFailureWindow is how long failures are remembered after the
	// last one. Zero means 1 min. Live.
	LoginFailureWindow time.Duration
	// MaxLoginDelay caps how long a failed login's answer is held. Zero
	// means 5 s. Live.
	MaxLoginDelay time.Duration
	// SaltSecret is secret material every replica of the proxy shares
	// (serve passes the catalog DSN, whose password strangers lack). The
	// fake SCRAM salts shown for unknown users and tenants are derived from
	// it, so that every replica, before and after a restart, shows the same
	// salt for the same name, as it does for a real user. Empty means a
	// random key per process: a stranger comparing two replicas, or one
	// replica across a restart, could tell unknown names from known ones.
	// Read once by New.
	SaltSecret string

	// StartupTimeout bounds everything from accept to the first
	// ReadyForQuery: TLS, startup packet, authentication, server
	// connection. Zero means 15 s. Live.
	StartupTimeout time.Duration
	// MaxStartupPacket bounds the startup packet in bytes. Zero means
	// 10000, PostgreSQL's own limit. Live.
	MaxStartupPacket int
	// MaxMessageSize bounds a client message in bytes once the session
	// runs. Zero means 64 MiB. Live.
	MaxMessageSize int
	// Extensions are the extensions a tenant's CREATE EXTENSION IF NOT
	// EXISTS may name (policy.NewWith): PostgreSQL skips an installed one
	// and installs a missing trusted one only where the role may. Nil
	// means policy.DefaultExtensions (plpgsql); empty, none. Read once by
	// New.
	Extensions []string
	// MaxBufferedBytes caps the memory all sessions together hold for
	// client messages longer than pgwire.MaxRetained (64 KiB) that the
	// proxy reads whole: statements (Query, Parse), which the policy must
	// see whole, and in transaction mode every message. A session
	// holds one only while passing it on; transaction mode counts it
	// twice (read, then copied into the write to the server). A client
	// whose message does not fit waits up to 5 s for others to be passed
	// on, then gets FATAL 53200 and is disconnected without the rest
	// being read. Zero means 256 MiB (four messages of MaxMessageSize's
	// default at once in session mode, two in transaction mode); negative
	// means no cap. Live: Reload changes the cap for every session at
	// once; what is held stays held.
	MaxBufferedBytes int
	// MaxConnsPerTenant caps a tenant's client connections to the proxy
	// (FATAL 53300). Zero means no cap. Live. Server connections are
	// capped per pool by pool.Config.MaxConnsPerTenant (by default half of
	// each pool), which is what keeps one tenant's clients from taking a
	// pool other tenants share.
	MaxConnsPerTenant int
	// MaxPinnedPerTenant caps the server connections one tenant's
	// transaction-mode clients keep pinned at once by session state
	// (txpin.go); a statement past it fails with ERROR 53400. A tenant's
	// catalog setting {"max_pinned_conns": N} overrides it. Zero means a
	// quarter of what one tenant may hold of a pool
	// (pool.Config.MaxConnsPerTenant, 10 by default), at least 1;
	// negative means no cap. Live (for sessions started after the
	// reload).
	MaxPinnedPerTenant int
	// Database, when set, is the one database name clients may connect
	// to, whatever their tenant (the app's name for its database, e.g.
	// "chat"); another gets FATAL 3D000 after authentication, as from
	// PostgreSQL. Empty accepts any name. Either way the session reaches
	// the tenant's real database, whose name current_database() shows.
	// Live.
	Database string
	// MaxStartupConns caps the connections in start-up, from accept to
	// authentication, over all listeners. At the cap, the oldest
	// connection still in start-up is closed to make room for the new
	// one (accept.go says why). Zero means 1000; negative means no cap.
	// Live (for connections accepted after the reload).
	MaxStartupConns int
	// MaxStartupConnsPerAddr caps the connections in start-up from one
	// source address (an IPv4 address, or an IPv6 /64); over it a new
	// connection is answered FATAL 53300 "sorry, too many clients
	// already" and closed. Unix-socket connections count only towards
	// MaxStartupConns. Zero means 100; negative means no cap. Live.
	MaxStartupConnsPerAddr int
	// IdleInTransactionTimeout ends a session whose transaction stays open
	// (status T or E) with the client sending nothing for longer: FATAL
	// 25P03 "terminating connection due to idle-in-transaction timeout",
	// as PostgreSQL says it. An open transaction holds a server connection
	// of a pool other tenants share, and locks, so the tenant must not be
	// able to lift it: in transaction mode the proxy times the client's
	// silence itself (idletx.go) and rolls the server connection back into
	// the pool; in session mode it sets PostgreSQL's
	// idle_in_transaction_session_timeout in the session's setup, and the
	// statement policy refuses changing that setting outside the database
	// tier, whose database and pool are the tenant's own. Zero means 60 s;
	// negative disables. Live (for sessions started after the reload).
	IdleInTransactionTimeout time.Duration
	// PoolMode is the default pool mode of tenants whose catalog settings
	// name none ({"pool_mode": "session"} or "transaction"): PoolSession
	// or PoolTransaction. Zero means PoolSession. Live.
	PoolMode string
	// DrainTimeout is how long Shutdown lets open transactions finish
	// before ending sessions with 57P01. Zero means 30 s. Live.
	DrainTimeout time.Duration
	// CancelTimeout bounds forwarding one CancelRequest to a server. Zero
	// means 5 s. A server connection whose request the server has not
	// answered by then is closed rather than reused (the request may
	// still be acted on).
	CancelTimeout time.Duration

	// PeerID, from 1 to MaxPeerID, makes this instance one of a peering:
	// instances behind one TCP load balancer, each with its own id, that
	// pass each other the cancel requests the balancer sent to the wrong
	// one (peers.go). The id is written into the cancel keys handed out.
	// Zero means no peering: keys are fully random and a request with an
	// unknown key is dropped. Read once by New.
	PeerID int
	// Peers maps peer ids to the host:port of the instance with that id,
	// where cancel requests with its keys are forwarded (in plaintext:
	// keep peers on a private network). An entry for PeerID itself is
	// ignored, so every instance can be given the same list. Read once
	// by New.
	Peers map[int]string

	// Console serves the admin console (package console) to its user on
	// the virtual databases console.Databases, always authenticated with
	// SCRAM-SHA-256, whatever AuthMethod says. Nil means no console: those
	// database names then mean nothing special. Read once by New.
	Console *console.Console

	// Logger receives one line per session and errors. Nil means no logs.
	Logger *zap.Logger
	// Registerer receives the proxy's metrics. Nil means not registered.
	Registerer prometheus.Registerer
	// MetricsTenants is how many tenants, the busiest by transactions,
	// get a tenant label value of their own on the per-tenant metrics;
	// the others count under tenant="other" (tenantlabels.go), so the
	// series stay bounded however many tenants there are. Zero means 20;
	// negative means none (every tenant under "other"). Read once by New.
	MetricsTenants int
	// MetricsRankInterval is how often the busiest tenants are ranked
	// again (at a scrape, never on the relay's path), and the window the
	// per-tier spread of p99 latencies is measured over. Zero means 1 min.
	// Read once by New.
	MetricsRankInterval time.Duration
}

const (
	defaultMetricsTenants      = 20
	defaultMetricsRankInterval = time.Minute
	defaultListen              = "127.0.0.1:6432"
	defaultMaxLoginFailures    = 5
	defaultLoginFailureWindow  = time.Minute
	defaultMaxLoginDelay       = 5 * time.Second
	defaultStartupTimeout      = 15 * time.Second
	defaultMaxStartupPacket    = 10000
	defaultMaxMessageSize      = 64 << 20
	defaultMaxBufferedBytes    = 256 << 20
	defaultDrainTimeout        = 30 * time.Second
	defaultCancelTimeout       = 5 * time.Second
	// A transaction idle for a minute is a bug or an attack: interactive
	// work (psql) between statements rarely pauses that long, and a
	// minute of a held connection and its locks is what one tenant may
	// cost the others.
	defaultIdleInTransactionTimeout = time.Minute
	// minStartupPacket fits an SSLRequest: length and code.
	minStartupPacket = 8
)

const (
	// A login spends milliseconds in start-up (the SCRAM exchange and a
	// catalog look-up, cached), so even a fleet reconnecting at once after
	// a restart rarely has 1,000 in start-up together, while 1,000 idle
	// ones cost the proxy only 1,000 goroutines and descriptors (Go
	// raises the soft limit of open files to the hard one at start).
	defaultMaxStartupConns = 1000
	// One host rarely has more than 100 logins in flight at once (pools
	// and pgbench's threads open connections a few at a time), and 100 per
	// address keeps one stranger from taking more than a tenth of
	// MaxStartupConns. Hosts behind one NAT address share it: raise it
	// for them.
	defaultMaxStartupConnsPerAddr = 100
)

// withDefaults fills zero fields and validates the rest, loading TLS
// files.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if len(c.Listen) == 0 {
		c.Listen = []string{defaultListen}
	}
	switch c.AuthMethod {
	case "":
		c.AuthMethod = AuthSCRAM
	case AuthSCRAM, AuthTrust:
	default:
		errs = append(errs, fmt.Errorf("auth method %q: want %q or %q (md5 needs md5 hashes the catalog does not store)", c.AuthMethod, AuthSCRAM, AuthTrust))
	}
	errs = append(errs, c.limitDefaults()...)
	if c.MaxConnsPerTenant < 0 {
		errs = append(errs, fmt.Errorf("MaxConnsPerTenant %d: must not be negative", c.MaxConnsPerTenant))
	}
	switch c.PoolMode {
	case "":
		c.PoolMode = PoolSession
	case PoolSession, PoolTransaction:
	default:
		errs = append(errs, fmt.Errorf("pool mode %q: want %q or %q", c.PoolMode, PoolSession, PoolTransaction))
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = defaultDrainTimeout
	}
	if c.MetricsTenants == 0 {
		c.MetricsTenants = defaultMetricsTenants
	}
	if c.MetricsRankInterval <= 0 {
		c.MetricsRankInterval = defaultMetricsRankInterval
	}
	if c.CancelTimeout <= 0 {
		c.CancelTimeout = defaultCancelTimeout
	}
	if err := c.Identify.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.TLS == nil && (c.TLSCertFile != "" || c.TLSKeyFile != "") {
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("TLS certificate: %w", err))
		} else {
			c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
	}
	if c.RequireTLS && c.TLS == nil {
		errs = append(errs, errors.New("RequireTLS without a certificate"))
	}
	errs = append(errs, c.peerErrors()...)
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("proxy: config: %w", err)
	}
	return c, nil
}

// limitDefaults fills in the login, start-up and memory limits left zero
// and reports the ones out of range.
func (c *Config) limitDefaults() []error {
	var errs []error
	if c.MaxLoginFailures == 0 {
		c.MaxLoginFailures = defaultMaxLoginFailures
	}
	if c.LoginFailureWindow <= 0 {
		c.LoginFailureWindow = defaultLoginFailureWindow
	}
	if c.MaxLoginDelay <= 0 {
		c.MaxLoginDelay = defaultMaxLoginDelay
	}
	if c.StartupTimeout <= 0 {
		c.StartupTimeout = defaultStartupTimeout
	}
	if c.MaxStartupPacket == 0 {
		c.MaxStartupPacket = defaultMaxStartupPacket
	}
	if c.MaxStartupPacket < minStartupPacket {
		errs = append(errs, fmt.Errorf("MaxStartupPacket %d: must be at least %d", c.MaxStartupPacket, minStartupPacket))
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = defaultMaxMessageSize
	}
	if c.MaxMessageSize < 5 {
		errs = append(errs, fmt.Errorf("MaxMessageSize %d: too small", c.MaxMessageSize))
	}
	if c.MaxStartupConns == 0 {
		c.MaxStartupConns = defaultMaxStartupConns
	}
	if c.MaxStartupConnsPerAddr == 0 {
		c.MaxStartupConnsPerAddr = defaultMaxStartupConnsPerAddr
	}
	if c.MaxBufferedBytes == 0 {
		c.MaxBufferedBytes = defaultMaxBufferedBytes
	}
	if c.IdleInTransactionTimeout == 0 {
		c.IdleInTransactionTimeout = defaultIdleInTransactionTimeout
	}
	return errs
}

// peerErrors reports peer ids out of range and peers without an address.
func (c *Config) peerErrors() []error {
	var errs []error
	if c.PeerID < 0 || c.PeerID > MaxPeerID {
		errs = append(errs, fmt.Errorf("PeerID %d: want 1 to %d, or 0 for none", c.PeerID, MaxPeerID))
	}
	if c.PeerID == 0 && len(c.Peers) > 0 {
		errs = append(errs, errors.New("peers configured without this instance's own PeerID"))
	}
	for id, addr := range c.Peers {
		if id < 1 || id > MaxPeerID {
			errs = append(errs, fmt.Errorf("peer %d: want an id from 1 to %d", id, MaxPeerID))
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("peer %d: address %q: %w", id, addr, err))
		}
	}
	return errs
}
