package catalog

import (
	"encoding/json"
	"time"
)

// Tier is a tenant's isolation level.
type Tier string

// The three isolation tiers; the tier table of docs/design.md (and of the
// README) says what each means.
const (
	TierShared   Tier = "shared"
	TierSchema   Tier = "schema"
	TierDatabase Tier = "database"
)

// Status is where a tenant is in its lifecycle. Only StatusActive tenants
// may reach a backend.
type Status string

// Tenant statuses. StatusProvisioning marks a tenant whose create has not
// finished; a retry of the same create completes it.
const (
	StatusProvisioning Status = "provisioning"
	StatusActive       Status = "active"
	StatusSuspended    Status = "suspended"
)

// Plan names accepted by create; each implies a default tier.
const (
	PlanFree       = "free"
	PlanTrial      = "trial"
	PlanStandard   = "standard"
	PlanPro        = "pro"
	PlanEnterprise = "enterprise"
)

// Tenant is one customer of the platform, as the catalog stores it.
type Tenant struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Subdomain string `json:"subdomain"`
	Tier      Tier   `json:"isolation_level"`
	Plan      string `json:"plan"`
	Status    Status `json:"status"`
	Region    string `json:"data_region"`
	// Backend names the server (Backend.Name) that holds the tenant's data.
	Backend string `json:"backend"`
	// Database is the database on Backend that holds the tenant's data: the
	// backend's shared database, its schema database, or the tenant's own.
	// A database-tier tenant's login role has the same name (LoginRole).
	Database string `json:"database"`
	// DatabaseURL locates the tenant's own database (database tier only),
	// without credentials.
	DatabaseURL string `json:"database_url,omitempty"`
	// SchemaName is the tenant's schema (schema tier only). It is also the
	// name of the tenant's NOLOGIN role.
	SchemaName string `json:"schema_name,omitempty"`
	// LoginPassword is the password of the database tier's login role;
	// empty in the other tiers, and for a database-tier tenant created
	// before tenants had roles of their own until `migrate up` gives it
	// one. It is a secret: never log it.
	LoginPassword string          `json:"-"`
	MaxUsers      int             `json:"max_users"`
	MaxStorageGB  int             `json:"max_storage_gb"`
	Features      json.RawMessage `json:"features"`
	Settings      json.RawMessage `json:"settings"`
	// Limits are the tenant's effective limits: its overrides, else its
	// plan's, else the plan's defaults.
	Limits Limits `json:"limits"`
	// StorageBytes is the tenant's storage as last measured
	// (MeasureStorage), nil until then; StorageMeasuredAt is when.
	StorageBytes          *int64     `json:"storage_bytes"`
	StorageMeasuredAt     *time.Time `json:"storage_measured_at,omitempty"`
	CreatedAt             time.Time  `json:"created_at"`
	SubscriptionExpiresAt *time.Time `json:"subscription_expires_at,omitempty"`
}

// Backend is a PostgreSQL server that holds tenant data.
type Backend struct {
	Name   string `json:"name"`
	Region string `json:"region"`
	// AdminDSN connects with the role used for provisioning and migrations
	// only. It carries a secret: never log it.
	AdminDSN string `json:"-"`
	// ServingUser and ServingPassword are the credentials of the
	// non-superuser role that carries tenant traffic.
	ServingUser     string `json:"serving_user"`
	ServingPassword string `json:"-"`
	// Capacity bounds how many database-tier tenants are placed here.
	Capacity int `json:"capacity"`
	// SharedDatabase holds the shared tier's RLS tables; SchemaDatabase holds
	// one schema per schema-tier tenant.
	SharedDatabase string `json:"shared_database"`
	SchemaDatabase string `json:"schema_database"`
}

// User is a login of one tenant. Only the SCRAM-SHA-256 verifier is stored,
// in PostgreSQL's "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>" form.
type User struct {
	TenantID string `json:"tenant_id"`
	Username string `json:"username"`
	Verifier string `json:"-"`
	Role     string `json:"role"`
	// CreatedAt is set by ListUsers only.
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// LoginRole is the role a database-tier tenant's sessions log in as: a
// LOGIN role of its own that owns its database, so that what one tenant's
// code does to its role reaches no other tenant. Empty in the other tiers,
// whose sessions log in as the backend's serving role.
func (t *Tenant) LoginRole() string {
	if t.Tier != TierDatabase {
		return ""
	}
	return t.Database
}
