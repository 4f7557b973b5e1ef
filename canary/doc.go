// Package canary proves tenant isolation from the outside, continuously:
// for a random sample of active tenants (Config.Sample, DefaultSample by
// default) it connects through the proxy as each of them (a service login,
// User, that it maintains in the catalog), plants a row with a random token
// in the tenant's canary table (in the proxy's schema, out of the
// tenant's sight: migrations.CanaryTable), and then checks, as every
// sampled tenant, that the session carries that tenant's context and that
// no other tenant's token or schema is visible. A violation is an
// Error-level log line with severity=critical and an increment of
// tenantproxy_isolation_violations_total, which an alert pages on; every
// check counts in tenantproxy_isolation_checks_total by result.
//
// It exists because isolation that tests proved at build time can still
// break in a deployment (a role granted by hand, a policy dropped); the
// canary keeps asking. It runs on demand (Check; `tenantproxy check
// isolation`) and on a schedule (Run; `tenantproxy serve
// --isolation-check-interval`, off by default). It needs nothing from the
// proxy but its address: it is a client like any other, so it tests what
// clients get.
package canary
