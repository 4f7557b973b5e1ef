package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/admin"
	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/chatapi"
)

// chatFlags are the settings of `chat`. Their names differ from serve's
// (chat-listen, chat-base-domain, …) because one config file serves every
// command and the two usually run side by side.
type chatFlags struct {
	catalog       catalogFlags
	listen        string
	adminListen   string
	proxyDSN      string
	serviceSecret string
	operatorToken string
	baseDomain    string
	metricTenants []string
	maxPools      int
	poolConns     int
	poolIdle      time.Duration
	tokenTTL      time.Duration
}

func (f *chatFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.listen, "chat-listen", "127.0.0.1:8080", "address of the chat HTTP API")
	fs.StringVar(&f.adminListen, "chat-admin-listen", "127.0.0.1:9091", "address of the chat API's /metrics, /healthz and /readyz; empty disables")
	fs.StringVar(&f.proxyDSN, "proxy-dsn", "postgres://127.0.0.1:6432/chat?sslmode=disable", "where tenantproxy listens, without user or password")
	fs.StringVar(&f.serviceSecret, "service-secret", "", "secret (32+ bytes) every replica shares; derives each tenant's service password; required")
	fs.StringVar(&f.operatorToken, "operator-token", "", "bearer token (16+ bytes) of the /admin/ endpoints; required")
	fs.StringVar(&f.baseDomain, "chat-base-domain", "", "Host <tenant>.<domain> names the tenant; empty disables Host identification")
	fs.StringSliceVar(&f.metricTenants, "metric-tenants", nil, "tenants with their own metrics label; the rest are counted as other")
	fs.IntVar(&f.maxPools, "max-tenant-pools", 256, "tenants with an open pool to the proxy; the least recently used is closed beyond it")
	fs.IntVar(&f.poolConns, "tenant-pool-max-conns", 4, "connections to the proxy per tenant")
	fs.DurationVar(&f.poolIdle, "tenant-pool-idle-timeout", time.Minute, "close a tenant's connections idle this long")
	fs.DurationVar(&f.tokenTTL, "chat-token-ttl", time.Hour, "how long a bearer token of POST /login is valid")
}

func (f *chatFlags) config(log *zap.Logger, reg prometheus.Registerer) chatapi.Config {
	return chatapi.Config{
		ProxyDSN:        f.proxyDSN,
		ServiceSecret:   []byte(f.serviceSecret),
		OperatorToken:   f.operatorToken,
		BaseDomain:      f.baseDomain,
		MaxTenantPools:  f.maxPools,
		PoolMaxConns:    f.poolConns,
		PoolIdleTimeout: f.poolIdle,
		TokenTTL:        f.tokenTTL,
		MetricTenants:   f.metricTenants,
		Logger:          log,
		Registerer:      reg,
	}
}

func newChatCommand(g *globals) *cobra.Command {
	f := &chatFlags{}
	cmd := &cobra.Command{
		Use:   "chat",
		Short: "Serve the chat HTTP API, which reaches tenant data only through tenantproxy",
		Long: "Serves the chat API on --chat-listen. Requests name their tenant by Host <tenant>.<chat-base-domain>,\n" +
			"the X-Tenant-ID header or the /t/<tenant>/ path prefix; data is read and written through the proxy at\n" +
			"--proxy-dsn as each tenant's service user, whose password derives from --service-secret. Tenant\n" +
			"endpoints need a bearer token from POST /login (a tenant login and password from the catalog),\n" +
			"signed with a key derived from --service-secret and valid for --chat-token-ttl. /admin/\n" +
			"endpoints need --operator-token. The routes are described at /openapi.json. SIGTERM shuts down.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cat, err := f.catalog.open(cmd.Context(), g, nil)
			if err != nil {
				return err
			}
			defer cat.Close()
			chat, err := startChat(g, f, cat)
			if err != nil {
				return err
			}
			g.logger.Info("serving chat API", zap.String("listen", chat.Addr()), zap.String("proxy", f.proxyDSN))
			select {
			case <-cmd.Context().Done():
			case <-chat.done:
			}
			return chat.stop()
		},
	}
	f.catalog.register(cmd)
	f.register(cmd.Flags())
	return cmd
}

// chatServer is a running chat API: its HTTP listener, its admin listener
// (nil when disabled) and the API, whose pools stop closes once the last
// request is done.
type chatServer struct {
	api  *chatapi.Server
	http *http.Server
	ln   net.Listener
	adm  *admin.Server
	// done is closed when the serving goroutine ends, serveErr set before.
	done     chan struct{}
	serveErr error
}

