package metering

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// StorageMeasurer measures every tenant's storage and stores it:
// catalog.Catalog.MeasureStorage. measured is false when another
// instance holds the round or measured within fresh.
type StorageMeasurer interface {
	MeasureStorage(ctx context.Context, fresh time.Duration) (measured bool, err error)
}

// StartStorage measures storage through m now and every interval after,
// until the returned stop is called (which waits for a round under way).
// Every instance runs it; the catalog lets one measure per interval:
// a round counts as fresh for nine tenths of an interval, so that timers
// that drift apart do not both measure.
func StartStorage(m StorageMeasurer, interval time.Duration, log *zap.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			start := time.Now()
			measured, err := m.MeasureStorage(ctx, interval*9/10)
			switch {
			case err != nil && ctx.Err() == nil:
				log.Warn("storage not measured; tenants keep their last figures", zap.Error(err))
			case measured:
				log.Debug("storage measured", zap.Duration("took", time.Since(start)))
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
