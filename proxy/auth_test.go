package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	xscram "github.com/xdg-go/scram"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/scram"
	"github.com/tenantproxy/tenantproxy/pool"
)

// scramClient is the client side of SCRAM-SHA-256, github.com/xdg-go/scram's
// over the password prepared as libpq prepares it, to exercise the server
// side without a driver.
func scramClient(t *testing.T, conn net.Conn, password string) (serverVerified bool, err error) {
	fe := pgproto3.NewFrontend(conn, conn)
	msg, err := fe.Receive()
	if err != nil {
		return false, err
	}
	if sasl, ok := msg.(*pgproto3.AuthenticationSASL); !ok || sasl.AuthMechanisms[0] != scramMechanism {
		t.Fatalf("got %#v; want AuthenticationSASL", msg)
	}
	client, err := xscram.SHA256.NewClientUnprepped("", scram.SASLprep(password), "")
	if err != nil {
		t.Fatal(err)
	}
	conv := client.NewConversation()
	first, err := conv.Step("")
	if err != nil {
		t.Fatal(err)
	}
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: scramMechanism, Data: []byte(first)})
	if err := fe.Flush(); err != nil {
		return false, err
	}
	if msg, err = fe.Receive(); err != nil {
		return false, err
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("got %#v; want AuthenticationSASLContinue", msg)
	}
	final, err := conv.Step(string(cont.Data))
	if err != nil {
		t.Fatalf("client-final: %v", err)
	}
	fe.Send(&pgproto3.SASLResponse{Data: []byte(final)})
	if err := fe.Flush(); err != nil {
		return false, err
	}
	if msg, err = fe.Receive(); err != nil {
		return false, err
	}
	serverFinal, ok := msg.(*pgproto3.AuthenticationSASLFinal)
	if !ok {
		return false, nil
	}
	_, err = conv.Step(string(serverFinal.Data))
	return err == nil && conv.Valid(), nil
}

// runExchange runs scramExchange against v on one end of a pipe and
// client on the other, and returns the server's error.
func runExchange(t *testing.T, v scram.Verifier, client func(net.Conn)) error {
	t.Helper()
	s := &Server{log: zap.NewNop(), dummyKey: []byte("k")}
	server, conn := net.Pipe()
	defer conn.Close()
	server.SetDeadline(time.Now().Add(10 * time.Second))
	done := make(chan error, 1)
	go func() {
		err := s.scramExchange(&clientConn{raw: server, conn: server}, v, "alice")
		// net.Pipe is unbuffered, so the client has read everything sent;
		// closing unblocks it after a failure, which sends no final
		// message.
		server.Close()
		done <- err
	}()
	client(conn)
	return <-done
}

func TestSCRAMExchange(t *testing.T) {
	tests := []struct {
		name, stored, password string
		wantOK                 bool
	}{
		{"right password", "secret-password", "secret-password", true},
		{"wrong password", "secret-password", "guess", false},
		{"non-ASCII password, same SASLprep form", "\ufb01sh\u00a0and\u00adchips", "fish andchips", true},
		{"invalid UTF-8 password", "pass\xffword", "pass\xffword", true},
		{"invalid UTF-8 is not its valid remainder", "pass\xffword", "password", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verifier, err := scram.NewVerifier(tt.stored)
			if err != nil {
				t.Fatal(err)
			}
			v, err := scram.ParseVerifier(verifier)
			if err != nil {
				t.Fatal(err)
			}
			var verified bool
			err = runExchange(t, v, func(conn net.Conn) { verified, _ = scramClient(t, conn, tt.password) })
			if tt.wantOK && (err != nil || !verified) {
				t.Fatalf("exchange: %v, server signature verified %v", err, verified)
			}
			if !tt.wantOK && pgerr.CodeOf(err) != pgerr.CodeAuthFailed {
				t.Fatalf("exchange with a wrong password: %v; want CodeAuthFailed", err)
			}
		})
	}
}