// startChat listens on f.listen and serves the API over cat.
func startChat(g *globals, f *chatFlags, cat *catalog.Catalog) (*chatServer, error) {
	reg := newRegistry()
	api, err := chatapi.New(f.config(g.logger, reg), cat)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		api.Close()
		return nil, err
	}
	c := &chatServer{api: api, ln: ln, done: make(chan struct{}),
		http: &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}}
	if f.adminListen != "" {
		if c.adm, err = admin.Start(f.adminListen, reg, cat.Ping, g.logger, nil); err != nil {
			ln.Close()
			api.Close()
			return nil, fmt.Errorf("chat admin listener: %w", err)
		}
	}
	go func() {
		defer close(c.done)
		if err := c.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			c.serveErr = err
		}
	}()
	return c, nil
}

// Addr is where the API listens.
func (c *chatServer) Addr() string { return c.ln.Addr().String() }

// stop lets in-flight requests finish (up to 30 s), waits for the serving
// goroutine, then closes the pools and the admin listener.
func (c *chatServer) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := c.http.Shutdown(ctx)
	<-c.done
	c.api.Close()
	shutdownAdmin(c.adm)
	return errors.Join(err, c.serveErr)
}

// startDemoChat serves the chat API beside the demo's proxy at proxyAddr,
// with a fresh service secret and operator token, on port 8080 or any free
// one.
func startDemoChat(g *globals, proxyAddr *net.TCPAddr, cat *catalog.Catalog) (*chatServer, *chatFlags, error) {
	f := &chatFlags{
		listen:        freeAddrOr("127.0.0.1:8080"),
		proxyDSN:      fmt.Sprintf("postgres://%s/chat?sslmode=disable", proxyAddr),
		serviceSecret: rand.Text() + rand.Text(),
		operatorToken: rand.Text(),
		baseDomain:    "localhost",
		poolConns:     4,
		maxPools:      64,
		poolIdle:      time.Minute,
		tokenTTL:      time.Hour,
	}
	chat, err := startChat(g, f, cat)
	return chat, f, err
}

// writeDemoChat tells a demo user what to try on the chat API: log in as
// a tenant's alice for a bearer token (kept in a shell variable), then use
// it; the token opens its own tenant only.
func writeDemoChat(b *strings.Builder, chat *chatServer, f *chatFlags) {
	url := "http://" + chat.Addr()
	_, port, _ := net.SplitHostPort(chat.Addr())
	auth := "-H 'Authorization: Bearer " + f.operatorToken + "'"
	creds := fmt.Sprintf(`-d '{"user":"alice","password":"%s"}'`, demoPassword)
	token := ` | sed -E 's/.*"token":"([^"]*)".*/\1/')`
	fmt.Fprintf(b, "\nChat HTTP API %s (OpenAPI at %s/openapi.json; operator token %s).\n", url, url, f.operatorToken)
	fmt.Fprintf(b, "Tenant endpoints need a token: log in as alice (password %s) and keep it in a shell variable:\n", demoPassword)
	fmt.Fprintf(b, "  TOKEN=$(curl -s -H 'X-Tenant-ID: acme' %s %s/login%s\n", creds, url, token)
	fmt.Fprintf(b, "  curl -s -H \"Authorization: Bearer $TOKEN\" -H 'X-Tenant-ID: acme' %s/me\n", url)
	fmt.Fprintf(b, "  curl -s -H \"Authorization: Bearer $TOKEN\" -H 'X-Tenant-ID: acme' -d '{\"author_id\":1,\"body\":\"hi from curl\"}' %s/channels/1/messages\n", url)
	fmt.Fprintf(b, "  curl -s -H \"Authorization: Bearer $TOKEN\" -H 'X-Tenant-ID: hooli' %s/messages/1   # acme's token on hooli: 403\n", url)
	fmt.Fprintf(b, "  HOOLI=$(curl -s -H 'X-Tenant-ID: hooli' %s %s/login%s\n", creds, url, token)
	fmt.Fprintf(b, "  curl -s -H \"Authorization: Bearer $HOOLI\" -H 'X-Tenant-ID: hooli' %s/messages/1   # acme's message: 404 for hooli\n", url)
	fmt.Fprintf(b, "  GLOBEX=$(curl -s %s http://globex.localhost:%s/login%s   # tenant from the Host subdomain\n", creds, port, token)
	fmt.Fprintf(b, "  curl -s -H \"Authorization: Bearer $GLOBEX\" http://globex.localhost:%s/channels/1/messages\n", port)
	fmt.Fprintf(b, "  INITECH=$(curl -s %s %s/t/initech/login%s   # tenant from the path\n", creds, url, token)
	fmt.Fprintf(b, "  curl -s -H \"Authorization: Bearer $INITECH\" %s/t/initech/channels/1/messages\n", url)
	fmt.Fprintf(b, "  curl -s %s -d '{\"subdomain\":\"newco\",\"plan\":\"standard\"}' %s/admin/tenants\n", auth, url)
	fmt.Fprintf(b, "  curl -s %s %s/admin/tenants/acme/export\n", auth, url)
}
