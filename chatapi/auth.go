package chatapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/scram"
)

// End users log in with the catalog credentials the proxy authenticates
// (tenant_users and their SCRAM-SHA-256 verifiers): POST /login checks the
// password against the stored verifier, without a connection to tenant
// data, and answers a bearer token that every tenant endpoint requires.
//
// A token is base64url(claims) "." base64url(HMAC-SHA-256(key, claims)),
// where key derives from the service secret, so every replica sharing the
// secret accepts every replica's tokens. The claims bind the token to one
// tenant: a token is refused (403) on any other tenant's URL.

// tokenKeyLabel derives the token key from the service secret. It cannot
// be a tenant id (ids have no spaces), so the key is never a tenant's
// service password (ServicePassword is HMAC(secret, tenant)).
const tokenKeyLabel = "chatapi bearer token v1"

// claims are what a token asserts.
type claims struct {
	Tenant  string `json:"tenant"`
	User    string `json:"user"`
	Expires int64  `json:"exp"` // Unix seconds
	// Since is the tenant's creation time (Unix µs), so that the token
	// dies with the tenant even if the name is signed up again.
	Since int64 `json:"since"`
}

// LoginRequest is the body of POST /login.
type LoginRequest struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// Login is the answer of POST /login.
type Login struct {
	Token     string    `json:"token"`
	TokenType string    `json:"token_type"`
	Tenant    string    `json:"tenant"`
	User      string    `json:"user"`
	ExpiresAt time.Time `json:"expires_at"`
}

func tokenKey(secret []byte) []byte { return scram.HMAC(secret, tokenKeyLabel) }

// sign renders c as a token.
func sign(key []byte, c claims) string {
	body, _ := json.Marshal(c)
	enc := base64.RawURLEncoding
	payload := enc.EncodeToString(body)
	return payload + "." + enc.EncodeToString(scram.HMAC(key, payload))
}

// errBadToken covers a token that is malformed, badly signed or expired;
// the client is told only that it must log in again.
var errBadToken = errors.New("invalid or expired token")

// verify checks token's signature (in constant time) and expiry.
func verify(key []byte, token string, now time.Time) (claims, error) {
	var c claims
	payload, sig, ok := strings.Cut(token, ".")
	if !ok {
		return c, errBadToken
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, scram.HMAC(key, payload)) {
		return c, errBadToken
	}
	body, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil || json.Unmarshal(body, &c) != nil || c.Tenant == "" || c.User == "" {
		return claims{}, errBadToken
	}
	if now.Unix() >= c.Expires {
		return claims{}, errBadToken
	}
	return c, nil
}

func unauthenticated(w http.ResponseWriter, detail string) *problem {
	w.Header().Set("WWW-Authenticate", `Bearer realm="tenantproxy-chatapi"`)
	return newProblem(http.StatusUnauthorized, "unauthenticated", "Login required", detail)
}

// bearer checks the request's bearer token against tenant id (named by
// Host, header or path): none, invalid or expired is 401, another tenant's
// is 403. It needs no catalog, so an anonymous client learns nothing about
// which tenants exist.
func (s *Server) bearer(w http.ResponseWriter, r *http.Request, id string) (claims, error) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return claims{}, unauthenticated(w, "log in at POST /login and send the token as Authorization: Bearer <token>")
	}
	c, err := verify(s.tokenKey, token, time.Now())
	if err != nil {
		return claims{}, unauthenticated(w, "the token is invalid or expired; log in again at POST /login")
	}
	if subtle.ConstantTimeCompare([]byte(c.Tenant), []byte(id)) != 1 {
		p := newProblem(http.StatusForbidden, "wrong-tenant", "Token of another tenant",
			"the token was issued for another tenant than \""+id+"\"")
		p.Tenant = id
		return claims{}, p
	}
	return c, nil
}

// stillValid refuses a token of an earlier tenant of the same name (deleted
// and signed up again) and a token whose login has been removed from the
// catalog since (the catalog's caches are invalidated on change).
func (s *Server) stillValid(ctx context.Context, w http.ResponseWriter, c claims, t *catalog.Tenant) error {
	if c.Since != t.CreatedAt.UnixMicro() {
		return unauthenticated(w, "the token was issued for an earlier tenant of this name; log in again")
	}
	if _, err := s.cat.User(ctx, t.ID, c.User); errors.Is(err, catalog.ErrNotFound) {
		return unauthenticated(w, "the token's login no longer exists")
	} else if err != nil {
		return err
	}
	return nil
}

// login verifies user and password against the tenant's catalog login and
// answers a token. An unknown tenant, an unknown user and a wrong password
// all get the same 401 after the same work, as the proxy answers them, so
// the answer does not tell which tenants or users exist. The password is
// never logged.
func (s *Server) login(w http.ResponseWriter, r *http.Request) error {
	id, err := identify(s.cfg.BaseDomain, r)
	if err != nil {
		return err
	}
	state(r).tenant = id
	var in LoginRequest
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.User == "" {
		return invalidBody("user is required")
	}
	source := loginSource(r)
	if wait := s.logins.wait(source, time.Now()); wait > 0 {
		return tooManyLogins(wait)
	}
	ok, err := s.checkPassword(r.Context(), id, in.User, in.Password)
	if err != nil {
		return err
	}
	if !ok {
		s.logins.fail(source, time.Now())
		return unauthenticated(w, "wrong user or password")
	}
	// A suspended or provisioning tenant could not use the token.
	t, err := s.activeTenant(r.Context(), id)
	if err != nil {
		return err
	}
	exp := time.Now().Add(s.cfg.TokenTTL).Truncate(time.Second)
	token := sign(s.tokenKey, claims{Tenant: id, User: in.User, Expires: exp.Unix(), Since: t.CreatedAt.UnixMicro()})
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, Login{Token: token, TokenType: "Bearer", Tenant: id, User: in.User, ExpiresAt: exp.UTC()})
}

// dummyVerifier is derived against when the tenant or user does not exist,
// so that such a login costs what a wrong password costs.
var dummyVerifier = scram.Verifier{Iterations: scram.DefaultIterations, Salt: make([]byte, 16), StoredKey: make([]byte, sha256.Size)}

// checkPassword reports whether password derives the stored verifier of
// tenant id's login user.
func (s *Server) checkPassword(ctx context.Context, id, user, password string) (bool, error) {
	v, known := dummyVerifier, false
	t, err := s.cat.TenantBySubdomain(ctx, id)
	switch {
	case err == nil:
		u, err := s.cat.User(ctx, t.ID, user)
		switch {
		case err == nil:
			if pv, perr := scram.ParseVerifier(u.Verifier); perr == nil {
				v, known = pv, true
			}
		case !errors.Is(err, catalog.ErrNotFound):
			return false, err
		}
	case !errors.Is(err, catalog.ErrNotFound):
		return false, err
	}
	if len(password) > scram.MaxPasswordLen {
		// No login can have it (the catalog refuses to store it), and
		// preparing a megabyte would cost more than a wrong password does.
		password, known = "", false
	}
	got, err := scram.Derive(password, v.Salt, v.Iterations)
	if err != nil {
		return false, nil
	}
	return subtle.ConstantTimeCompare(got.StoredKey, v.StoredKey) == 1 && known, nil
}
