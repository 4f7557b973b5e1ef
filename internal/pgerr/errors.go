package pgerr

import (
	"errors"
	"fmt"
)

// Code classifies every error the proxy can report to a client. Each Code
// has exactly one severity and SQLSTATE (SQLState, Fatal), so the README's
// error table has one implementation.
type Code int

// Error codes, one per row of the README's error table plus the protocol
// and internal failures PostgreSQL itself would report. A new code needs
// a row in codes (table.go); TestEveryCodeHasARow fails until it has one.
const (
	// CodeInternal is an unexpected failure; clients see XX000.
	CodeInternal Code = iota
	// CodeNoTenant: the connection names no tenant (FATAL 28000).
	CodeNoTenant
	// CodeNoUser: the startup packet names no user (FATAL 28000).
	CodeNoUser
	// CodeConflictingTenant: two identification sources disagree (FATAL 28000).
	CodeConflictingTenant
	// CodeInvalidTenant: the tenant marker is not a valid id (FATAL 3D000).
	CodeInvalidTenant
	// CodeUnknownTenant: no such tenant in the catalog (FATAL 3D000). The
	// proxy never sends it to a client, which would let strangers list
	// tenants: a connection to an unknown tenant gets CodeAuthFailed after
	// the same SCRAM exchange as a wrong password.
	CodeUnknownTenant
	// CodeTenantSuspended: the tenant is suspended (FATAL 28000).
	CodeTenantSuspended
	// CodeTenantUnavailable: the tenant is still being provisioned (FATAL 57P03).
	CodeTenantUnavailable
	// CodeAuthFailed: wrong password or unknown user of that tenant (FATAL 28P01).
	CodeAuthFailed
	// CodeTLSRequired: the proxy accepts only TLS connections (FATAL 28000).
	CodeTLSRequired
	// CodeStatementRefused: the tenant policy refused a statement (ERROR 42501).
	CodeStatementRefused
	// CodeTooManyConnections: the per-tenant connection cap (FATAL 53300).
	CodeTooManyConnections
	// CodeRateLimited: a pool wait timed out (ERROR 53400). Failed logins
	// are slowed down, never refused with it.
	CodeRateLimited
	// CodeShuttingDown: the proxy is draining (FATAL 57P01).
	CodeShuttingDown
	// CodeProtocolViolation: malformed or unexpected message (FATAL 08P01).
	CodeProtocolViolation
	// CodeFeatureNotSupported: e.g. an unsupported protocol version or a
	// replication connection (FATAL 0A000).
	CodeFeatureNotSupported
	// CodeBackendUnavailable: the backend cannot be reached or died (FATAL 08006).
	CodeBackendUnavailable
	// CodeMessageTooLarge: a client message exceeds the size limit (FATAL 54000).
	CodeMessageTooLarge
	// CodeSyntaxError: the proxy's parser rejected a statement (ERROR
	// 42601, with its position, as the server would say).
	CodeSyntaxError
	// CodeStatementTooComplex: a statement nests too deeply for the
	// proxy's parser (ERROR 54001, PostgreSQL's "stack depth limit
	// exceeded"; the connection stays usable).
	CodeStatementTooComplex
	// CodeOutOfMemory: a client message does not fit in the memory the
	// proxy may hold for messages (FATAL 53200, PostgreSQL's out_of_memory;
	// the rest of the message is never read, so the connection ends).
	CodeOutOfMemory
	// CodeIdleInTransaction: a transaction-mode client left a transaction
	// open and idle past the proxy's limit (FATAL 25P03, PostgreSQL's
	// idle_in_transaction_session_timeout).
	CodeIdleInTransaction
	// CodeDuplicatePreparedStatement: a transaction-mode client parsed a
	// statement under a name it already uses (ERROR 42P05, PostgreSQL's
	// duplicate_prepared_statement); the proxy keeps the client's names.
	CodeDuplicatePreparedStatement
	// CodeUnrecognizedSetting: a client named a setting PostgreSQL does
	// not have (42704, PostgreSQL's "unrecognized configuration
	// parameter"; FATAL at connection start, as from the server).
	CodeUnrecognizedSetting
	// CodeInvalidParameterValue: a value PostgreSQL would reject as an
	// invalid argument, such as a channel name too long for the
	// tenant's namespace (policy.Channels).
	CodeInvalidParameterValue
	// CodeTooManyPinned: a transaction-mode statement would pin one more
	// server connection than its tenant may keep pinned (ERROR 53400,
	// PostgreSQL's configuration_limit_exceeded: a statement over a
	// configured limit, the session going on; 53300 is what a refused
	// connection hears, and drivers take it for one).
	CodeTooManyPinned
	// CodeReadOnly: a write by a tenant over its storage quota, which is
	// read-only until back under it (ERROR 25006, as PostgreSQL refuses a
	// write in a read-only transaction).
	CodeReadOnly
	// CodeQueryCanceled: a client's cancel request reached its statement
	// while the proxy held it for its tenant's limits, before any server
	// ran it (ERROR 57014, as PostgreSQL's answer to a cancel).
	CodeQueryCanceled

	// codeCount is the number of codes; it stays last.
	codeCount
)

// Error is a decision the client must hear about. Msg is written for the
// client and must never contain secrets; Err, if any, is for logs.
type Error struct {
	Code Code
	Msg  string
	Err  error
	// Position is the 1-based character position in the statement the
	// error points at, as PostgreSQL reports it; 0 means none.
	Position int
	// Hint is the error's HINT: what the client can do about it.
	Hint string
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Msg, e.Err)
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an *Error with a client-facing message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// CodeOf returns the Code of the first *Error in err's chain, or
// CodeInternal when there is none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
