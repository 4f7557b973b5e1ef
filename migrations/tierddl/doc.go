// Package tierddl turns an adopter's migration, ordinary PostgreSQL DDL
// written once as for a database of its own, into the form each isolation
// tier needs. The schema and database tiers give every tenant objects of
// its own, so a migration applies to them as written. The shared tier
// keeps every tenant's rows in one set of tables, and there the package
// rewrites the statements' parse trees (pg_query_go: parse, edit, deparse)
// to add what isolation needs:
//
//   - a tenant_id column on every table, defaulting to the tenant the
//     session's TenantGUC names, and forced, fail-closed row-level
//     security;
//   - tenant_id leading every primary key, unique constraint, foreign key
//     (on both sides, so a row can never reference another tenant's row)
//     and B-tree index, so uniqueness is per tenant and a unique violation
//     never reveals another tenant's row;
//   - ids that count only the tenant's own rows: identity and serial
//     columns draw from per-tenant sequences through NextIDFunction
//     instead of one sequence every tenant shares (issue #12, item 4);
//   - DML on every table and view for the serving role.
//
// What the package cannot make safe (views that would run as their
// owner, materialized views, SECURITY DEFINER functions, permissive
// policies, privileges, sequences, inheritance and partitions, statements
// outside the application's own DDL and DML) it refuses with an *Error
// that names the statement, its line and why. docs/design.md ("What the
// tool adds per tier") is the reference for adopters.
//
// The package stands alone, below package migrations (which runs its
// output), so the names both must agree on are constants here that a test
// holds equal to migrations'.
package tierddl
