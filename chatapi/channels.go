package chatapi

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Channel is a conversation of a tenant's chat.
type Channel struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	Topic     string    `json:"topic"`
	IsPrivate bool      `json:"is_private"`
	CreatedBy int64     `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
}

const channelColumns = "id, name, topic, is_private, created_by, created_at"

func scanChannel(row pgx.Row) (Channel, error) {
	var c Channel
	err := row.Scan(&c.ID, &c.Name, &c.Topic, &c.IsPrivate, &c.CreatedBy, &c.CreatedAt)
	return c, err
}

type newChannel struct {
	Name      string `json:"name"`
	Topic     string `json:"topic"`
	IsPrivate bool   `json:"is_private"`
	CreatedBy int64  `json:"created_by"`
}

// createChannel creates the channel with its creator as first member, in
// one statement.
func (s *Server) createChannel(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	var in newChannel
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.Name = strings.TrimSpace(in.Name); in.Name == "" || in.CreatedBy <= 0 {
		return invalidBody("name and created_by (a user id) are required")
	}
	c, err := scanChannel(t.db.QueryRow(r.Context(), `WITH c AS (
			INSERT INTO channels (name, topic, is_private, created_by) VALUES ($1, $2, $3, $4) RETURNING `+channelColumns+`
		), m AS (
			INSERT INTO channel_members (channel_id, user_id) SELECT id, created_by FROM c
		)
		SELECT `+channelColumns+` FROM c`, in.Name, in.Topic, in.IsPrivate, in.CreatedBy))
	if err != nil {
		return err
	}
	w.Header().Set("Location", fmt.Sprintf("channels/%d", c.ID))
	return writeJSON(w, http.StatusCreated, c)
}
