package chatapi

import (
	"fmt"
	"hash/fnv"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// User is a member of a tenant's chat.
type User struct {
	ID          int64     `json:"id"`
	Username    string    `json:"username"`
	DisplayName string    `json:"display_name"`
	Email       *string   `json:"email"`
	CreatedAt   time.Time `json:"created_at"`
}

const userColumns = "id, username, display_name, email, created_at"

func scanUser(row pgx.Row) (User, error) {
	var u User
	err := row.Scan(&u.ID, &u.Username, &u.DisplayName, &u.Email, &u.CreatedAt)
	return u, err
}

func collectUser(row pgx.CollectableRow) (User, error) { return scanUser(row) }

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	after, limit, err := keyset(r, "after", 0)
	if err != nil {
		return err
	}
	rows, err := t.db.Query(r.Context(), "SELECT "+userColumns+" FROM users WHERE id > $1 ORDER BY id LIMIT $2", after, limit+1)
	if err != nil {
		return err
	}
	users, err := pgx.CollectRows(rows, collectUser)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, pageOf(users, limit, func(u User) int64 { return u.ID }))
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	id, err := pathID(r, "user")
	if err != nil {
		return err
	}
	u, err := scanUser(t.db.QueryRow(r.Context(), "SELECT "+userColumns+" FROM users WHERE id = $1", id))
	if err != nil {
		return rowOr404(err, "user", id)
	}
	return writeJSON(w, http.StatusOK, u)
}

type newUser struct {
	Username    string  `json:"username"`
	DisplayName string  `json:"display_name"`
	Email       *string `json:"email"`
}

// createUser adds a chat user within the plan's max_users. The count and
// the insert run under a transaction-scoped advisory lock keyed by the
// tenant, so concurrent sign-ups of one tenant cannot both take the last
// place, while other tenants (even in the same database) never wait.
func (s *Server) createUser(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	var in newUser
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.Username = strings.TrimSpace(in.Username); in.Username == "" {
		return invalidBody("username is required")
	}
	ctx := r.Context()
	var u User
	err := pgx.BeginFunc(ctx, t.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey(t.tenant.ID, "users")); err != nil {
			return err
		}
		var n int64
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
			return err
		}
		if n >= int64(t.tenant.MaxUsers) {
			p := newProblem(http.StatusConflict, "user-limit", "User limit reached",
				fmt.Sprintf("tenant %q has %d users, the limit of its %s plan", t.tenant.ID, n, t.tenant.Plan))
			p.Tenant, p.Limit = t.tenant.ID, int64(t.tenant.MaxUsers)
			return p
		}
		var err error
		u, err = scanUser(tx.QueryRow(ctx, "INSERT INTO users (username, display_name, email) VALUES ($1, $2, $3) RETURNING "+userColumns,
			in.Username, in.DisplayName, in.Email))
		return err
	})
	if err != nil {
		return err
	}
	w.Header().Set("Location", fmt.Sprintf("users/%d", u.ID))
	return writeJSON(w, http.StatusCreated, u)
}

// lockKey is an advisory lock key for one tenant's named critical section.
// It is a lock name computed here, not a filter: the SQL stays the same for
// every tenant.
func lockKey(tenant, section string) int64 {
	h := fnv.New64a()
	h.Write([]byte("chatapi\x00" + section + "\x00" + tenant))
	return int64(h.Sum64())
}
