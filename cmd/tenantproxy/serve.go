package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/admin"
	"github.com/tenantproxy/tenantproxy/canary"
	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/console"
	"github.com/tenantproxy/tenantproxy/metering"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
	"github.com/tenantproxy/tenantproxy/router"
)

// serveFlags are the settings of `serve`; `demo` shares the proxy part.
type serveFlags struct {
	catalog     catalogFlags
	listen      []string
	unixSocket  string
	adminListen string

	tlsCert, tlsKey string
	requireTLS      bool

	baseDomain    string
	identifyOrder []string
	userSeparator string
	auth          string

	maxConnsPerTenant int
	maxBufferedBytes  int
	startupTimeout    time.Duration
	idleInTxTimeout   time.Duration
	drainTimeout      time.Duration

	maxStartupConns        int
	maxStartupConnsPerAddr int

	poolMode         string
	poolMaxConns     int
	poolMaxPerTenant int
	poolMinIdle      int
	poolWaitTimeout  time.Duration
	poolIdleTimeout  time.Duration
	poolMaxLifetime  time.Duration
	poolConnTimeout  time.Duration

	// database is the one database name clients may connect to.
	database string
	// extensions are proxy.Config.Extensions.
	extensions []string

	// consoleUser and consolePassword open the admin console; no user, no
	// console.
	consoleUser, consolePassword string

	// peerID and peers make the instance one of a peering (proxy.Config
	// PeerID and Peers).
	peerID int
	peers  peersValue

	// metricsTenants and metricsRankInterval bound the per-tenant series
	// (proxy.Config MetricsTenants and MetricsRankInterval).
	metricsTenants      int
	metricsRankInterval time.Duration

	// isolationInterval is serve's alone: the demo does not run the canary.
	isolationInterval time.Duration
	// usageInterval is how often serve flushes usage to the catalog.
	usageInterval time.Duration
	// storageInterval is how often tenants' storage is measured; 0: never.
	storageInterval time.Duration
}

