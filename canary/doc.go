// Package canary proves tenant isolation from the outside, continuously:
// for a sample of tenants it connects through the proxy as each of them
// (a service login it maintains in the catalog), plants a row with a
// random token in the tenant's tenantproxy_canary table, and then checks,
// as every sampled tenant, that the session carries that tenant's context
// and that no other tenant's token or schema is visible. A violation is an
// Error-level log line with severity=critical and an increment of
// tenantproxy_isolation_violations_total, which an alert pages on.
//
// It runs on demand (tenantproxy check isolation) and on a schedule
// (Run, wired into serve). It needs nothing from the proxy but its
// address: it is a client like any other, so it tests what clients get.
//
// Wiring into serve (a flag such as --isolation-check-interval):
//
//	c, err := canary.New(canary.Config{ProxyAddr: addr, Logger: log, Registerer: reg}, cat)
//	go c.Run(ctx, interval) // ends when ctx does
package canary
