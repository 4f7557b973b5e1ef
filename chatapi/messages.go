package chatapi

import (
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
)

// Message is one post in a channel.
type Message struct {
	ID        int64      `json:"id"`
	ChannelID int64      `json:"channel_id"`
	AuthorID  int64      `json:"author_id"`
	Body      string     `json:"body"`
	CreatedAt time.Time  `json:"created_at"`
	EditedAt  *time.Time `json:"edited_at"`
}

const messageColumns = "id, channel_id, author_id, body, created_at, edited_at"

func scanMessage(row pgx.Row) (Message, error) {
	var m Message
	err := row.Scan(&m.ID, &m.ChannelID, &m.AuthorID, &m.Body, &m.CreatedAt, &m.EditedAt)
	return m, err
}

// listMessages pages a channel newest first with "before" as the keyset
// cursor. The lateral join answers "no such channel" (no row) and "no
// messages" (one row of NULLs) in the same round trip as the page.
func (s *Server) listMessages(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	channel, err := pathID(r, "channel")
	if err != nil {
		return err
	}
	before, limit, err := keyset(r, "before", noCursor)
	if err != nil {
		return err
	}
	rows, err := t.db.Query(r.Context(), `SELECT c.id, m.id, m.author_id, m.body, m.created_at, m.edited_at
		FROM channels c LEFT JOIN LATERAL (
			SELECT id, author_id, body, created_at, edited_at FROM messages
			WHERE channel_id = c.id AND id < $2 ORDER BY id DESC LIMIT $3
		) m ON true
		WHERE c.id = $1
		ORDER BY m.id DESC`, channel, before, limit+1)
	if err != nil {
		return err
	}
	found := false
	msgs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Message, error) {
		found = true
		var (
			m          Message
			id, author *int64
			body       *string
			created    *time.Time
		)
		if err := row.Scan(&m.ChannelID, &id, &author, &body, &created, &m.EditedAt); err != nil || id == nil {
			return nil, err
		}
		m.ID, m.AuthorID, m.Body, m.CreatedAt = *id, *author, *body, *created
		return &m, nil
	})
	if err != nil {
		return err
	}
	if !found {
		return notFound("channel", channel)
	}
	var page []Message
	for _, m := range msgs {
		if m != nil {
			page = append(page, *m)
		}
	}
	return writeJSON(w, http.StatusOK, pageOf(page, limit, func(m Message) int64 { return m.ID }))
}

type newMessage struct {
	AuthorID int64  `json:"author_id"`
	Body     string `json:"body"`
}

// postMessage inserts only if the channel exists, so another tenant's (or
// a deleted) channel id is a 404 rather than a foreign-key error.
func (s *Server) postMessage(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	channel, err := pathID(r, "channel")
	if err != nil {
		return err
	}
	var in newMessage
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.Body == "" || in.AuthorID <= 0 {
		return invalidBody("body and author_id (a user id) are required")
	}
	m, err := scanMessage(t.db.QueryRow(r.Context(), `INSERT INTO messages (channel_id, author_id, body)
		SELECT id, $2, $3 FROM channels WHERE id = $1 RETURNING `+messageColumns, channel, in.AuthorID, in.Body))
	if err != nil {
		return rowOr404(err, "channel", channel)
	}
	w.Header().Set("Location", fmt.Sprintf("../../messages/%d", m.ID))
	return writeJSON(w, http.StatusCreated, m)
}

func (s *Server) getMessage(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	id, err := pathID(r, "message")
	if err != nil {
		return err
	}
	m, err := scanMessage(t.db.QueryRow(r.Context(), "SELECT "+messageColumns+" FROM messages WHERE id = $1", id))
	if err != nil {
		return rowOr404(err, "message", id)
	}
	return writeJSON(w, http.StatusOK, m)
}

type messageEdit struct {
	Body string `json:"body"`
}

func (s *Server) editMessage(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	id, err := pathID(r, "message")
	if err != nil {
		return err
	}
	var in messageEdit
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.Body == "" {
		return invalidBody("body is required")
	}
	m, err := scanMessage(t.db.QueryRow(r.Context(), "UPDATE messages SET body = $2, edited_at = now() WHERE id = $1 RETURNING "+messageColumns, id, in.Body))
	if err != nil {
		return rowOr404(err, "message", id)
	}
	return writeJSON(w, http.StatusOK, m)
}

func (s *Server) deleteMessage(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	id, err := pathID(r, "message")
	if err != nil {
		return err
	}
	tag, err := t.db.Exec(r.Context(), "DELETE FROM messages WHERE id = $1", id)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return notFound("message", id)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
