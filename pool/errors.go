package pool

import (
	"errors"
	"fmt"
)

// ErrClosed is returned by Acquire once the Manager is closed. The proxy
// maps it to 57P01 (shutting down).
var ErrClosed = errors.New("pool: closed")

// ErrWaitTimeout is returned by Acquire when its context ends while every
// connection of the key is in use. The error also wraps the context's
// error. The proxy maps it to 53400.
var ErrWaitTimeout = errors.New("pool: timed out waiting for a server connection")

// SetupError means the server refused the Target's setup statements (for
// example SET ROLE of a role that does not exist). The connection was
// closed. Err is the server's *pgconn.PgError, so the proxy can report the
// real SQLSTATE; retrying with the same Target will fail the same way.
type SetupError struct {
	Database, User string
	Err            error
}

func (e *SetupError) Error() string {
	return fmt.Sprintf("pool: tenant context setup on %s as %s: %v", e.Database, e.User, e.Err)
}

func (e *SetupError) Unwrap() error { return e.Err }

// errProtocol marks a reply the pool did not expect from the server: the
// connection's protocol state is unknown, so it is closed.
var errProtocol = errors.New("pool: unexpected server message")
