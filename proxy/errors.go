package proxy

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/pool"
)

// errorResponse renders err for the client. *pgerr.Error keeps its
// message; a server's own refusal (*pgconn.PgError, e.g. a bad setting
// value in the startup packet) is passed on as the server said it; any
// other error becomes a generic internal error so nothing internal leaks.
// fatal forces FATAL severity, as PostgreSQL uses for every error before
// the first ReadyForQuery.
func errorResponse(err error, fatal bool) *pgproto3.ErrorResponse {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: pgErr.Code, Message: pgErr.Message, Detail: pgErr.Detail, Hint: pgErr.Hint}
	}
	code, msg := pgerr.CodeInternal, "internal error in tenantproxy"
	var rErr *pgerr.Error
	switch {
	case errors.As(err, &rErr):
		code = rErr.Code
		if code != pgerr.CodeInternal {
			msg = rErr.Msg
		}
	case errors.Is(err, pool.ErrWaitTimeout):
		code, msg = pgerr.CodeRateLimited, "timed out waiting for a server connection"
	case errors.Is(err, pool.ErrClosed):
		code, msg = pgerr.CodeShuttingDown, "terminating connection: tenantproxy is shutting down"
	}
	sev := "ERROR"
	if code.Fatal() || fatal {
		sev = "FATAL"
	}
	return &pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: code.SQLState(), Message: msg}
}
