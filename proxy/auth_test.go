package proxy

import (
	"crypto/sha256"
	"encoding/base64"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/scram"
	"github.com/tenantproxy/tenantproxy/pool"
)

// scramClient is the client side of SCRAM-SHA-256 as libpq does it, to
// exercise the server side without a driver.
func scramClient(t *testing.T, conn net.Conn, password string) (serverVerified bool, err error) {
	fe := pgproto3.NewFrontend(conn, conn)
	msg, err := fe.Receive()
	if err != nil {
		return false, err
	}
	if sasl, ok := msg.(*pgproto3.AuthenticationSASL); !ok || sasl.AuthMechanisms[0] != scramMechanism {
		t.Fatalf("got %#v; want AuthenticationSASL", msg)
	}
	bare := "n=,r=clientnonce"
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: scramMechanism, Data: []byte("n,," + bare)})
	if err := fe.Flush(); err != nil {
		return false, err
	}
	msg, err = fe.Receive()
	if err != nil {
		return false, err
	}
	cont := msg.(*pgproto3.AuthenticationSASLContinue)
	fields := map[string]string{}
	for _, kv := range strings.Split(string(cont.Data), ",") {
		fields[kv[:1]] = kv[2:]
	}
	salt, _ := base64.StdEncoding.DecodeString(fields["s"])
	v, err := scram.Derive(password, salt, scram.DefaultIterations)
	if err != nil {
		t.Fatal(err)
	}
	salted, _ := scram.SaltedPassword(password, salt, scram.DefaultIterations)
	clientKey := scram.HMAC(salted, "Client Key")
	withoutProof := "c=biws,r=" + fields["r"]
	authMessage := bare + "," + string(cont.Data) + "," + withoutProof
	sig := scram.HMAC(v.StoredKey, authMessage)
	for i := range clientKey {
		clientKey[i] ^= sig[i]
	}
	fe.Send(&pgproto3.SASLResponse{Data: []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(clientKey))})
	if err := fe.Flush(); err != nil {
		return false, err
	}
	msg, err = fe.Receive()
	if err != nil {
		return false, err
	}
	final, ok := msg.(*pgproto3.AuthenticationSASLFinal)
	if !ok {
		return false, nil
	}
	return string(final.Data) == "v="+base64.StdEncoding.EncodeToString(scram.HMAC(v.ServerKey, authMessage)), nil
}

func TestSCRAMExchange(t *testing.T) {
	s := &Server{log: zap.NewNop(), dummyKey: []byte("k")}
	verifier, err := scram.NewVerifier("secret-password")
	if err != nil {
		t.Fatal(err)
	}
	v, err := scram.ParseVerifier(verifier)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		password string
		wantOK   bool
	}{
		{"right password", "secret-password", true},
		{"wrong password", "guess", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, client := net.Pipe()
			defer server.Close()
			defer client.Close()
			server.SetDeadline(time.Now().Add(10 * time.Second))
			done := make(chan error, 1)
			go func() {
				err := s.scramExchange(&clientConn{raw: server, conn: server}, v, "alice")
				// net.Pipe is unbuffered, so the client has read everything
				// sent; closing unblocks it after a failure, which sends no
				// final message.
				server.Close()
				done <- err
			}()
			verified, _ := scramClient(t, client, tt.password)
			err := <-done
			if tt.wantOK && (err != nil || !verified) {
				t.Fatalf("exchange: %v, server signature verified %v", err, verified)
			}
			if !tt.wantOK && pgerr.CodeOf(err) != pgerr.CodeAuthFailed {
				t.Fatalf("exchange with a wrong password: %v; want CodeAuthFailed", err)
			}
		})
	}
}

func TestParseClientMessages(t *testing.T) {
	bad := []string{"", "n", "p=tls-server-end-point,,n=,r=x", "n,a=admin,n=,r=x", "n,,r=x", "n,,n=,r=", "x,,n=,r=abc", "n,,n=,r=a b"}
	for _, m := range bad {
		if _, _, _, err := parseClientFirst(m); pgerr.CodeOf(err) != pgerr.CodeProtocolViolation {
			t.Errorf("parseClientFirst(%q) = %v; want a protocol violation", m, err)
		}
	}
	gs2, bare, nonce, err := parseClientFirst("n,,n=alice,r=abc")
	if err != nil || gs2 != "n,," || bare != "n=alice,r=abc" || nonce != "abc" {
		t.Fatalf("parseClientFirst = %q %q %q %v", gs2, bare, nonce, err)
	}
	proof := base64.StdEncoding.EncodeToString(make([]byte, sha256.Size))
	for _, m := range []string{"c=biws,r=abcdef", "c=eSws,r=abcdef,p=" + proof, "c=biws,r=abcxyz,p=" + proof, "c=biws,r=abcdef,p=AAAA"} {
		if _, _, err := parseClientFinal(m, "n,,", "abcdef"); err == nil {
			t.Errorf("parseClientFinal(%q) accepted", m)
		}
	}
	if without, _, err := parseClientFinal("c=biws,r=abcdef,p="+proof, "n,,", "abcdef"); err != nil || without != "c=biws,r=abcdef" {
		t.Fatalf("parseClientFinal = %q, %v", without, err)
	}
}

func TestLoginLimiter(t *testing.T) {
	l := newLoginLimiter()
	now := time.Now()
	key := limiterKey("acme", "alice")
	for range 3 {
		if l.limited(key, 3, time.Minute, now) {
			t.Fatal("limited before the failures were used up")
		}
		l.fail(key, time.Minute, now)
	}
	if !l.limited(key, 3, time.Minute, now) {
		t.Fatal("not limited after 3 failures")
	}
	if l.limited(limiterKey("globex", "alice"), 3, time.Minute, now) {
		t.Fatal("another tenant's user is limited too")
	}
	if l.limited(key, 3, time.Minute, now.Add(time.Minute)) {
		t.Fatal("still limited after the window")
	}
	if l.limited(key, -1, time.Minute, now) {
		t.Fatal("limited with the limit disabled")
	}
	l.succeed(key)
	if l.limited(key, 3, time.Minute, now) {
		t.Fatal("limited after a successful login")
	}
}

func TestCancelKeys(t *testing.T) {
	k := newCancelKeys()
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
