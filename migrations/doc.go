// Package migrations owns every table tenantproxy creates and the runner that
// applies them, and the runner of an app's own migrations. The proxy's SQL
// is embedded, so a binary carries exactly the schema it was built with.
//
//   - control/*.sql is the catalog (backends, tenants, tenant_users with
//     their people and service logins, outbox) in the control database.
//   - Tenant targets get no embedded migrations: the proxy's tables there
//     are proxytables.go's, and everything else is the app's (below). The
//     chat is one such app, whose migrations live with the chat API
//     (chatapi/migrations).
//   - legacychat/*.sql is the chat as releases before it became an app
//     embedded it, written once as text/template and rendered per tier,
//     frozen: migrate up reads it to recognise a target those releases
//     migrated and records its chat as the chat app's versions
//     (legacychat.go), never to give a new target the chat.
//
// Every target (the control database, each backend's shared database, each
// tenant schema, each tenant database) keeps its own schema_migrations table
// of version, name, checksum and applied_at. In a tenant target it is one
// of the proxy's tables (proxytables.go, with app_schema_migrations and
// the isolation canary's table), kept in a schema of the proxy's out of
// the tenant's search_path, \dt and dumps, which migrate up moves them to
// from where earlier releases kept them. Apply runs each pending
// migration in its own transaction under the target's advisory lock and
// refuses an applied migration whose SQL changed (ChecksumError). Each
// transaction waits at most Options.LockTimeout for a table lock, so that a
// session holding one (a tenant idle in a transaction, in the shared tier
// one table for every tenant) cannot queue everyone behind the migration's
// DDL; a migration that times out is rolled back, retried after a jittered
// pause (Options.LockRetries, reported to Options.Retry and the Logger), and
// then fails its target with a LockTimeoutError (locks.go).
//
// The adopter's own migrations (app.go, apprun.go) are a second set,
// numbered independently: ReadAppDir (or ReadAppFS, for a directory
// embedded in a binary) reads a directory of NNNN_name.up.sql
// (or NNNN_name.sql) and NNNN_name.down.sql files, StoreApp keeps them as
// written in the catalog's app_migrations (a stored version's up SQL never
// changes: AppChangedError), and every tenant target applies the stored
// versions it lacks in its tier's form (tierddl.Transform), recorded in
// its own app_schema_migrations, with the same transactions, advisory lock
// and lock policy as above. The catalog is where they live so that every
// proxy instance, tenant create (ApplyTenant) and migrate up on any
// machine agree on the app's schema. In the database tier a version runs
// as written, logged in as the tenant's own login role, which so owns what
// it creates and is the role the proxy's sessions log in as. A version
// tierddl refuses fails the shared targets alone.
//
// API the CLI calls:
//
//	Up(ctx, controlDSN, Options{Concurrency, Progress, Retry, Logger, LockTimeout, LockRetries, App}) (*Report, error) // migrate up [--dir]
//	Down(ctx, controlDSN, to, Options{...}) (*Report, error)                                                           // migrate down --to
//	Status(ctx, controlDSN, Options{...}) (*Report, error)                                                              // migrate status
//	TextProgress(w) func(Progress), TextRetry(w) func(LockRetry)                                                   // a progress display
//
// Up migrates the control database, registers the catalog's own server as
// backend "main" on an empty catalog (RegisterBackend: serving role, shared
// and schema databases), then fans out over every target with bounded
// concurrency; a failed target is reported in the Report and the joined
// error, and the others carry on. Before a tenant database's migrations, Up
// gives its tenant a login role (TenantLoginPassword, OwnDatabase) if it has
// none, which upgrades tenants created before tenants had roles of their
// own. The catalog package calls Apply, CreateDatabase, TenantLoginPassword
// and OwnDatabase while it provisions tenants, and RegisterBackend when it
// adds a backend.
//
// Every database tenants reach is hardened when it is created (Harden):
// PUBLIC loses what would let one tenant observe or disturb another
// through the server itself (other sessions' queries, locks, column
// statistics, advisory locks and notifications where tenants share a
// database), so that isolation holds for a direct connection as the
// serving role, not only behind the proxy's statement policy.
package migrations
