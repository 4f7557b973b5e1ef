package chatapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// SignUpRequest provisions a tenant from a plan.
type SignUpRequest struct {
	Subdomain      string `json:"subdomain"`
	Name           string `json:"name"`
	Plan           string `json:"plan"`
	Region         string `json:"region,omitempty"`
	IsolationLevel string `json:"isolation_level,omitempty"`
	AdminUser      string `json:"admin_user,omitempty"`
	AdminPassword  string `json:"admin_password,omitempty"`
}

// SignUp is the provisioned tenant, ready for requests when it is returned.
type SignUp struct {
	Tenant    *catalog.Tenant `json:"tenant"`
	AdminUser string          `json:"admin_user"`
	// AdminPassword is the generated password of AdminUser, shown once;
	// empty when the request chose one.
	AdminPassword string `json:"admin_password,omitempty"`
	// ReadyMS is the time from the request to the first query answered
	// through the proxy as the new tenant.
	ReadyMS float64 `json:"ready_ms"`
	Timings Timings `json:"timings"`
}

// Timings break ReadyMS down.
type Timings struct {
	ProvisionMS    float64 `json:"provision_ms"`
	ServiceLoginMS float64 `json:"service_login_ms"`
	FirstQueryMS   float64 `json:"first_query_ms"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// signUp provisions the tenant, ensures the API's login to it and answers
// only once a query has gone through the proxy as the tenant, so that
// "ready" means ready.
func (s *Server) signUp(w http.ResponseWriter, r *http.Request) error {
	start := time.Now()
	var in SignUpRequest
	if err := decode(w, r, &in); err != nil {
		return err
	}
	ctx := r.Context()
	state(r).tenant = in.Subdomain
	if _, err := s.cat.Show(ctx, in.Subdomain); err == nil {
		p := newProblem(http.StatusConflict, "tenant-exists", "Tenant exists", fmt.Sprintf("subdomain %q is already taken", in.Subdomain))
		p.Tenant = in.Subdomain
		return p
	}
	created, err := s.cat.Create(ctx, catalog.CreateRequest{
		Subdomain: in.Subdomain, Name: in.Name, Plan: in.Plan, Region: in.Region, Tier: catalog.Tier(in.IsolationLevel),
		AdminUser: in.AdminUser, AdminPassword: in.AdminPassword,
	})
	if err != nil {
		return catalogProblem(err)
	}
	provisioned := time.Now()
	tp, err := s.pools.acquire(ctx, created.Tenant.ID)
	if err != nil {
		return err
	}
	defer tp.release()
	loggedIn := time.Now()
	if _, err := tp.Exec(ctx, "SELECT 1"); err != nil {
		return err
	}
	done := time.Now()
	out := SignUp{
		Tenant: created.Tenant, AdminUser: created.AdminUser, AdminPassword: created.Password,
		ReadyMS: ms(done.Sub(start)),
		Timings: Timings{
			ProvisionMS: ms(provisioned.Sub(start)), ServiceLoginMS: ms(loggedIn.Sub(provisioned)), FirstQueryMS: ms(done.Sub(loggedIn)),
		},
	}
	s.log.Info("tenant signed up", zap.String("tenant", created.Tenant.ID), zap.String("plan", created.Tenant.Plan),
		zap.String("tier", string(created.Tenant.Tier)), zap.Float64("ready_ms", out.ReadyMS))
	w.Header().Set("Location", "/admin/tenants/"+created.Tenant.ID)
	return writeJSON(w, http.StatusCreated, out)
}

// catalogProblem maps the catalog's typed errors.
func catalogProblem(err error) error {
	var ve *catalog.ValidationError
	var se *catalog.StateError
	switch {
	case errors.As(err, &ve):
		return invalidBody("%s", ve.Error())
	case errors.As(err, &se):
		p := newProblem(http.StatusConflict, "tenant-state", "Not allowed in this state", se.Error())
		p.Tenant = se.Tenant
		return p
	case errors.Is(err, catalog.ErrNotFound):
		return newProblem(http.StatusNotFound, "unknown-tenant", "Unknown tenant", err.Error())
	}
	return err
}

// pathTenant reads and validates the {tenant} of an operator route.
func pathTenant(r *http.Request) (string, error) {
	id := r.PathValue("tenant")
	if err := catalog.ValidateSubdomain(id); err != nil {
		return "", invalidTenant("path", err)
	}
	state(r).tenant = id
	return id, nil
}

func (s *Server) showTenant(w http.ResponseWriter, r *http.Request) error {
	id, err := pathTenant(r)
	if err != nil {
		return err
	}
	t, err := s.cat.Show(r.Context(), id)
	if err != nil {
		return catalogProblem(err)
	}
	return writeJSON(w, http.StatusOK, t)
}

func (s *Server) suspend(w http.ResponseWriter, r *http.Request) error {
	return s.setStatus(w, r, s.cat.Suspend)
}

func (s *Server) resume(w http.ResponseWriter, r *http.Request) error {
	return s.setStatus(w, r, s.cat.Resume)
}

// setStatus changes the tenant's status and answers with the tenant. The
// pool is dropped either way: a suspended tenant must not keep
// connections, and a resumed one starts afresh.
func (s *Server) setStatus(w http.ResponseWriter, r *http.Request, change func(context.Context, string) error) error {
	id, err := pathTenant(r)
	if err != nil {
		return err
	}
	if err := change(r.Context(), id); err != nil {
		return catalogProblem(err)
	}
	s.pools.drop(id)
	t, err := s.cat.Show(r.Context(), id)
	if err != nil {
		return catalogProblem(err)
	}
	return writeJSON(w, http.StatusOK, t)
}

// deleteTenant is the GDPR erasure: the tenant's data and catalog rows go.
func (s *Server) deleteTenant(w http.ResponseWriter, r *http.Request) error {
	id, err := pathTenant(r)
	if err != nil {
		return err
	}
	s.pools.drop(id)
	if err := s.cat.Delete(r.Context(), id); err != nil {
		return catalogProblem(err)
	}
	s.log.Info("tenant deleted", zap.String("tenant", id))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Membership is a user's membership of a channel, as exported.
type Membership struct {
	ChannelID int64     `json:"channel_id"`
	UserID    int64     `json:"user_id"`
	JoinedAt  time.Time `json:"joined_at"`
}

func scanMembership(row pgx.Row) (Membership, error) {
	var m Membership
	err := row.Scan(&m.ChannelID, &m.UserID, &m.JoinedAt)
	return m, err
}

// export streams everything the tenant can see through the proxy, from one
// snapshot: {"tenant": …, "exported_at": …, "users": […], "channels": […],
// "channel_members": […], "messages": […], "files": […]}. Rows are written
// as they are read, so the size of a tenant does not matter. The tenant
// must be active: the proxy refuses a suspended tenant's connections.
func (s *Server) export(w http.ResponseWriter, r *http.Request) error {
	id, err := pathTenant(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	t, err := s.activeTenant(ctx, id)
	if err != nil {
		return err
	}
	tp, err := s.pools.acquire(ctx, id)
	if err != nil {
		return err
	}
	defer tp.release()
	tx, err := tp.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// Nothing is written before the first query works, so an unreachable
	// tenant still gets a problem document.
	var exportedAt time.Time
	if err := tx.QueryRow(ctx, "SELECT now()").Scan(&exportedAt); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", `attachment; filename="`+id+`-export.json"`)
	w.WriteHeader(http.StatusOK)
	if err := s.streamExport(ctx, w, tx, t, exportedAt); err != nil {
		// The status line is gone: cutting the connection is the only way
		// left to tell the client the document is incomplete, rather than
		// let a truncated export look whole.
		s.log.Error("export aborted", zap.String("tenant", id), zap.Error(err))
		state(r).aborted = true
		panic(http.ErrAbortHandler)
	}
	return nil
}

func (s *Server) streamExport(ctx context.Context, w io.Writer, tx pgx.Tx, t *catalog.Tenant, at time.Time) error {
	head, err := json.Marshal(t)
	if err != nil {
		return err
	}
	stamp, _ := at.UTC().MarshalJSON()
	if _, err := fmt.Fprintf(w, `{"tenant":%s,"exported_at":%s`, head, stamp); err != nil {
		return err
	}
	steps := []func() error{
		func() error {
			return exportTable(ctx, w, tx, "users", "SELECT "+userColumns+" FROM users ORDER BY id", scanUser)
		},
		func() error {
			return exportTable(ctx, w, tx, "channels", "SELECT "+channelColumns+" FROM channels ORDER BY id", scanChannel)
		},
		func() error {
			return exportTable(ctx, w, tx, "channel_members",
				"SELECT channel_id, user_id, joined_at FROM channel_members ORDER BY channel_id, user_id", scanMembership)
		},
		func() error {
			return exportTable(ctx, w, tx, "messages", "SELECT "+messageColumns+" FROM messages ORDER BY id", scanMessage)
		},
		func() error {
			return exportTable(ctx, w, tx, "files", "SELECT "+fileColumns+" FROM files ORDER BY id", scanFile)
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	_, err = io.WriteString(w, "}\n")
	return err
}

// exportTable writes `,"<name>":[row,row,…]` as rows arrive.
func exportTable[T any](ctx context.Context, w io.Writer, tx pgx.Tx, name, sql string, scan func(pgx.Row) (T, error)) error {
	rows, err := tx.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	if _, err := fmt.Fprintf(w, `,%q:[`, name); err != nil {
		return err
	}
	sep := ""
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if _, err := io.WriteString(w, sep); err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		sep = ","
	}
	if err := rows.Err(); err != nil {
		return err
	}
	_, err = io.WriteString(w, "]")
	return err
}