// TestSCRAMExchangeRefusesMalformedMessages sends hand-made client
// messages: what PostgreSQL refuses as a protocol violation, the proxy
// refuses too, never as a failed password.
func TestSCRAMExchangeRefusesMalformedMessages(t *testing.T) {
	verifier, _ := scram.NewVerifier("secret-password")
	v, _ := scram.ParseVerifier(verifier)
	proof := base64.StdEncoding.EncodeToString(make([]byte, sha256.Size))
	tests := []struct {
		name, first string
		// final makes the client-final message from the server-first's
		// nonce; nil when the exchange must end at the first message.
		final   func(nonce string) string
		wantMsg string
	}{
		{"channel binding", "p=tls-server-end-point,,n=,r=abc", nil, "channel binding is not supported"},
		{"authorization identity", "n,a=admin,n=,r=abc", nil, "authorization identity"},
		{"no user name", "n,,r=abc", nil, "malformed"},
		{"bad GS2 flag", "x,,n=,r=abc", nil, "malformed"},
		{"extension", "n,,m=ext,n=,r=abc", nil, "malformed"},
		{"nonce mismatch", "n,,n=,r=abc", func(string) string { return "c=biws,r=abcxyz,p=" + proof }, "malformed"},
		{"channel binding data mismatch", "n,,n=,r=abc", func(n string) string { return "c=eSws,r=" + n + ",p=" + proof }, "malformed"},
		{"short proof", "n,,n=,r=abc", func(n string) string { return "c=biws,r=" + n + ",p=AAAA" }, "malformed"},
		{"no proof", "n,,n=,r=abc", func(n string) string { return "c=biws,r=" + n }, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runExchange(t, v, func(conn net.Conn) {
				fe := pgproto3.NewFrontend(conn, conn)
				if _, err := fe.Receive(); err != nil {
					return
				}
				fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: scramMechanism, Data: []byte(tt.first)})
				if fe.Flush() != nil {
					return
				}
				msg, err := fe.Receive()
				cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
				if err != nil || !ok || tt.final == nil {
					return
				}
				nonce, _, _ := strings.Cut(strings.TrimPrefix(string(cont.Data), "r="), ",")
				fe.Send(&pgproto3.SASLResponse{Data: []byte(tt.final(nonce))})
				if fe.Flush() == nil {
					fe.Receive()
				}
			})
			if pgerr.CodeOf(err) != pgerr.CodeProtocolViolation || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("%s: %v; want a protocol violation saying %q", tt.name, err, tt.wantMsg)
			}
		})
	}
}

// TestVerifierForUnknownsIsStableAndDistinct: the dummy verifier of an
// unknown user or tenant is the same at every probe (a stranger comparing
// salts learns nothing) and differs between names.
func TestVerifierForUnknownsIsStableAndDistinct(t *testing.T) {
	s := &Server{log: zap.NewNop(), dummyKey: []byte("k")}
	acme := &catalog.Tenant{ID: "7", Subdomain: "acme"}
	salts := map[string]string{}
	for _, probe := range []struct {
		sub  string
		t    *catalog.Tenant
		name string
	}{{"acme", acme, "mallory"}, {"acme", acme, "eve"}, {"nosuch", nil, "mallory"}, {"7", nil, "mallory"}} {
		v := s.verifierFor(probe.sub, probe.t, probe.name, nil)
		again := s.verifierFor(probe.sub, probe.t, probe.name, nil)
		if string(v.Salt) != string(again.Salt) || v.Iterations != scram.DefaultIterations || len(v.Salt) != 16 {
			t.Fatalf("dummy verifier for %s/%s: unstable or unlike a real one: %+v", probe.sub, probe.name, v)
		}
		key := fmt.Sprintf("%s/%s", probe.sub, probe.name)
		for other, salt := range salts {
			if salt == string(v.Salt) {
				t.Fatalf("dummy verifiers of %s and %s share a salt", key, other)
			}
		}
		salts[key] = string(v.Salt)
	}
}

