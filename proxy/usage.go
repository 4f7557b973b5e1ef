package proxy

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Usage is what a tenant has used on this proxy since it started, for
// metering (package metering turns it into hourly rows in the catalog).
type Usage struct {
	Transactions, Statements uint64
	// ServerTimeMicros is the time server connections spent in the
	// tenant's transactions.
	ServerTimeMicros  uint64
	BytesIn, BytesOut uint64
	// PeakConnections is the most client connections the tenant held at
	// once since the previous Usage call.
	PeakConnections int
}

// tallied counts into a tenant's usage what it counts into its metric, so
// that metering never depends on the metric's labels (which a cap on
// labelled tenants may merge) and the call sites stay one call.
type tallied struct {
	prometheus.Counter
	n *atomic.Uint64
}

func (t tallied) Inc()          { t.Counter.Inc(); t.n.Add(1) }
func (t tallied) Add(v float64) { t.Counter.Add(v); t.n.Add(uint64(v)) }

// Usage reports every tenant's usage since the proxy started, and starts
// a new period for peak connections.
func (s *Server) Usage() map[string]Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Usage, len(s.times))
	for tenant, t := range s.times {
		out[tenant] = Usage{
			Transactions: t.xacts.Load(), Statements: t.stmts.Load(), ServerTimeMicros: t.xact.Load(),
			BytesIn: t.bytesIn.Load(), BytesOut: t.bytesOut.Load(), PeakConnections: s.peaks[tenant],
		}
		s.peaks[tenant] = s.perTenant[tenant]
		if s.peaks[tenant] == 0 {
			delete(s.peaks, tenant)
		}
	}
	return out
}
