// Package catalog owns the tenant model and its repository in the control
// database: tenants, backend servers, tenant login users and the provisioning
// outbox. It also provisions tenants in every isolation tier and keeps an LRU
// cache of look-ups that LISTEN/NOTIFY invalidates across processes, because
// every new client connection asks the catalog who its tenant is. The tables
// themselves are created by package migrations (control/).
//
// Look-ups the proxy calls on every new connection, cached (size and TTL in
// Options) and invalidated within milliseconds by the control database's
// triggers, which notify channel tenantproxy_catalog on every change:
//
//	Open(ctx, dsn, Options{CacheSize, CacheTTL, Logger, Sender, Secrets}) (*Catalog, error); (*Catalog).Close()
//	TenantBySubdomain(ctx, subdomain) (*Tenant, error)   // errors wrap ErrNotFound
//	Backend(ctx, name) (*Backend, error)
//	User(ctx, tenantID, username) (*User, error)
//	WatchRemovedUsers(fn) (stop func())                   // a removed login's sessions end
//
// Administration, uncached:
//
//	Create(ctx, CreateRequest) (*Created, error)           // tenant create
//	List(ctx) ([]Tenant, error); Show(ctx, subdomain) (*Tenant, error)
//	Suspend(ctx, subdomain) error; Resume(ctx, subdomain) error; Delete(ctx, subdomain) error
//	ListBackends(ctx) ([]Backend, error); AddBackend(ctx, AddBackendRequest) (*Backend, error)
//	BackendLoads(ctx) ([]BackendLoad, error)                  // tenants per tier and free capacity
//	Move(ctx, MoveRequest) (*Moved, error); Drain(ctx, backend, progress) ([]*Moved, error)
//	AddUser(ctx, tenantID, username, password, role) (*User, string, error)
//	SetPassword(ctx, tenantID, username, password) (string, error); RemoveUser(ctx, tenantID, username) error
//	ListUsers(ctx, tenantID) ([]User, error)                   // people only, never verifiers
//	EnsureServiceUser(ctx, tenantID, username, password) error // the chat API's and the canary's logins
//	Ping(ctx) error                                            // readiness: /readyz
//	RotateSecrets(ctx) ([]string, error); UnsealedBackends(ctx) ([]string, error)
//
// A move's switch is coordinated with every proxy instance through the
// control database (movehold.go): Heartbeat, LeaveInstance, Holds,
// AckHold, WatchMoves and Forget are the proxy's side of it.
//
// Backends' admin DSNs and serving passwords are sealed in the control
// database with Options.Secrets (package secrets) and opened on every read;
// without a key they stay plain text, as catalogs written before encryption
// have them.
//
// Bad input is a *ValidationError (nothing is created); a lifecycle change
// the status forbids is a *StateError. The tenant id equals its subdomain;
// its schema, role and database name is random (NewObjectName), stored in the row.
// A database-tier tenant's sessions log in as a role of its own by that name
// (Tenant.LoginRole), whose password is sealed like the backends' secrets.
// Create rolls a failed provisioning back completely, so the same command can
// be retried; the welcome email is an outbox row written with the
// activation and handed to the Sender (LogSender by default).
package catalog
