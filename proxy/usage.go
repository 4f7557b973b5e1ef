package proxy

// Usage is what a tenant has used on this proxy since it started, for
// metering (package metering turns it into hourly rows in the catalog).
type Usage struct {
	Transactions, Statements uint64
	// ServerTimeMicros is the time server connections were busy with the
	// tenant's statements, each from its message relayed (or the previous
	// ReadyForQuery) to its ReadyForQuery: what its server_time_per_second
	// charges. Idle time inside a transaction is not in it; a transaction
	// its client abandons bills the statements answered.
	ServerTimeMicros  uint64
	BytesIn, BytesOut uint64
	// PeakConnections is the most client connections the tenant held at
	// once since the previous Usage call.
	PeakConnections int
}

// tallied counts into a tenant's usage what it counts into its metric, so
// that metering never depends on the metric's labels (which the cap on
// labelled tenants merges) and the call sites stay one call.
type tallied struct {
	t     *tenantTimes
	which int
}

func (c tallied) Inc() {
	c.t.series.Load().counters[c.which].Inc()
	c.t.totals[c.which].Add(1)
}

func (c tallied) Add(v float64) {
	c.t.series.Load().counters[c.which].Add(v)
	c.t.totals[c.which].Add(uint64(v))
}

// Usage reports every tenant's usage since the proxy started, and starts
// a new period for peak connections.
func (s *Server) Usage() map[string]Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Usage, len(s.times))
	for tenant, t := range s.times {
		out[tenant] = Usage{
			Transactions: t.totals[countTransactions].Load(), Statements: t.totals[countQueries].Load(), ServerTimeMicros: t.query.Load(),
			BytesIn: t.totals[countReceived].Load(), BytesOut: t.totals[countSent].Load(), PeakConnections: s.peaks[tenant],
		}
		s.peaks[tenant] = s.perTenant[tenant]
		if s.peaks[tenant] == 0 {
			delete(s.peaks, tenant)
		}
	}
	return out
}
