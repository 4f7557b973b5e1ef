package chatapi

import (
	"errors"
	"net/http"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// The operator's view of a tenant's logins (the catalog's tenant_users,
// the credentials clients give the proxy and POST /login), as `tenant user`
// manages them on the command line. They are not the chat app's own
// users (/users), which are rows of the tenant's data.

// NewTenantLogin adds a login to a tenant.
type NewTenantLogin struct {
	Username string `json:"username"`
	// Password is generated and returned once when empty.
	Password string `json:"password,omitempty"`
	// Role is admin or member; empty means member.
	Role string `json:"role,omitempty"`
}

// PasswordChange sets a login's password; an empty one is generated.
type PasswordChange struct {
	Password string `json:"password,omitempty"`
}

// TenantLoginPassword answers an added login or a changed password.
type TenantLoginPassword struct {
	Tenant   string `json:"tenant"`
	Username string `json:"username"`
	Role     string `json:"role,omitempty"`
	// Password is the generated password, shown once; empty when the
	// request chose one.
	Password string `json:"password,omitempty"`
}

// pathLogin reads and validates the {tenant} and {user} of a login route.
func pathLogin(r *http.Request) (tenant, name string, err error) {
	if tenant, err = pathTenant(r); err != nil {
		return "", "", err
	}
	name = r.PathValue("user")
	if err := catalog.ValidateUsername(name); err != nil {
		return "", "", invalidParameter("%v", err)
	}
	return tenant, name, nil
}

// loginProblem maps the catalog's login errors, then the rest as
// catalogProblem does.
func loginProblem(err error) error {
	var le *catalog.LimitError
	switch {
	case errors.As(err, &le):
		p := newProblem(http.StatusConflict, "user-limit", "User limit reached", le.Error())
		p.Tenant, p.Limit = le.Tenant, int64(le.Max)
		return p
	case errors.Is(err, catalog.ErrUserNotFound):
		return newProblem(http.StatusNotFound, "unknown-user", "Unknown user", err.Error())
	}
	return catalogProblem(err)
}

func (s *Server) listLogins(w http.ResponseWriter, r *http.Request) error {
	id, err := pathTenant(r)
	if err != nil {
		return err
	}
	us, err := s.cat.ListUsers(r.Context(), id)
	if err != nil {
		return loginProblem(err)
	}
	return writeJSON(w, http.StatusOK, us)
}

func (s *Server) addLogin(w http.ResponseWriter, r *http.Request) error {
	id, err := pathTenant(r)
	if err != nil {
		return err
	}
	var in NewTenantLogin
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.Role == "" {
		in.Role = "member"
	}
	u, generated, err := s.cat.AddUser(r.Context(), id, in.Username, in.Password, in.Role)
	if err != nil {
		return loginProblem(err)
	}
	s.log.Info("tenant login added", zap.String("tenant", id), zap.String("user", u.Username), zap.String("role", u.Role))
	return writeJSON(w, http.StatusCreated, TenantLoginPassword{Tenant: id, Username: u.Username, Role: u.Role, Password: generated})
}

func (s *Server) setLoginPassword(w http.ResponseWriter, r *http.Request) error {
	id, name, err := pathLogin(r)
	if err != nil {
		return err
	}
	var in PasswordChange
	if err := decode(w, r, &in); err != nil {
		return err
	}
	generated, err := s.cat.SetPassword(r.Context(), id, name, in.Password)
	if err != nil {
		return loginProblem(err)
	}
	return writeJSON(w, http.StatusOK, TenantLoginPassword{Tenant: id, Username: name, Password: generated})
}

// removeLogin deletes the login; the proxies end its open sessions.
func (s *Server) removeLogin(w http.ResponseWriter, r *http.Request) error {
	id, name, err := pathLogin(r)
	if err != nil {
		return err
	}
	if err := s.cat.RemoveUser(r.Context(), id, name); err != nil {
		return loginProblem(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
