package chatapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// problem is an RFC 9457 problem document and the error every handler
// returns for a client-visible failure. Tenant, Feature and Limit are
// extension members that let clients act without parsing Detail.
type problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	Tenant   string `json:"tenant,omitempty"`
	Feature  string `json:"feature,omitempty"`
	Limit    int64  `json:"limit,omitempty"`

	// retryAfter, in seconds, becomes a Retry-After header when positive.
	retryAfter int
}

func (p *problem) Error() string { return p.Title + ": " + p.Detail }

// problemBase prefixes every problem type; a URN, since the types name
// kinds of failure rather than pages to fetch.
const problemBase = "urn:tenantproxy:chatapi:problem:"

func newProblem(status int, kind, title, detail string) *problem {
	return &problem{Type: problemBase + kind, Title: title, Status: status, Detail: detail}
}

func notFound(what string, id int64) *problem {
	return newProblem(http.StatusNotFound, "not-found", "Not found", fmt.Sprintf("%s %d does not exist", what, id))
}

func invalidBody(format string, args ...any) *problem {
	return newProblem(http.StatusBadRequest, "invalid-body", "Invalid request body", fmt.Sprintf(format, args...))
}

func invalidParameter(format string, args ...any) *problem {
	return newProblem(http.StatusBadRequest, "invalid-parameter", "Invalid parameter", fmt.Sprintf(format, args...))
}

func unavailable(detail string) *problem {
	p := newProblem(http.StatusServiceUnavailable, "unavailable", "Service unavailable", detail)
	p.retryAfter = 1
	return p
}

// writeProblem sends p with the request path as its instance.
func writeProblem(w http.ResponseWriter, r *http.Request, p *problem) {
	if p.Instance == "" {
		p.Instance = r.URL.Path
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	if p.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(p.retryAfter))
	}
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(p)
}

// asProblem maps any handler error to the problem the client sees. Database
// errors are mapped by SQLSTATE at this one boundary; anything unexpected is
// a 500 whose cause is logged, not shown.
func (s *Server) asProblem(r *http.Request, err error) *problem {
	var p *problem
	if errors.As(err, &p) {
		return p
	}
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr):
		if p := s.pgProblem(r, pgErr); p != nil {
			return p
		}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return unavailable("the request ran out of time")
	}
	s.log.Error("request failed", zap.String("tenant", state(r).tenant), zap.String("path", r.URL.Path), zap.Error(err))
	return newProblem(http.StatusInternalServerError, "internal", "Internal error", "the request failed; the error is logged")
}

// pgProblem maps the SQLSTATEs a client can cause, and the proxy's refusals
// (the error table of docs/design.md), to problems. Nil means a server-side fault.
func (s *Server) pgProblem(r *http.Request, e *pgconn.PgError) *problem {
	switch {
	case e.Code == "23503":
		return newProblem(http.StatusUnprocessableEntity, "unknown-reference", "Unknown reference",
			"the request refers to a row that does not exist ("+e.ConstraintName+")")
	case e.Code == "23505":
		return newProblem(http.StatusConflict, "conflict", "Already exists",
			"a row with the same unique value exists ("+e.ConstraintName+")")
	case e.Code == "23514", e.Code == "23502", e.Code[:2] == "22":
		return invalidBody("the value is not accepted: %s", e.Message)
	case e.Code == "28000":
		// The tenant was suspended after this request looked it up (the
		// catalog's invalidation is asynchronous); the proxy knew first.
		p := newProblem(http.StatusForbidden, "tenant-suspended", "Tenant suspended", e.Message)
		p.Tenant = state(r).tenant
		return p
	case e.Code == "3D000":
		p := newProblem(http.StatusNotFound, "unknown-tenant", "Unknown tenant", e.Message)
		p.Tenant = state(r).tenant
		return p
	case e.Code == "28P01":
		// The service login was removed or the secret rotated elsewhere:
		// a fresh pool ensures the login again.
		s.pools.drop(state(r).tenant)
		return unavailable("the API's login to the tenant was refused; retry")
	case e.Code == "53300", e.Code == "53400", e.Code == "57P01":
		return unavailable(e.Message)
	}
	return nil
}

// rowOr404 turns "no rows" into a 404 for what/id.
func rowOr404(err error, what string, id int64) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return notFound(what, id)
	}
	return err
}
