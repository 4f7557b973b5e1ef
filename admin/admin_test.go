package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestEndpoints(t *testing.T) {
	defer goleak.VerifyNone(t)
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "tenantproxy_probe_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	var readyErr error
	s, err := Start("127.0.0.1:0", reg, func(context.Context) error { return readyErr }, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "tenantproxy_probe_total 1") {
		t.Errorf("/metrics = %d %q", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d while ready", code)
	}
	readyErr = errors.New("catalog unreachable")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "catalog unreachable") {
		t.Errorf("/readyz = %d %q while not ready, want 503 with the reason", code, body)
	}
	http.DefaultClient.CloseIdleConnections()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
