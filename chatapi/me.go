package chatapi

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// Me describes the calling tenant: what the catalog says about it, its
// plan and features as SQL sees them through the proxy, and its usage.
type Me struct {
	Tenant                string          `json:"tenant"`
	Name                  string          `json:"name"`
	Plan                  string          `json:"plan"`
	IsolationLevel        catalog.Tier    `json:"isolation_level"`
	Status                catalog.Status  `json:"status"`
	Region                string          `json:"region"`
	Features              json.RawMessage `json:"features"`
	Limits                Limits          `json:"limits"`
	Usage                 Usage           `json:"usage"`
	SubscriptionExpiresAt *time.Time      `json:"subscription_expires_at,omitempty"`
}

// Limits are the plan's limits.
type Limits struct {
	MaxUsers     int `json:"max_users"`
	MaxStorageGB int `json:"max_storage_gb"`
}

// Usage is what counts against Limits.
type Usage struct {
	Users        int64 `json:"users"`
	StorageBytes int64 `json:"storage_bytes"`
}

func (s *Server) me(w http.ResponseWriter, r *http.Request, t *tenantReq) error {
	tn := t.tenant
	m := Me{
		Tenant: tn.ID, Name: tn.Name, IsolationLevel: tn.Tier, Status: tn.Status, Region: tn.Region,
		Limits:                Limits{MaxUsers: tn.MaxUsers, MaxStorageGB: tn.MaxStorageGB},
		SubscriptionExpiresAt: tn.SubscriptionExpiresAt,
	}
	// Plan and features as the proxy gives them to SQL, the same values
	// the tenant's row-level policies gate on.
	var features string
	err := t.db.QueryRow(r.Context(), "SELECT "+planColumns+", (SELECT count(*) FROM users), (SELECT coalesce(sum(size_bytes), 0)::bigint FROM files)").
		Scan(&m.Plan, &features, &m.Usage.Users, &m.Usage.StorageBytes)
	if err != nil {
		return err
	}
	m.Features = json.RawMessage(features)
	return writeJSON(w, http.StatusOK, m)
}