func (f *serveFlags) register(fs *pflag.FlagSet, defaultAuth string) {
	fs.StringSliceVar(&f.listen, "listen", []string{"127.0.0.1:6432"}, "TCP addresses for PostgreSQL clients")
	fs.StringVar(&f.unixSocket, "unix-socket", "", "also listen on this unix socket path")
	fs.StringVar(&f.adminListen, "admin-listen", "127.0.0.1:9090", "address of /metrics, /healthz and /readyz; empty disables")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate for client TLS (with --tls-key); reloaded on SIGHUP")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM key for client TLS")
	fs.BoolVar(&f.requireTLS, "require-tls", false, "refuse clients that do not use TLS")
	fs.StringVar(&f.baseDomain, "base-domain", "", "tenants are <subdomain>.<base-domain> in TLS SNI; empty disables SNI identification")
	fs.StringSliceVar(&f.identifyOrder, "identify", []string{"sni", "options", "user"}, "identification sources in order: sni, options (-c tenant=ID), user (name.tenant)")
	fs.StringVar(&f.userSeparator, "user-separator", ".", "separates user name and tenant in the user source")
	fs.StringVar(&f.auth, "auth", defaultAuth, "client authentication: scram-sha-256, or trust (demos only)")
	fs.StringVar(&f.database, "database", "", "the database name clients connect to (the app's, e.g. chat); another gets FATAL 3D000; empty accepts any name; reloaded on SIGHUP")
	fs.IntVar(&f.maxConnsPerTenant, "max-conns-per-tenant", 0, "client connections one tenant may hold (not server connections: see --pool-max-conns-per-tenant); 0 means no cap")
	fs.IntVar(&f.maxBufferedBytes, "max-buffered-bytes", 256<<20, "memory all clients together may hold for messages over 64 KiB that are read whole (statements, to check them; transaction mode counts them twice); a client whose message does not fit waits up to 5s, then gets FATAL 53200; 0 means 256 MiB, negative no cap; reloaded on SIGHUP")
	fs.DurationVar(&f.startupTimeout, "startup-timeout", 15*time.Second, "time a client has from connect to ready (TLS, startup, auth)")
	fs.IntVar(&f.maxStartupConns, "max-startup-conns", 1000, "connections not yet authenticated, in all; at the cap the oldest of them is closed for the new one; -1 means no cap")
	fs.IntVar(&f.maxStartupConnsPerAddr, "max-startup-conns-per-addr", 100, "connections not yet authenticated from one IPv4 address or IPv6 /64; over it new ones get 53300; -1 means no cap")
	fs.DurationVar(&f.idleInTxTimeout, "idle-in-transaction-timeout", time.Minute, "a client whose transaction stays open with nothing sent for longer gets FATAL 25P03 and its server connection is rolled back (transaction mode: timed by the proxy; session mode: PostgreSQL's idle_in_transaction_session_timeout, which a tenant's SET may lower, never lift); 0 means 1m, negative disables")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, time open sessions get before they are ended with 57P01")
	fs.StringVar(&f.poolMode, "pool-mode", proxy.PoolSession, "default pool mode of tenants whose settings name none: session (a server connection per client) or transaction (per transaction)")
	fs.IntVar(&f.poolMaxConns, "pool-max-conns", 20, "server connections per (backend, database, role)")
	fs.IntVar(&f.poolMaxPerTenant, "pool-max-conns-per-tenant", 0, "server connections of one pool a tenant may hold at once; 0 means half of --pool-max-conns (at least 1), negative no cap")
	fs.IntVar(&f.poolMinIdle, "pool-min-idle", 0, "idle server connections kept open per pool once it has been used")
	fs.DurationVar(&f.poolWaitTimeout, "pool-wait-timeout", 10*time.Second, "how long a client waits for a server connection of a full pool (or over its tenant's share) before 53400; 0 means 10s, negative until the client's start-up timeout or shutdown")
	fs.DurationVar(&f.poolIdleTimeout, "pool-idle-timeout", 5*time.Minute, "close server connections idle this long")
	fs.DurationVar(&f.poolMaxLifetime, "pool-max-lifetime", time.Hour, "close server connections this old once idle")
	fs.DurationVar(&f.poolConnTimeout, "pool-connect-timeout", 10*time.Second, "bound on connecting and authenticating to a backend")
	fs.StringSliceVar(&f.extensions, "allow-extension", policy.DefaultExtensions, "extensions a tenant's CREATE EXTENSION IF NOT EXISTS may name (PostgreSQL skips an installed one); list only trusted extensions every tier may have; empty allows none")
	fs.StringVar(&f.consoleUser, "console-user", "", "user of the PgBouncer-compatible admin console (psql dbname=pgbouncer); empty disables the console")
	fs.StringVar(&f.consolePassword, "console-password", "", "the console user's password (SCRAM-SHA-256); prefer TENANTPROXY_CONSOLE_PASSWORD to the command line")
	fs.IntVar(&f.peerID, "peer-id", 0, fmt.Sprintf("this instance's id (1-%d) among instances behind one load balancer: written into the cancel keys it hands out, so that the others forward it its cancel requests; 0 means no peering", proxy.MaxPeerID))
	fs.IntVar(&f.metricsTenants, "metrics-tenants", 20, "tenants with a tenant label value of their own on the per-tenant metrics: the busiest by transactions, ranked again every --metrics-rank-interval; the others count under tenant=\"other\"; negative means none")
	fs.DurationVar(&f.metricsRankInterval, "metrics-rank-interval", time.Minute, "how often the busiest tenants are ranked again for --metrics-tenants, and the window of the per-tier p99 spread")
	fs.Var(&f.peers, "peer", "ID=HOST:PORT of an instance of the peering, where cancel requests with its keys are forwarded; repeatable; an entry for --peer-id itself is ignored, so all instances can share one list")
}