// TestSaltSecretSharedByReplicas: replicas given the same SaltSecret show
// a stranger the same fake salt for the same unknown name, as they show
// the same real salt for a known one.
func TestSaltSecretSharedByReplicas(t *testing.T) {
	salt := func(secret string) string {
		s, err := New(Config{SaltSecret: secret}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return string(s.verifierFor("nosuch", nil, "alice", nil).Salt)
	}
	replicaA, replicaB := salt("postgres://catalog"), salt("postgres://catalog")
	if replicaA != replicaB {
		t.Fatal("two replicas with one secret show different fake salts")
	}
	noSecretA, noSecretB := salt(""), salt("")
	if replicaA == salt("postgres://other") || noSecretA == noSecretB {
		t.Fatal("fake salts do not depend on the secret")
	}
}

// TestLoginThrottle drives the throttle with a fake clock.
func TestLoginThrottle(t *testing.T) {
	pol := throttlePolicy{free: 5, window: time.Minute, max: 5 * time.Second}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	alice := throttleKey("acme", "alice", "192.0.2.1")

	t.Run("a serial guesser is slowed to one guess per MaxLoginDelay", func(t *testing.T) {
		l := newLoginThrottle()
		clock := now
		guesses := 0
		for end := clock.Add(time.Hour); clock.Before(end); guesses++ {
			check, fail := l.delays(alice, "192.0.2.1", pol, clock)
			if check > maxCheckDelay || check > fail {
				t.Fatalf("guess %d: held %s before the check (fail %s); want at most %s", guesses, check, fail, maxCheckDelay)
			}
			clock = clock.Add(fail)
			l.fail(alice, "192.0.2.1", pol, clock)
			clock = clock.Add(10 * time.Millisecond) // the exchange
		}
		// 5 free, then 250 ms, 500 ms, 1 s, 2 s, 4 s, then 5 s each.
		if limit := 5 + 5 + int(time.Hour/(5*time.Second)); guesses > limit {
			t.Fatalf("%d guesses in an hour; want at most %d", guesses, limit)
		}
		if guesses < 600 {
			t.Fatalf("only %d guesses in an hour: the delay grew past its cap", guesses)
		}
	})

	t.Run("a parallel guesser pays the check delay per guess", func(t *testing.T) {
		l := newLoginThrottle()
		for range 50 {
			l.fail(alice, "192.0.2.1", pol, now)
		}
		check, fail := l.delays(alice, "192.0.2.1", pol, now)
		if check != maxCheckDelay || fail != pol.max {
			t.Fatalf("after 50 failures: held %s before the check, %s before failing; want %s and %s", check, fail, maxCheckDelay, pol.max)
		}
	})

	t.Run("strangers elsewhere do not slow the owner down", func(t *testing.T) {
		l := newLoginThrottle()
		for range 1000 {
			l.fail(alice, "192.0.2.1", pol, now)
		}
		owner := throttleKey("acme", "alice", "198.51.100.7")
		if check, fail := l.delays(owner, "198.51.100.7", pol, now); check != 0 || fail != 0 {
			t.Fatalf("owner from another address held %s / %s", check, fail)
		}
		if check, _ := l.delays(alice, "192.0.2.1", pol, now); check > maxCheckDelay {
			t.Fatalf("the owner behind the stranger's address would wait %s for a right password", check)
		}
	})

	t.Run("spraying many users from one source is slowed too", func(t *testing.T) {
		l := newLoginThrottle()
		for i := range pol.free * sourceFreeFactor {
			key := throttleKey("acme", fmt.Sprintf("user%d", i), "192.0.2.1")
			if _, fail := l.delays(key, "192.0.2.1", pol, now); fail != 0 {
				t.Fatalf("guess %d at a fresh user held %s within the source's allowance", i, fail)
			}
			l.fail(key, "192.0.2.1", pol, now)
		}
		fresh := throttleKey("acme", "nobody-yet", "192.0.2.1")
		if _, fail := l.delays(fresh, "192.0.2.1", pol, now); fail != firstDelay {
			t.Fatalf("next guess from the source held %s; want %s", fail, firstDelay)
		}
		if _, fail := l.delays(throttleKey("acme", "x", "192.0.2.2"), "192.0.2.2", pol, now); fail != 0 {
			t.Fatalf("another source held %s", fail)
		}
	})

	t.Run("failures are forgotten a window after the last", func(t *testing.T) {
		l := newLoginThrottle()
		for range 10 {
			l.fail(alice, "192.0.2.1", pol, now)
		}
		if _, fail := l.delays(alice, "192.0.2.1", pol, now.Add(pol.window-time.Second)); fail == 0 {
			t.Fatal("forgotten within the window")
		}
		if check, fail := l.delays(alice, "192.0.2.1", pol, now.Add(pol.window)); check != 0 || fail != 0 {
			t.Fatalf("still held %s / %s a window after the last failure", check, fail)
		}
	})

	t.Run("a success clears the user's count, not the source's", func(t *testing.T) {
		l := newLoginThrottle()
		for range pol.free * sourceFreeFactor {
			l.fail(alice, "192.0.2.1", pol, now)
		}
		l.succeed(alice)
		if _, fail := l.delays(alice, "192.0.2.1", pol, now); fail != firstDelay {
			t.Fatalf("after a success, held %s; want the source's %s", fail, firstDelay)
		}
	})

	t.Run("disabled", func(t *testing.T) {
		l := newLoginThrottle()
		off := throttlePolicy{free: -1, window: time.Minute, max: time.Second}
		for range 100 {
			l.fail(alice, "192.0.2.1", off, now)
		}
		if check, fail := l.delays(alice, "192.0.2.1", off, now); check != 0 || fail != 0 {
			t.Fatalf("disabled throttle held %s / %s", check, fail)
		}
	})
}

func TestSourceOf(t *testing.T) {
	tests := []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 5432}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 1}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 1}, "2001:db8:1:2::/64"},
		{&net.UnixAddr{Name: "/run/x", Net: "unix"}, "local"},
	}
	for _, tt := range tests {
		if got := sourceOf(tt.addr); got != tt.want {
			t.Errorf("sourceOf(%v) = %q; want %q", tt.addr, got, tt.want)
		}
	}
}

func TestHoldEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := hold(ctx, time.Hour); err == nil || time.Since(start) > time.Second {
		t.Fatalf("hold on an ended context: %v after %s", err, time.Since(start))
	}
}

func TestCancelKeys(t *testing.T) {
	k := newCancelKeys(0)
	sess := &txSession{}
	pid, secret := k.add(poolTarget("a"), "acme", sess)
	if got, ok := k.lookup(pid, secret[:]); !ok || got.sess != sess || got.tenant != "acme" {
		t.Fatalf("lookup with the right key = %+v, %v", got, ok)
	}
	wrong := secret
	wrong[0]++
	if _, ok := k.lookup(pid, wrong[:]); ok {
		t.Fatal("lookup with a wrong secret succeeded")
	}
	if _, ok := k.lookup(pid, secret[:3]); ok {
		t.Fatal("lookup with a short secret succeeded")
	}
	k.remove(pid)
	if _, ok := k.lookup(pid, secret[:]); ok {
		t.Fatal("lookup after remove succeeded")
	}
}

func poolTarget(db string) pool.Target { return pool.Target{Addr: "127.0.0.1:5432", Database: db} }
