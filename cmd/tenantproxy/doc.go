// Command tenantproxy is the project's one binary. serve runs the proxy
// with its admin listener and, when asked, the isolation canary; migrate,
// backend and tenant administer the catalog and provision tenants; chat
// serves the reference chat API; check isolation runs the canary once;
// demo starts all of it on a throwaway PostgreSQL (internal/pgcluster);
// bench measures the proxy against direct PostgreSQL and PgBouncer;
// version says what was built.
//
// The package is wiring, so that everything worth testing lives in a
// package a test can reach: cobra commands; flags that can also come from
// TENANTPROXY_* environment variables and a YAML file named by --config
// (the command line wins over the environment, which wins over the file);
// a zap logger on stderr; and the lifetime of what a command starts
// (SIGTERM drains, SIGHUP reloads serve's configuration). main only calls
// run, which the tests call too.
package main