func (f *serveFlags) proxyConfig(log *zap.Logger, reg prometheus.Registerer) proxy.Config {
	order := make([]router.Source, len(f.identifyOrder))
	for i, s := range f.identifyOrder {
		order[i] = router.Source(s)
	}
	return proxy.Config{
		Listen:      f.listen,
		UnixSocket:  f.unixSocket,
		TLSCertFile: f.tlsCert,
		TLSKeyFile:  f.tlsKey,
		RequireTLS:  f.requireTLS,
		Identify: router.IdentifyConfig{
			Order:         order,
			BaseDomain:    f.baseDomain,
			UserSeparator: f.userSeparator,
		},
		AuthMethod: f.auth,
		// Every replica has the catalog DSN and strangers do not: the
		// fake salts of unknown users and tenants agree across replicas.
		SaltSecret:               f.catalog.dsn,
		MaxConnsPerTenant:        f.maxConnsPerTenant,
		Database:                 f.database,
		Extensions:               f.extensions,
		MaxBufferedBytes:         f.maxBufferedBytes,
		PoolMode:                 f.poolMode,
		StartupTimeout:           f.startupTimeout,
		IdleInTransactionTimeout: f.idleInTxTimeout,
		DrainTimeout:             f.drainTimeout,
		Logger:                   log,
		Registerer:               reg,

		MaxStartupConns:        f.maxStartupConns,
		MaxStartupConnsPerAddr: f.maxStartupConnsPerAddr,

		PeerID: f.peerID,
		Peers:  f.peers,

		MetricsTenants:      f.metricsTenants,
		MetricsRankInterval: f.metricsRankInterval,
	}
}

func (f *serveFlags) poolConfig(reg prometheus.Registerer) pool.Config {
	return pool.Config{
		MaxConnsPerKey:    f.poolMaxConns,
		MaxConnsPerTenant: f.poolMaxPerTenant,
		MinIdle:           f.poolMinIdle,
		WaitTimeout:       f.poolWaitTimeout,
		IdleTimeout:       f.poolIdleTimeout,
		MaxLifetime:       f.poolMaxLifetime,
		ConnectTimeout:    f.poolConnTimeout,
		Registerer:        reg,
	}
}

func newServeCommand(g *globals) *cobra.Command {
	cmd, _ := buildServeCommand(g)
	return cmd
}

