package proxy

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	xscram "github.com/xdg-go/scram"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/scram"
)

const (
	scramMechanism = "SCRAM-SHA-256"
	// maxAuthMessage bounds SASL messages; real ones are ~100 bytes.
	maxAuthMessage = 1024
)

// errAuthFailed is what every failed login looks like to the client:
// unknown tenant, unknown user and wrong password are indistinguishable.
func errAuthFailed(user string) error {
	return pgerr.Errorf(pgerr.CodeAuthFailed, "password authentication failed for user %q", user)
}

// authenticate checks the client's credentials for user u of tenant t; t
// is nil when no tenant has the subdomain sub, u when the tenant has no
// such user. Both fail the same way a wrong password does, after the same
// exchange. On success the client has been sent AuthenticationSASLFinal
// (SCRAM) but not AuthenticationOk.
func (s *Server) authenticate(c *clientConn, lv *live, sub string, t *catalog.Tenant, name string, u *catalog.User) error {
	if lv.cfg.AuthMethod == AuthTrust {
		if u == nil {
			return errAuthFailed(name)
		}
		return nil
	}
	return s.scramExchange(c, s.verifierFor(sub, t, name, u), name)
}

// verifierFor returns the user's verifier, or for an unknown user, or any
// user of an unknown tenant, a dummy one whose salt is stable per tenant
// and name (so probing twice shows no difference), has the iteration count
// of a real one, and which no proof matches.
func (s *Server) verifierFor(sub string, t *catalog.Tenant, name string, u *catalog.User) scram.Verifier {
	if u != nil {
		v, err := scram.ParseVerifier(u.Verifier)
		if err == nil {
			return v
		}
		s.log.Error("unusable verifier in catalog", zap.String("tenant", t.Subdomain), zap.String("user", name), zap.Error(err))
	}
	// Known tenants are keyed by id, unknown ones by subdomain in a
	// separate space: ids and subdomains may look alike.
	seed := scram.HMAC(s.dummyKey, "unknown tenant\x00"+sub+"\x00"+name)
	if t != nil {
		seed = scram.HMAC(s.dummyKey, t.ID+"\x00"+name)
	}
	return scram.Verifier{Iterations: scram.DefaultIterations, Salt: seed[:16], StoredKey: scram.HMAC(seed, "stored"), ServerKey: scram.HMAC(seed, "server")}
}

// errMalformedSCRAM is PostgreSQL's answer to a SCRAM message it cannot
// use.
var errMalformedSCRAM = pgerr.Errorf(pgerr.CodeProtocolViolation, "malformed SCRAM message")

// scramExchange runs the server side of SCRAM-SHA-256 (RFC 5802, RFC
// 7677) against v with github.com/xdg-go/scram, without channel binding,
// as PostgreSQL does when it does not offer SCRAM-SHA-256-PLUS: two round
// trips, the same messages and the same work whether v is real or a dummy.
// Like PostgreSQL, it ignores the SCRAM user name (the startup packet's
// counts) and refuses an authorization identity.
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
	srv, err := xscram.SHA256.NewServer(func(string) (xscram.StoredCredentials, error) { return v.Credentials(), nil })
	if err != nil {
		return &pgerr.Error{Code: pgerr.CodeInternal, Msg: "scram server", Err: err}
	}
	conv := srv.NewConversation()
	serverFirst, err := conv.Step(string(initial.Data))
	if err != nil {
		if serverFirst == xscram.ErrChannelBindingNotSupported {
			return pgerr.Errorf(pgerr.CodeProtocolViolation, "channel binding is not supported")
		}
		return errMalformedSCRAM
	}
	if conv.AuthzID() != "" {
		return pgerr.Errorf(pgerr.CodeProtocolViolation, "SCRAM authorization identity is not supported")
	}
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
	serverFinal, _ := conv.Step(string(body))
	switch {
	case conv.Valid():
		return c.send(&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)})
	case serverFinal == xscram.ErrInvalidProof:
		return errAuthFailed(name)
	default:
		return errMalformedSCRAM
	}
}

// login authenticates user name of the tenant with subdomain sub (t, nil
// when there is none) behind the login throttle (throttle.go), records the
// outcome, and logs failures (without secrets). It returns the
// client-facing error: an unknown tenant, an unknown user and a wrong
// password are the same 28P01 after the same exchange.
func (s *Server) login(ctx context.Context, c *clientConn, lv *live, sub string, t *catalog.Tenant, name string) error {
	var u *catalog.User
	auth := func() error {
		if t != nil {
			var err error
			if u, err = s.resolver.User(ctx, t, name); err != nil {
				return err
			}
		}
		return s.authenticate(c, lv, sub, t, name, u)
	}
	failed := func(held time.Duration) {
		if t == nil {
			// The label holds no name a stranger made up.
			s.metrics.authFailures.WithLabelValues("", "unknown_tenant").Inc()
		} else {
			s.metrics.authFailures.WithLabelValues(s.labelOf(t.Subdomain), "password").Inc()
		}
		s.log.Info("login failed", zap.String("tenant", sub), zap.String("user", name), zap.Stringer("client", c.raw.RemoteAddr()),
			zap.Bool("known_tenant", t != nil), zap.Bool("known_user", u != nil), zap.Duration("held", held))
	}
	return s.throttled(ctx, c, lv, sub, name, auth, failed)
}

// throttled runs auth, a login of user name under key (a tenant's
// subdomain, or consoleKey), behind the login throttle: the attempt is
// held while its source failed too often, a failure (CodeAuthFailed) is
// recorded, reported to failed with the delay it gets, and answered only
// after that delay.
func (s *Server) throttled(ctx context.Context, c *clientConn, lv *live, key, name string, auth func() error, failed func(held time.Duration)) error {
	pol := throttlePolicy{free: lv.cfg.MaxLoginFailures, window: lv.cfg.LoginFailureWindow, max: lv.cfg.MaxLoginDelay}
	source := sourceOf(c.raw.RemoteAddr())
	tk := throttleKey(key, name, source)
	start := time.Now()
	check, fail := s.throttle.delays(tk, source, pol, start)
	if fail > 0 {
		s.metrics.loginsDelayed.Inc()
	}
	if err := hold(ctx, check); err != nil {
		return err
	}
	err := auth()
	if pgerr.CodeOf(err) != pgerr.CodeAuthFailed {
		if err == nil {
			s.throttle.succeed(tk)
		}
		return err
	}
	s.throttle.fail(tk, source, pol, time.Now())
	failed(fail)
	// The answer waits out the delay; if the start-up deadline comes
	// first, it is sent then.
	hold(ctx, fail-time.Since(start))
	return err
}
