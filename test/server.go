package test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// StartProxy is the one way tests start a proxy: the real proxy.Server,
// built from cfg over the catalog cat and the pool mgr, serving on a free
// port of 127.0.0.1. It returns the server and its address.
//
// A nil cfg.Logger logs to tb and a nil cfg.Registerer is a registry of the
// proxy's own, so that tests see the proxy's logs and never share metrics;
// set either to keep it (a benchmark passes zap.NewNop()). When tb ends,
// StartProxy shuts the proxy down, allowing 30 s for the drain, and fails
// tb unless Serve returned ErrServerClosed. A test may call Shutdown
// itself first; the cleanup then only collects Serve's result. The caller
// keeps cat and mgr, and closes them after the proxy is gone (register
// their cleanups before calling StartProxy).
func StartProxy(tb testing.TB, cfg proxy.Config, cat *catalog.Catalog, mgr *pool.Manager) (*proxy.Server, string) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return StartProxyOn(tb, l, cfg, cat, mgr), l.Addr().String()
}

// FreeAddr returns a 127.0.0.1 address with a port free at the time of
// the call, for a server the test starts itself (serve in-process, a
// subprocess) that must listen on an address known in advance.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// StartProxyOn is StartProxy serving on l, for proxies whose
// configuration must name each other's addresses (peers). It closes l if
// the proxy cannot be built.
func StartProxyOn(tb testing.TB, l net.Listener, cfg proxy.Config, cat *catalog.Catalog, mgr *pool.Manager) *proxy.Server {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(tb)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	srv, err := proxy.New(cfg, cat, mgr)
	if err != nil {
		l.Close()
		tb.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			tb.Errorf("proxy shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			tb.Errorf("proxy Serve returned %v; want ErrServerClosed", err)
		}
	})
	return srv
}