// buildServeCommand returns the command and the flags it fills, so that a
// reload can parse a fresh copy.
func buildServeCommand(g *globals) (*cobra.Command, *serveFlags) {
	f := &serveFlags{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the proxy: clients name their tenant, the proxy routes them to its data",
		Long: "Serves PostgreSQL clients on --listen. Tenants are identified by TLS SNI under --base-domain,\n" +
			"by options=-c tenant=ID, or by user name.tenant. SIGTERM drains sessions (--drain-timeout);\n" +
			"SIGHUP re-reads the environment and --config file and applies what can change live.\n" +
			"At start it runs itself again, same pid and arguments, with GODEBUG=schedtrace=2147483647,\n" +
			"which keeps Go's monitor thread from a sleep and wake-up per transaction (README, issue 15's\n" +
			"goal 3); a schedtrace already in GODEBUG stands, and GODEBUG=schedtrace=0 turns this off.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The admin listener comes first, so that probes see the
			// process alive (and not ready) while the catalog is out of
			// reach; ready once serving, it stays ready through later
			// catalog outages, in which known tenants are served from the
			// catalog's last known state.
			reg := newRegistry()
			var serving atomic.Bool
			var opened atomic.Pointer[catalog.Catalog]
			adm, err := startAdmin(g, f, reg, func(context.Context) error {
				if !serving.Load() {
					return errors.New("the tenant catalog has not been reached yet")
				}
				return nil
			}, usageAPI(&opened))
			if err != nil {
				return err
			}
			cat, err := openCatalogRetrying(cmd.Context(), g, &f.catalog, reg)
			if err != nil {
				shutdownAdmin(adm)
				return err
			}
			defer cat.Close()
			opened.Store(cat)
			// The console's SHUTDOWN drains as SIGTERM does; its RELOAD
			// takes SIGHUP's path. Until runProxy handles SIGHUP, one
			// must not end the process (its default action).
			early := make(chan os.Signal, 1)
			signal.Notify(early, syscall.SIGHUP)
			defer signal.Stop(early)
			ctx, shutdown := context.WithCancel(cmd.Context())
			defer shutdown()
			hooks := consoleHooks{reload: func() error { return syscall.Kill(os.Getpid(), syscall.SIGHUP) }, shutdown: shutdown}
			srv, mgr, err := startRelay(g, f, cat, reg, hooks)
			if err != nil {
				shutdownAdmin(adm)
				return err
			}
			defer mgr.Close()
			serving.Store(true)
			served := make(chan error, 1)
			go func() { served <- srv.ListenAndServe() }()
			g.logger.Info("serving", zap.Strings("listen", f.listen), zap.String("admin", f.adminListen))
			if f.isolationInterval > 0 {
				stop, err := startCanary(ctx, g, f, cat, reg)
				if err != nil {
					return err
				}
				defer stop()
			}
			stopMeter := metering.New(srv.Usage, cat, meterInstance(f.peerID), g.logger).Start(f.usageInterval)
			if f.storageInterval > 0 {
				defer metering.StartStorage(cat, f.storageInterval, g.logger)()
			}
			lc := &liveConfig{g: g, srv: srv, mgr: mgr, applied: settingsOf(cmd.Flags()), read: reloader(cmd, g)}
			err = runProxy(ctx, g, f, srv, adm, served, lc.reload)
			// Drained: what the last sessions did is counted.
			if ferr := stopMeter(10 * time.Second); ferr != nil {
				g.logger.Error("usage since the last flush is lost: the final flush failed", zap.Error(ferr))
			}
			return err
		},
	}
	f.catalog.register(cmd)
	f.register(cmd.Flags(), proxy.AuthSCRAM)
	cmd.Flags().DurationVar(&f.usageInterval, "usage-flush-interval", 10*time.Second,
		"flush tenants' usage (transactions, statements, server time, bytes, peak connections) to the catalog this often, and once more after draining on SIGTERM; a crash loses at most this much; 0 flushes only at shutdown")
	cmd.Flags().DurationVar(&f.storageInterval, "storage-interval", time.Minute,
		"measure every tenant's storage this often (one instance of those sharing the catalog measures each round); over its storage_mb a tenant is read-only until back under; 0 disables measuring (figures already stored still apply)")
	cmd.Flags().DurationVar(&f.isolationInterval, "isolation-check-interval", 0,
		"run the isolation canary through the proxy this often (violations log as critical and count in tenantproxy_isolation_violations_total); 0 disables")
	return cmd, f
}

// meterInstance names this process's usage rows: the host, and the peer
// id when instances share one.
func meterInstance(peerID int) string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	if peerID != 0 {
		return fmt.Sprintf("%s/%d", host, peerID)
	}
	return host
}

// startCanary runs the isolation canary against the proxy's first listen
// address until the returned stop is called, which waits for it to end.
func startCanary(ctx context.Context, g *globals, f *serveFlags, cat *catalog.Catalog, reg prometheus.Registerer) (stop func(), err error) {
	can, err := canary.New(canary.Config{ProxyAddr: f.listen[0], Logger: g.logger, Registerer: reg}, cat)
	if err != nil {
		return nil, fmt.Errorf("isolation canary: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		can.Run(ctx, f.isolationInterval)
	}()
	return func() { cancel(); <-done }, nil
}

// runProxy waits while srv serves (served yields what Serve returned) and
// drains it when ctx ends. reload, when not nil, is called on SIGHUP.
func runProxy(ctx context.Context, g *globals, f *serveFlags, srv *proxy.Server, adm *admin.Server, served <-chan error, reload func()) error {
	hup := make(chan os.Signal, 1)
	if reload != nil {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	for {
		select {
		case <-hup:
			reload()
		case err := <-served:
			shutdownAdmin(adm)
			return err
		case <-ctx.Done():
			return stopProxy(g, f, srv, adm, served)
		}
	}
}

// newRegistry is a metrics registry with the Go runtime's and the
// process's collectors and the build's identity beside the project's own.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	b, _ := readBuild()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "tenantproxy_build_info",
			Help:        "Always 1; its labels name the running build: version, commit and Go version.",
			ConstLabels: prometheus.Labels{"version": b.version, "commit": b.commit, "goversion": b.goVersion},
		}, func() float64 { return 1 }))
	return reg
}

