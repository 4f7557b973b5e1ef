package proxy

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/router"
)

// sqlstates is the one mapping from internal codes to what clients see;
// DESIGN.md's error table is its specification.
var sqlstates = map[router.Code]struct {
	fatal    bool
	sqlstate string
}{
	router.CodeInternal:            {true, "XX000"},
	router.CodeNoTenant:            {true, "28000"},
	router.CodeNoUser:              {true, "28000"},
	router.CodeConflictingTenant:   {true, "28000"},
	router.CodeInvalidTenant:       {true, "3D000"},
	router.CodeUnknownTenant:       {true, "3D000"},
	router.CodeTenantSuspended:     {true, "28000"},
	router.CodeTenantUnavailable:   {true, "57P03"},
	router.CodeAuthFailed:          {true, "28P01"},
	router.CodeTLSRequired:         {true, "28000"},
	router.CodeStatementRefused:    {false, "42501"},
	router.CodeTooManyConnections:  {true, "53300"},
	router.CodeRateLimited:         {false, "53400"},
	router.CodeShuttingDown:        {true, "57P01"},
	router.CodeProtocolViolation:   {true, "08P01"},
	router.CodeFeatureNotSupported: {true, "0A000"},
	router.CodeBackendUnavailable:  {true, "08006"},
	router.CodeMessageTooLarge:     {true, "54000"},
}

// errorResponse renders err for the client. *router.Error keeps its
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
	code, msg := router.CodeInternal, "internal error in tenantproxy"
	var rErr *router.Error
	switch {
	case errors.As(err, &rErr):
		code = rErr.Code
		if code != router.CodeInternal {
			msg = rErr.Msg
		}
	case errors.Is(err, pool.ErrWaitTimeout):
		code, msg = router.CodeRateLimited, "timed out waiting for a server connection"
	case errors.Is(err, pool.ErrClosed):
		code, msg = router.CodeShuttingDown, "terminating connection: tenantproxy is shutting down"
	}
	m := sqlstates[code]
	sev := "ERROR"
	if m.fatal || fatal {
		sev = "FATAL"
	}
	return &pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: m.sqlstate, Message: msg}
}
