// Package metering turns what the proxy counts per tenant (proxy.Usage:
// transactions, statements, server time, bytes, peak connections) into
// hourly usage rows in the catalog (catalog.RecordUsage), for billing.
//
// A Meter flushes the difference since its last successful flush every
// interval and once more when stopped, after the proxy has drained, so a
// SIGTERM loses nothing and a crash at most one interval. A flush that
// fails keeps its deltas for the next one. Deltas count in the hour of
// the flush that records them, so a transaction near the end of an hour
// may count in the next one.
//
// StartStorage measures every tenant's storage on a schedule
// (catalog.MeasureStorage): the figure the proxy compares with the
// tenant's storage_mb quota, also billed per hour.
package metering
