package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/scram"
)

const (
	scramMechanism = "SCRAM-SHA-256"
	// maxAuthMessage bounds SASL messages; real ones are ~100 bytes.
	maxAuthMessage = 1024
	serverNonceLen = 18
)

// errAuthFailed is what every failed login looks like to the client:
// unknown user and wrong password are indistinguishable.
func errAuthFailed(user string) error {
	return pgerr.Errorf(pgerr.CodeAuthFailed, "password authentication failed for user %q", user)
}

// authenticate checks the client's credentials for user u of tenant t; u
// is nil when the tenant has no such user, which fails the same way a
// wrong password does, after the same exchange. On success the client has
// been sent AuthenticationSASLFinal (SCRAM) but not AuthenticationOk.
func (s *Server) authenticate(c *clientConn, lv *live, t *catalog.Tenant, name string, u *catalog.User) error {
	if lv.cfg.AuthMethod == AuthTrust {
		if u == nil {
			return errAuthFailed(name)
		}
		return nil
	}
	v, err := s.verifierFor(t, name, u)
	if err != nil {
		return err
	}
	return s.scramExchange(c, v, name)
}

// verifierFor returns the user's verifier, or for an unknown user a dummy
// one whose salt is stable per tenant and name (so probing twice shows no
// difference) and which no proof matches.
func (s *Server) verifierFor(t *catalog.Tenant, name string, u *catalog.User) (scram.Verifier, error) {
	if u != nil {
		v, err := scram.ParseVerifier(u.Verifier)
		if err == nil {
			return v, nil
		}
		s.log.Error("unusable verifier in catalog", zap.String("tenant", t.Subdomain), zap.String("user", name), zap.Error(err))
	}
	seed := scram.HMAC(s.dummyKey, t.ID+"\x00"+name)
	return scram.Verifier{Iterations: scram.DefaultIterations, Salt: seed[:16], StoredKey: scram.HMAC(seed, "stored"), ServerKey: scram.HMAC(seed, "server")}, nil
}

// scramExchange runs the server side of SCRAM-SHA-256 (RFC 5802, RFC
// 7677) without channel binding.
func (s *Server) scramExchange(c *clientConn, v scram.Verifier, name string) error {
	if err := c.send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return err
	}
	typ, body, err := c.readMessage(maxAuthMessage)
	if err != nil {
		return err
	}
	var initial pgproto3.SASLInitialResponse
	if typ != 'p' || initial.Decode(body) != nil {
		return pgerr.Errorf(pgerr.CodeProtocolViolation, "expected SASL initial response")
	}
	if initial.AuthMechanism != scramMechanism {
		return pgerr.Errorf(pgerr.CodeProtocolViolation, "client selected an invalid SASL authentication mechanism")
	}
	gs2, clientFirstBare, clientNonce, err := parseClientFirst(string(initial.Data))
	if err != nil {
		return err
	}
	nonceBytes := make([]byte, serverNonceLen)
	rand.Read(nonceBytes)
	nonce := clientNonce + base64.StdEncoding.EncodeToString(nonceBytes)
	serverFirst := "r=" + nonce + ",s=" + base64.StdEncoding.EncodeToString(v.Salt) + ",i=" + strconv.Itoa(v.Iterations)
	if err := c.send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return err
	}
	typ, body, err = c.readMessage(maxAuthMessage)
	if err != nil {
		return err
	}
	if typ != 'p' {
		return pgerr.Errorf(pgerr.CodeProtocolViolation, "expected SASL response")
	}
	withoutProof, proof, err := parseClientFinal(string(body), gs2, nonce)
	if err != nil {
		return err
	}
	authMessage := clientFirstBare + "," + serverFirst + "," + withoutProof
	clientKey := scram.HMAC(v.StoredKey, authMessage)
	for i := range clientKey {
		clientKey[i] ^= proof[i]
	}
	stored := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(stored[:], v.StoredKey) != 1 {
		return errAuthFailed(name)
	}
	final := "v=" + base64.StdEncoding.EncodeToString(scram.HMAC(v.ServerKey, authMessage))
	return c.send(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)})
}

