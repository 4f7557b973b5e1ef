package proxy

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
)

// This file is the proxy's one error boundary: classify is the only place
// that knows the pool's, the server's and the policy's errors, and
// errorResponse the only place that renders an error for a client.

var (
	errShuttingDown = pgerr.Errorf(pgerr.CodeShuttingDown, "terminating connection: tenantproxy is shutting down")
	errServerLost   = pgerr.Errorf(pgerr.CodeBackendUnavailable, "terminating connection: the server connection was lost")
	errContextLost  = pgerr.Errorf(pgerr.CodeBackendUnavailable, "terminating connection: the tenant context could not be established")
	errFastPath     = "fast-path function calls are not allowed through the proxy"
)

// clientErr is what a client is told about an error.
type clientErr struct {
	// tell is false for failures of the client's own connection (it went
	// away, timed out): there is no one to tell.
	tell bool
	code pgerr.Code
	msg  string
	// server is the server's own refusal (a bad setting value in the
	// startup packet, a setup statement the server rejected), passed on
	// as the server said it.
	server *pgconn.PgError
	// transient errors keep ERROR severity even at startup, so that
	// clients know to retry (53400).
	transient bool
	// position in the statement, for syntax errors.
	position int
	// hint is the error's HINT, if any.
	hint string
}

// classify decides what the client hears of err. A framing error is the
// client's protocol violation (only client streams have limits); a
// server's refusal
// (found anywhere in the chain, e.g. inside a pool.SetupError) is passed
// on; a *pgerr.Error keeps its code and message; pool errors map to their
// codes; anything else is an I/O failure of the client's connection, which
// nobody hears of.
func classify(err error) clientErr {
	var pgErr *pgconn.PgError
	var rErr *pgerr.Error
	var tooLarge *pgwire.TooLargeError
	switch {
	case errors.As(err, &tooLarge):
		return clientErr{tell: true, code: pgerr.CodeMessageTooLarge, msg: fmt.Sprintf("message of %d bytes exceeds the limit of %d", tooLarge.Size, tooLarge.Max)}
	case errors.Is(err, pgwire.ErrInvalidLength):
		return clientErr{tell: true, code: pgerr.CodeProtocolViolation, msg: "invalid message length"}
	case errors.As(err, &pgErr):
		return clientErr{tell: true, server: pgErr}
	case errors.As(err, &rErr):
		msg := rErr.Msg
		if rErr.Code == pgerr.CodeInternal {
			msg = "internal error in tenantproxy"
		}
		return clientErr{tell: true, code: rErr.Code, msg: msg, transient: rErr.Code == pgerr.CodeRateLimited || rErr.Code == pgerr.CodeQueryCanceled, position: rErr.Position, hint: rErr.Hint}
	case errors.Is(err, pool.ErrWaitTimeout):
		return clientErr{tell: true, code: pgerr.CodeRateLimited, msg: "timed out waiting for a server connection", transient: true}
	case errors.Is(err, pool.ErrClosed):
		return clientErr{tell: true, code: pgerr.CodeShuttingDown, msg: errShuttingDown.Msg}
	}
	return clientErr{code: pgerr.CodeInternal, msg: "internal error in tenantproxy"}
}

// clientsFault reports whether err, which ended the reading of a
// client's messages, is the client's own doing that it must be told of
// before its connection closes: a message over the size limit, an invalid
// length, or a message there was no memory for (53200).
func clientsFault(err error) bool {
	var tooLarge *pgwire.TooLargeError
	return errors.As(err, &tooLarge) || errors.Is(err, pgwire.ErrInvalidLength) || pgerr.CodeOf(err) == pgerr.CodeOutOfMemory
}

// fromPool turns an Acquire failure into an error classify knows: what the
// pool did not decide itself (a dial or TLS failure) is the tenant's
// server being unreachable.
func fromPool(err error) error {
	var setupErr *pool.SetupError
	var decided *pgerr.Error // the proxy's own, such as a tenant over its rate
	if errors.Is(err, pool.ErrWaitTimeout) || errors.Is(err, pool.ErrClosed) || errors.As(err, &setupErr) || errors.As(err, &decided) {
		return err
	}
	return &pgerr.Error{Code: pgerr.CodeBackendUnavailable, Msg: "could not connect to the tenant's server", Err: err}
}

// refused is the error of a statement the tenant policy refused: 42501,
// or 54001 for one nested too deeply to parse (policy.CodeOf).
func refused(reason string) error {
	return pgerr.Errorf(policy.CodeOf(reason), "%s", reason)
}

// Severities an error can be rendered with beyond its code's own.
const (
	asIs     = iota // the code's severity
	fatal           // FATAL: the session ends (every error before the first ReadyForQuery)
	nonfatal        // ERROR: the session goes on (a transaction that could not start)
)

// errorResponse renders err for the client with the given severity rule.
// A server's own refusal is FATAL unless nonfatal: the proxy passes one on
// when it ends the connection, or when a transaction could not start.
func errorResponse(err error, severity int) *pgproto3.ErrorResponse {
	ce := classify(err)
	if ce.server != nil {
		p := ce.server
		sev := "FATAL"
		if severity == nonfatal {
			sev = "ERROR"
		}
		return &pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: p.Code, Message: p.Message, Detail: p.Detail, Hint: p.Hint}
	}
	sev := "ERROR"
	if (ce.code.Fatal() && severity != nonfatal) || severity == fatal {
		sev = "FATAL"
	}
	return &pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: ce.code.SQLState(), Message: ce.msg, Position: int32(ce.position), Hint: ce.hint}
}

// encodeError renders err for the client as wire bytes.
func encodeError(err error, severity int) []byte {
	b, _ := errorResponse(err, severity).Encode(nil)
	return b
}
