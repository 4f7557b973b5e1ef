package chatapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
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

type newUser struct {
	Username    string  `json:"username"`
	DisplayName string  `json:"display_name"`
	Email       *string `json:"email"`
}

// createUser adds a chat user within the plan's max_users. The count and
// the insert run in a SERIALIZABLE transaction, so two concurrent creates
// cannot both take the last place: PostgreSQL aborts one (40001) and it is
// retried. A lock would serialize more cheaply, but the shared tier
// refuses LOCK TABLE, and SERIALIZABLE works the same in every tier.
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
	err := serializable(ctx, t.db, func(tx pgx.Tx) error {
		var n int64
		var plan string
		if err := tx.QueryRow(ctx, "SELECT count(*), current_setting('tenant.plan') FROM users").Scan(&n, &plan); err != nil {
			return err
		}
		if n >= int64(t.tenant.MaxUsers) {
			p := newProblem(http.StatusConflict, "user-limit", "User limit reached",
				fmt.Sprintf("tenant %q has %d users, the limit of its %s plan", t.tenant.ID, n, plan))
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

// maxSerializableAttempts bounds the retries of a transaction that keeps
// losing serialization conflicts; each round commits at least one of the
// contenders, so this only ends a pathological pile-up.
const maxSerializableAttempts = 20

// serializable runs fn in a SERIALIZABLE transaction, again while it fails
// with a serialization failure (SQLSTATE 40001).
func serializable(ctx context.Context, db *pgxpool.Pool, fn func(pgx.Tx) error) error {
	var err error
	for range maxSerializableAttempts {
		err = pgx.BeginTxFunc(ctx, db, pgx.TxOptions{IsoLevel: pgx.Serializable}, fn)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "40001" {
			return err
		}
	}
	return err
}