// parseClientFirst splits "n,,n=user,r=nonce" into the GS2 header, the
// client-first-message-bare and the client nonce. PostgreSQL ignores the
// SCRAM user name (the startup packet's counts) and so does the proxy.
func parseClientFirst(m string) (gs2, bare, nonce string, err error) {
	bad := pgerr.Errorf(pgerr.CodeProtocolViolation, "malformed SCRAM message")
	var cbind, authzid string
	var ok bool
	if cbind, m, ok = strings.Cut(m, ","); !ok {
		return "", "", "", bad
	}
	switch {
	case cbind == "n", cbind == "y":
	case strings.HasPrefix(cbind, "p="):
		return "", "", "", pgerr.Errorf(pgerr.CodeProtocolViolation, "channel binding is not supported")
	default:
		return "", "", "", bad
	}
	if authzid, bare, ok = strings.Cut(m, ","); !ok {
		return "", "", "", bad
	}
	if authzid != "" {
		return "", "", "", pgerr.Errorf(pgerr.CodeProtocolViolation, "SCRAM authorization identity is not supported")
	}
	attrs := strings.Split(bare, ",")
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "n=") || !strings.HasPrefix(attrs[1], "r=") || strings.HasPrefix(attrs[0], "m=") {
		return "", "", "", bad
	}
	nonce = attrs[1][2:]
	if nonce == "" || strings.IndexFunc(nonce, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
		return "", "", "", bad
	}
	return cbind + "," + authzid + ",", bare, nonce, nil
}

// parseClientFinal checks "c=<gs2>,r=<nonce>,p=<proof>" against the
// exchange so far and returns the message without its proof, and the
// proof.
func parseClientFinal(m, gs2, nonce string) (withoutProof string, proof []byte, err error) {
	bad := pgerr.Errorf(pgerr.CodeProtocolViolation, "malformed SCRAM message")
	i := strings.LastIndex(m, ",p=")
	if i < 0 {
		return "", nil, bad
	}
	withoutProof = m[:i]
	proof, err = base64.StdEncoding.DecodeString(m[i+3:])
	if err != nil || len(proof) != sha256.Size {
		return "", nil, bad
	}
	attrs := strings.Split(withoutProof, ",")
	if len(attrs) < 2 || attrs[0] != "c="+base64.StdEncoding.EncodeToString([]byte(gs2)) {
		return "", nil, bad
	}
	if !hmac.Equal([]byte(attrs[1]), []byte("r="+nonce)) {
		return "", nil, bad
	}
	return withoutProof, proof, nil
}

// loginLimiter counts failed logins per tenant user in a fixed window. It
// remembers a bounded number of users (least recently failing forgotten
// first), so a flood of made-up names cannot grow memory without bound.
type loginLimiter struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, failures]
}

type failures struct {
	count int
	since time.Time
}

const limiterEntries = 100_000

func newLoginLimiter() *loginLimiter {
	l, err := simplelru.NewLRU[string, failures](limiterEntries, nil)
	if err != nil {
		panic(err) // only for a non-positive size
	}
	return &loginLimiter{lru: l}
}

func limiterKey(tenantID, user string) string { return tenantID + "\x00" + user }

// limited reports whether key has used up its failures in the window.
func (l *loginLimiter) limited(key string, max int, window time.Duration, now time.Time) bool {
	if max < 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.lru.Peek(key)
	return ok && f.count >= max && now.Sub(f.since) < window
}

func (l *loginLimiter) fail(key string, window time.Duration, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, _ := l.lru.Get(key)
	if now.Sub(f.since) >= window {
		f = failures{since: now}
	}
	f.count++
	l.lru.Add(key, f)
}

func (l *loginLimiter) succeed(key string) {
	l.mu.Lock()
	l.lru.Remove(key)
	l.mu.Unlock()
}

// login authenticates the tenant's user behind the failed-login limit and
// records the outcome; it logs failures (without secrets) and returns the
// client-facing error.
func (s *Server) login(ctx context.Context, c *clientConn, lv *live, t *catalog.Tenant, name string) error {
	key := limiterKey(t.ID, name)
	now := time.Now()
	if s.limiter.limited(key, lv.cfg.MaxLoginFailures, lv.cfg.LoginFailureWindow, now) {
		s.metrics.authFailures.WithLabelValues(t.Subdomain, "rate_limited").Inc()
		s.log.Warn("login refused: too many failures", zap.String("tenant", t.Subdomain), zap.String("user", name), zap.Stringer("client", c.raw.RemoteAddr()))
		return pgerr.Errorf(pgerr.CodeRateLimited, "too many failed logins for user %q; try again later", name)
	}
	u, err := s.resolver.User(ctx, t, name)
	if err != nil {
		return err
	}
	err = s.authenticate(c, lv, t, name, u)
	var rErr *pgerr.Error
	if errors.As(err, &rErr) && rErr.Code == pgerr.CodeAuthFailed {
		s.limiter.fail(key, lv.cfg.LoginFailureWindow, now)
		s.metrics.authFailures.WithLabelValues(t.Subdomain, "password").Inc()
		s.log.Info("login failed", zap.String("tenant", t.Subdomain), zap.String("user", name), zap.Stringer("client", c.raw.RemoteAddr()), zap.Bool("known_user", u != nil))
		return err
	}
	if err == nil {
		s.limiter.succeed(key)
	}
	return err
}
