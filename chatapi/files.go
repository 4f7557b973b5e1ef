package chatapi

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// File is the metadata of an uploaded file; the bytes live in object
// storage under StorageKey, outside this API.
type File struct {
	ID          int64     `json:"id"`
	MessageID   *int64    `json:"message_id"`
	UploaderID  int64     `json:"uploader_id"`
	Filename    string    `json:"filename"`
	ContentType string    `json:"content_type"`
	SizeBytes   int64     `json:"size_bytes"`
	SHA256      string    `json:"sha256,omitempty"`
	StorageKey  string    `json:"storage_key"`
	CreatedAt   time.Time `json:"created_at"`
}

const fileColumns = "id, message_id, uploader_id, filename, content_type, size_bytes, sha256, storage_key, created_at"

func scanFile(row pgx.Row) (File, error) {
	var f File
	var sum []byte
	err := row.Scan(&f.ID, &f.MessageID, &f.UploaderID, &f.Filename, &f.ContentType, &f.SizeBytes, &sum, &f.StorageKey, &f.CreatedAt)
	f.SHA256 = hex.EncodeToString(sum)
	return f, err
}

type newFile struct {
	MessageID   *int64 `json:"message_id"`
	UploaderID  int64  `json:"uploader_id"`
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"`
	SizeBytes   int64  `json:"size_bytes"`
	SHA256      string `json:"sha256"`
}

// createFile records a file's metadata within the plan's storage quota.
// The quota check rides in the insert; concurrent uploads may overshoot it
// by what they add at the same moment, which a quota tolerates.
func (s *Server) createFile(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	var in newFile
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.Filename = strings.TrimSpace(in.Filename); in.Filename == "" || in.UploaderID <= 0 || in.SizeBytes < 0 {
		return invalidBody("filename, uploader_id (a user id) and a size_bytes of at least 0 are required")
	}
	if in.ContentType == "" {
		in.ContentType = "application/octet-stream"
	}
	var sum []byte
	if in.SHA256 != "" {
		b, err := hex.DecodeString(in.SHA256)
		if err != nil || len(b) != 32 {
			return invalidBody("sha256 must be 64 hexadecimal digits")
		}
		sum = b
	}
	quota := int64(t.tenant.MaxStorageGB) << 30
	f, err := scanFile(t.db.QueryRow(r.Context(), `INSERT INTO files (message_id, uploader_id, filename, content_type, size_bytes, sha256, storage_key)
		SELECT $1::bigint, $2::bigint, $3::text, $4::text, $5::bigint, $6::bytea, $7::text
		WHERE (SELECT coalesce(sum(size_bytes), 0) FROM files) + $5::bigint <= $8::bigint
		RETURNING `+fileColumns,
		in.MessageID, in.UploaderID, in.Filename, in.ContentType, in.SizeBytes, sum, "files/"+rand.Text(), quota))
	if errors.Is(err, pgx.ErrNoRows) {
		p := newProblem(http.StatusConflict, "storage-limit", "Storage limit reached",
			fmt.Sprintf("tenant %q cannot store %d more bytes within its plan's %d GB", t.tenant.ID, in.SizeBytes, t.tenant.MaxStorageGB))
		p.Tenant, p.Limit = t.tenant.ID, quota
		return p
	}
	if err != nil {
		return err
	}
	w.Header().Set("Location", fmt.Sprintf("files/%d", f.ID))
	return writeJSON(w, http.StatusCreated, f)
}
