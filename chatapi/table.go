package chatapi

import (
	"net/http"

	"github.com/jackc/pgx/v5"
)

// table is what the list and read-by-id endpoints need of a chat table:
// users, channels and files are listed (keyset, oldest first) and read the
// same way; messages page newest first within a channel and have their own.
type table[T any] struct {
	name    string // the SQL table
	noun    string // its path wildcard and the word in a 404
	columns string
	scan    func(pgx.Row) (T, error)
	id      func(T) int64
}

var (
	users    = table[User]{name: "users", noun: "user", columns: userColumns, scan: scanUser, id: func(u User) int64 { return u.ID }}
	channels = table[Channel]{name: "channels", noun: "channel", columns: channelColumns, scan: scanChannel, id: func(c Channel) int64 { return c.ID }}
	files    = table[File]{name: "files", noun: "file", columns: fileColumns, scan: scanFile, id: func(f File) int64 { return f.ID }}
)

func (tb table[T]) list(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	after, limit, err := keyset(r, "after", 0)
	if err != nil {
		return err
	}
	rows, err := t.db.Query(r.Context(), "SELECT "+tb.columns+" FROM "+tb.name+" WHERE id > $1 ORDER BY id LIMIT $2", after, limit+1)
	if err != nil {
		return err
	}
	items, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (T, error) { return tb.scan(row) })
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, pageOf(items, limit, tb.id))
}

func (tb table[T]) get(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	id, err := pathID(r, tb.noun)
	if err != nil {
		return err
	}
	v, err := tb.scan(t.db.QueryRow(r.Context(), "SELECT "+tb.columns+" FROM "+tb.name+" WHERE id = $1", id))
	if err != nil {
		return rowOr404(err, tb.noun, id)
	}
	return writeJSON(w, http.StatusOK, v)
}