// startProxy builds the pool, the proxy and the admin listener, ready
// while the catalog answers. The caller owns the returned pieces; adm is
// nil when --admin-listen is empty.
func startProxy(g *globals, f *serveFlags, cat *catalog.Catalog, reg *prometheus.Registry, hooks consoleHooks) (*proxy.Server, *admin.Server, *pool.Manager, error) {
	var opened atomic.Pointer[catalog.Catalog]
	opened.Store(cat)
	adm, err := startAdmin(g, f, reg, cat.Ping, usageAPI(&opened))
	if err != nil {
		return nil, nil, nil, err
	}
	srv, mgr, err := startRelay(g, f, cat, reg, hooks)
	if err != nil {
		shutdownAdmin(adm)
		return nil, nil, nil, err
	}
	return srv, adm, mgr, nil
}

// startAdmin starts the admin listener (nil when --admin-listen is empty).
func startAdmin(g *globals, f *serveFlags, reg *prometheus.Registry, ready admin.Ready, extra map[string]http.Handler) (*admin.Server, error) {
	if f.adminListen == "" {
		return nil, nil
	}
	adm, err := admin.Start(f.adminListen, reg, ready, g.logger, extra)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	return adm, nil
}

// startRelay builds the pool and the proxy, with the console hooks.
func startRelay(g *globals, f *serveFlags, cat *catalog.Catalog, reg *prometheus.Registry, hooks consoleHooks) (*proxy.Server, *pool.Manager, error) {
	mgr, err := pool.NewManager(f.poolConfig(reg), g.logger)
	if err != nil {
		return nil, nil, err
	}
	cfg := f.proxyConfig(g.logger, reg)
	if cfg.Console, err = f.console(g, cat, mgr, hooks); err != nil {
		mgr.Close()
		return nil, nil, err
	}
	srv, err := proxy.New(cfg, cat, mgr)
	if err != nil {
		mgr.Close()
		return nil, nil, err
	}
	return srv, mgr, nil
}

// stopProxy drains the proxy (open transactions get the drain timeout, then
// 57P01) and stops the admin listener.
func stopProxy(g *globals, f *serveFlags, srv *proxy.Server, adm *admin.Server, served <-chan error) error {
	g.logger.Info("draining", zap.Duration("timeout", f.drainTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), f.drainTimeout+5*time.Second)
	defer cancel()
	err := srv.Shutdown(ctx)
	if serr := <-served; !errors.Is(serr, proxy.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	shutdownAdmin(adm)
	return err
}

func shutdownAdmin(adm *admin.Server) {
	if adm == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	adm.Shutdown(ctx)
}

// consoleHooks are what the console's RELOAD and SHUTDOWN run; a nil one
// refuses the command (the demo has neither).
type consoleHooks struct {
	reload   func() error
	shutdown func()
}

// console builds the admin console, nil when --console-user is empty.
func (f *serveFlags) console(g *globals, cat *catalog.Catalog, mgr *pool.Manager, hooks consoleHooks) (*console.Console, error) {
	if f.consoleUser == "" {
		if f.consolePassword != "" {
			return nil, errors.New("--console-password without --console-user")
		}
		return nil, nil
	}
	return console.New(console.Config{
		User: f.consoleUser, Password: f.consolePassword, Tenants: cat, Pools: mgr,
		Version: versionString(), Reload: hooks.reload, Shutdown: hooks.shutdown, Logger: g.logger,
	})
}
