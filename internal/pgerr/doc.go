// Package pgerr owns the proxy's error codes and what each becomes on the
// wire. Every decision a client must hear about (no tenant, wrong
// password, refused statement, pool timeout…) is an *Error carrying a
// Code; the proxy turns it into a PostgreSQL ErrorResponse at its one
// client-facing boundary, taking the severity and SQLSTATE from the
// Code's row here (SQLState, Fatal). The table lives beside the enum so
// that a new Code cannot be added without its row: a test walks every
// Code and fails on one without a name, SQLSTATE or severity.
//
// It is a leaf package (standard library only) so that router, policy,
// pool and proxy can all return these errors without importing each
// other.
package pgerr
