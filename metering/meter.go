package metering

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// Recorder stores usage: the catalog.
type Recorder interface {
	RecordUsage(ctx context.Context, instance string, recs []catalog.UsageRecord) error
}

// Meter flushes a proxy's usage to a Recorder.
type Meter struct {
	source   func() map[string]proxy.Usage
	rec      Recorder
	instance string
	log      *zap.Logger
	// flushed is the source's totals as of the last flush that stored;
	// peaks are the peaks seen since then.
	flushed map[string]proxy.Usage
	peaks   map[string]int
}

// New returns a Meter reading source (the proxy's Usage) as instance.
func New(source func() map[string]proxy.Usage, rec Recorder, instance string, log *zap.Logger) *Meter {
	return &Meter{source: source, rec: rec, instance: instance, log: log,
		flushed: map[string]proxy.Usage{}, peaks: map[string]int{}}
}

// Flush records what was used since the last successful flush.
func (m *Meter) Flush(ctx context.Context) error {
	now := m.source()
	hour := time.Now().UTC().Truncate(time.Hour)
	var recs []catalog.UsageRecord
	for tenant, u := range now {
		m.peaks[tenant] = max(m.peaks[tenant], u.PeakConnections)
		was := m.flushed[tenant]
		r := catalog.UsageRecord{Tenant: tenant, Hour: hour,
			Transactions: int64(u.Transactions - was.Transactions), Statements: int64(u.Statements - was.Statements),
			ServerTimeMS: float64(u.ServerTimeMicros-was.ServerTimeMicros) / 1000,
			BytesIn:      int64(u.BytesIn - was.BytesIn), BytesOut: int64(u.BytesOut - was.BytesOut),
			PeakConnections: m.peaks[tenant]}
		if r.Transactions != 0 || r.Statements != 0 || r.BytesIn != 0 || r.BytesOut != 0 || r.PeakConnections != 0 {
			recs = append(recs, r)
		}
	}
	if err := m.rec.RecordUsage(ctx, m.instance, recs); err != nil {
		return err
	}
	m.flushed = now
	clear(m.peaks)
	return nil
}

// Start flushes every interval until the returned stop is called; stop
// then flushes once more, bounded by timeout, and reports whether that
// stored. Call stop after the proxy has drained, so that what its last
// sessions did is stored too.
func (m *Meter) Start(interval time.Duration) (stop func(timeout time.Duration) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ticks <-chan time.Time // none when interval is not positive: only stop flushes
		if interval > 0 {
			tick := time.NewTicker(interval)
			defer tick.Stop()
			ticks = tick.C
		}
		for {
			select {
			case <-ticks:
				if err := m.Flush(ctx); err != nil && ctx.Err() == nil {
					m.log.Warn("usage not flushed; kept for the next flush", zap.Error(err))
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return func(timeout time.Duration) error {
		cancel()
		<-done
		fctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return m.Flush(fctx)
	}
}
