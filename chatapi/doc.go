// Package chatapi is the chat service's HTTP JSON API and tenantproxy's
// reference client: it reaches tenant data only through the proxy, naming
// the tenant in the connection, so its SQL is the same in every isolation
// tier and never filters by tenant. Isolation is the proxy's and the
// database's job; this package proves an application gets it for free.
//
// A request names its tenant by the subdomain of its Host header (primary,
// under Config.BaseDomain), the X-Tenant-ID header, or the path prefix
// /t/{tenant}/ (fallback). All sources present must agree. Every error is
// an RFC 9457 problem document (application/problem+json).
//
// End users: every tenant endpoint needs a bearer token of the tenant it
// names (401 without a valid one, 403 for another tenant's). POST /login
// issues it for a login of the tenant in the catalog (the users the proxy
// authenticates), checking the password against the stored SCRAM-SHA-256
// verifier; the token is HMAC-SHA-256-signed with a key derived from
// Config.ServiceSecret and carries tenant, user and expiry (auth.go).
// Failed logins are throttled per source address (throttle.go).
//
// Data access: one small pgx pool per active tenant, logging in to the
// proxy as the tenant's service user (Config.ServiceUser) whose password is
// HMAC-SHA256(Config.ServiceSecret, tenant id), so every replica derives
// the same password without storing it; the first request for a tenant
// makes sure the catalog holds the matching verifier. The pools live in an
// LRU that closes what it evicts.
//
// Operator endpoints under /admin/ (sign-up, show, suspend, resume, GDPR
// export and delete) need Config.OperatorToken as a bearer token and use the
// catalog directly, except export, which reads through the proxy as the
// tenant so that it contains exactly what the tenant can see.
//
// Schema: the chat's tables are an app's migrations, migrations/, written
// as for a database of the chat's own and applied to every tier as any
// adopter's are (tenantproxy migrate up --dir chatapi/migrations); the
// directory is embedded too (Schema, MigrateUp), so that the demo and the
// tests' harness apply the same files without a source tree.
//
// The routes are documented in openapi.json, served at /openapi.json; a
// test keeps the two in step.
//
// Metrics, registered with Config.Registerer:
// tenantproxy_chatapi_requests_total,
// tenantproxy_chatapi_request_duration_seconds and
// tenantproxy_chatapi_tenant_pools.
package chatapi
