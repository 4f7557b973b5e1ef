package test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	xscram "github.com/xdg-go/scram"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/scram"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// connectFrom connects with pgx from the local address src (any of
// 127.0.0.0/8 is this machine), so that a test can play clients on
// different hosts.
func connectFrom(ctx context.Context, src, connString string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	cfg.DialFunc = d.DialContext
	return pgx.ConnectConfig(ctx, cfg)
}

// plainCounter reads an unlabelled counter from reg.
func plainCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// TestLoginAgainstStrangers: a stranger can neither lock a user out nor
// guess fast, and cannot tell an unknown tenant from a wrong password.
func TestLoginAgainstStrangers(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)

	t.Run("a stranger's wrong passwords do not lock the owner out", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		_, addr := e.startProxy(t, proxy.Config{MaxLoginFailures: 3, MaxLoginDelay: time.Second, Registerer: reg})
		acme, err := e.cat.TenantBySubdomain(ctx, "acme")
		if err != nil {
			t.Fatal(err)
		}
		// The canary's fixed service login, as the chat API's is: a
		// stranger knows its name.
		if err := e.cat.EnsureServiceUser(ctx, acme.ID, "tenantproxy-canary", "canary-service-secret"); err != nil {
			t.Fatal(err)
		}
		victims := []struct{ user, password, stranger string }{
			{"alice", tenantPassword, "127.0.0.2"},
			{"tenantproxy-canary", "canary-service-secret", "127.0.0.3"},
		}
		for _, v := range victims {
			const guesses = 8
			var last time.Duration
			for i := range guesses {
				start := time.Now()
				conn, err := connectFrom(ctx, v.stranger, dsn(addr, v.user+".acme", fmt.Sprintf("guess-%d-wrong", i)))
				if err == nil {
					conn.Close(ctx)
					t.Fatalf("%s: a wrong password got in", v.user)
				}
				assertPgError(t, err, "FATAL", "28P01", "password authentication failed")
				last = time.Since(start)
			}
			// Failures beyond the allowance of 3 are held, the eighth for
			// the cap: 250 ms doubled four times, capped at 1 s.
			if last < time.Second {
				t.Fatalf("%s: guess %d answered after %s; want it held at least 1 s", v.user, guesses, last)
			}
			held := plainCounter(t, reg, "tenantproxy_login_delayed_total")

			// The owner, from its own address, gets in at once: not held.
			conn, err := connectFrom(ctx, "127.0.0.1", dsn(addr, v.user+".acme", v.password))
			if err != nil {
				t.Fatalf("%s from its own address after a stranger's %d wrong passwords: %v; want to get in", v.user, guesses, err)
			}
			conn.Close(ctx)
			if now := plainCounter(t, reg, "tenantproxy_login_delayed_total"); now != held {
				t.Fatalf("%s from its own address was held (login_delayed %v -> %v)", v.user, held, now)
			}
			// Even behind the stranger's own address, the right password
			// gets in (held at most 1 s before it is checked).
			conn, err = connectFrom(ctx, v.stranger, dsn(addr, v.user+".acme", v.password))
			if err != nil {
				t.Fatalf("%s from the stranger's address: %v; want to get in", v.user, err)
			}
			conn.Close(ctx)
		}
	})

	t.Run("an unknown tenant is answered exactly like a wrong password", func(t *testing.T) {
		_, addr := e.startProxy(t, proxy.Config{MaxLoginFailures: -1})
		if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: "hooli", Plan: catalog.PlanFree, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
			t.Fatal(err)
		}
		if err := e.cat.Suspend(ctx, "hooli"); err != nil {
			t.Fatal(err)
		}
		want := rawLogin(t, addr, "alice.acme", "wrong-password")
		checkFailedExchange(t, "known tenant, wrong password", want)
		for _, probe := range []struct{ name, user, password, options string }{
			{"unknown tenant", "alice.nosuch", "wrong-password", ""},
			{"unknown tenant, a password that is right elsewhere", "alice.nosuch", tenantPassword, ""},
			{"unknown tenant named by options", "alice", "wrong-password", "-c tenant=nosuch"},
			{"suspended tenant, wrong password", "alice.hooli", "wrong-password", ""},
		} {
			got := rawLogin(t, addr, probe.user, probe.password, probe.options)
			checkFailedExchange(t, probe.name, got)
			if string(got[0]) != string(want[0]) || len(got[1]) != len(want[1]) || string(got[2]) != string(want[2]) {
				t.Fatalf("%s: messages\n%q\nwant, as for a wrong password,\n%q", probe.name, got, want)
			}
		}
		// The message names the user: an unknown one is compared with a
		// wrong password of a name of the same length.
		bobby := rawLogin(t, addr, "bobby.acme", "wrong-password")
		checkFailedExchange(t, "unknown user", bobby)
		if string(bobby[2]) != strings.Replace(string(want[2]), `"alice"`, `"bobby"`, 1) {
			t.Fatalf("unknown user: error %q; want the wrong password's %q", bobby[2], want[2])
		}
		// A real client sees the wrong password's error.
		assertPgError(t, connectErr(t, dsn(addr, "alice.nosuch", tenantPassword)), "FATAL", "28P01", `password authentication failed for user "alice"`)
	})
}

// serverFirstPattern is a SCRAM server-first-message whose salt has the
// length of a real one and the iteration count every verifier uses.
var serverFirstPattern = regexp.MustCompile(`^r=[!-+\--~]+,s=[A-Za-z0-9+/]{22}==,i=4096$`)

// checkFailedExchange checks msgs is a whole SCRAM exchange ending in the
// wrong password's FATAL: AuthenticationSASL, AuthenticationSASLContinue,
// ErrorResponse, then the end of the connection.
func checkFailedExchange(t *testing.T, name string, msgs [][]byte) {
	t.Helper()
	if len(msgs) != 3 || msgs[0][0] != 'R' || msgs[1][0] != 'R' || msgs[2][0] != 'E' {
		t.Fatalf("%s: message types %q; want AuthenticationSASL, AuthenticationSASLContinue, ErrorResponse", name, msgs)
	}
	if code := binary.BigEndian.Uint32(msgs[1][5:9]); code != 11 || !serverFirstPattern.Match(msgs[1][9:]) {
		t.Fatalf("%s: server-first message %q (auth code %d)", name, msgs[1][9:], code)
	}
	var er pgproto3.ErrorResponse
	if err := er.Decode(msgs[2][5:]); err != nil || er.Code != "28P01" || er.Severity != "FATAL" {
		t.Fatalf("%s: error %+v (%v); want FATAL 28P01", name, er, err)
	}
}

// rawLogin logs in to addr as user (with the startup options, if any)
// over the bare protocol, running SCRAM with password (ASCII) as far as
// the proxy lets it, and returns every message the proxy sent, raw, until
// it closed the connection.
func rawLogin(t *testing.T, addr, user, password string, options ...string) [][]byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	send := func(m pgproto3.FrontendMessage) {
		b, err := m.Encode(nil)
		if err == nil {
			_, err = conn.Write(b)
		}
		if err != nil {
			t.Fatalf("%s: send %T: %v", user, m, err)
		}
	}
	params := map[string]string{"user": user, "database": "app"}
	if len(options) > 0 && options[0] != "" {
		params["options"] = options[0]
	}
	send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
	client, err := xscram.SHA256.NewClientUnprepped("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	conv := client.NewConversation()
	r := bufio.NewReader(conn)
	var msgs [][]byte
	for {
		header := make([]byte, 5)
		if _, err := io.ReadFull(r, header); err == io.EOF {
			return msgs
		} else if err != nil {
			t.Fatalf("%s: after %q: %v", user, msgs, err)
		}
		msg := make([]byte, 1+binary.BigEndian.Uint32(header[1:]))
		copy(msg, header)
		if _, err := io.ReadFull(r, msg[5:]); err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		msgs = append(msgs, msg)
		if msg[0] != 'R' || len(msg) < 9 {
			continue
		}
		switch binary.BigEndian.Uint32(msg[5:9]) {
		case 10: // AuthenticationSASL
			first, err := conv.Step("")
			if err != nil {
				t.Fatal(err)
			}
			send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(first)})
		case 11: // AuthenticationSASLContinue
			final, err := conv.Step(string(msg[9:]))
			if err != nil {
				t.Fatalf("%s: server-first %q: %v", user, msg[9:], err)
			}
			send(&pgproto3.SASLResponse{Data: []byte(final)})
		}
	}
}

// saslPasswords are passwords whose SASLprep form differs from their
// bytes, or that PostgreSQL takes as they are because SASLprep fails.
// psql (libpq) prepares every one as the server does. pgx marks those pgx
// v5 logs in with: it prepares passwords with PRECIS OpaqueString rather
// than SASLprep (NFC, not NFKC, so it keeps the ligature and full-width
// letters; it keeps soft hyphens and zero-width spaces; it normalizes the
// tone mark PostgreSQL keeps; it does not send invalid UTF-8 as it is), so
// with the others it cannot log in to PostgreSQL itself either. The test
// wants pgx's outcome the same against PostgreSQL's verifier, ours, and
// the proxy.
var saslPasswords = []struct {
	name, password string
	pgx            bool
}{
	{"ascii", "correct-horse-battery", true},
	{"ascii_control", "bell\x07and\x7fdelete", true},
	{"ligature", "\ufb01sh-and-chips", false},
	{"nbsp", "pass\u00a0word-long", true},
	{"soft_hyphen", "pass\u00adword-long", false},
	{"zero_width_space", "\u200bcaf\u00e9-password", false},
	{"full_width", "\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44", false},
	{"decomposed", "A\u030angstr\u00f6m-password", true},
	{"right_to_left", "\u0627\u0644\u0633\u0631\u0031\u0032\u0628", true},
	{"combining_tone_mark", "a\u0340caf\u00e9-password", false},
	{"unassigned_in_3_2", "\U0001f101caf\u00e9-password", true},
	{"emoji", "pass\U0001f511word", true},
	{"invalid_utf8", "pass\xff\xfeword-long", false},
}

// TestSCRAMPasswordsAgreeWithPostgres: for passwords that SASLprep changes
// or gives up on, a verifier internal/scram builds is the one PostgreSQL
// builds (same keys for the same salt), PostgreSQL accepts it for a role,
// and the proxy accepts a catalog user with that password.
func TestSCRAMPasswordsAgreeWithPostgres(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	_, addr := e.startProxy(t, proxy.Config{MaxLoginFailures: -1})
	acme, err := e.cat.TenantBySubdomain(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	super, err := pgx.Connect(ctx, e.cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	host, port, _ := net.SplitHostPort(e.cluster.Addr())
	phost, pport, _ := net.SplitHostPort(addr)
	for _, tt := range saslPasswords {
		t.Run(tt.name, func(t *testing.T) {
			// PostgreSQL's own verifier for the password. A UTF8 server
			// takes no invalid UTF-8 in a statement: there, the mark says
			// what pgx should do.
			theirsOK := tt.pgx
			if tt.name != "invalid_utf8" {
				role := "theirs_" + tt.name
				if _, err := super.Exec(ctx, "CREATE ROLE "+role+" LOGIN PASSWORD "+quoteLiteral(tt.password)); err != nil {
					t.Fatal(err)
				}
				var stored string
				if err := super.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&stored); err != nil {
					t.Fatal(err)
				}
				theirs, err := scram.ParseVerifier(stored)
				if err != nil {
					t.Fatal(err)
				}
				ours, err := scram.Derive(tt.password, theirs.Salt, theirs.Iterations)
				if err != nil {
					t.Fatal(err)
				}
				if ours.String() != theirs.String() {
					t.Fatalf("verifier for %+q:\n ours %s\n PostgreSQL's %s", tt.password, ours, theirs)
				}
				theirsOK = pgxLogin(t, fmt.Sprintf("host=%s port=%s dbname=postgres user=%s sslmode=disable", host, port, role), tt.password)
			}

			// A role created with our verifier logs in to PostgreSQL.
			verifier, err := scram.NewVerifier(tt.password)
			if err != nil {
				t.Fatal(err)
			}
			role := "ours_" + tt.name
			if _, err := super.Exec(ctx, "CREATE ROLE "+role+" LOGIN PASSWORD "+quoteLiteral(verifier)); err != nil {
				t.Fatal(err)
			}
			direct := fmt.Sprintf("host=%s port=%s dbname=postgres user=%s sslmode=disable", host, port, role)
			mustPsqlLogin(t, direct, tt.password)
			oursOK := pgxLogin(t, direct, tt.password)

			// A catalog user with the password logs in through the proxy
			// (a service login, as the chat API's: persons are held to the
			// plan's user count).
			user := strings.ReplaceAll(tt.name, "_", "-")
			if err := e.cat.EnsureServiceUser(ctx, acme.ID, user, tt.password); err != nil {
				t.Fatal(err)
			}
			proxied := fmt.Sprintf("host=%s port=%s dbname=app user=%s.acme sslmode=disable", phost, pport, user)
			mustPsqlLogin(t, proxied, tt.password)
			proxiedOK := pgxLogin(t, proxied, tt.password)
			if theirsOK != oursOK || oursOK != proxiedOK || tt.pgx && !oursOK {
				t.Fatalf("pgx logs in with %+q: to PostgreSQL's verifier %v, to ours %v, through the proxy %v; want the same, and true where marked", tt.password, theirsOK, oursOK, proxiedOK)
			}
		})
	}
}

// mustPsqlLogin logs in with psql (libpq, which prepares the password as
// the server does) and runs a query.
func mustPsqlLogin(t *testing.T, connString, password string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, clientTool(t, "psql"), connString, "-X", "-A", "-t", "-c", "SELECT 42")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("psql %s with %+q: %v\n%s", connString, password, err, out)
	}
}

// pgxLogin reports whether pgx logs in.
func pgxLogin(t *testing.T, connString, password string) bool {
	t.Helper()
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = password
	conn, err := pgx.ConnectConfig(ctxT(t), cfg)
	if err != nil {
		if sqlstateOf(err) != "28P01" {
			t.Fatalf("pgx %s: %v; want success or 28P01", connString, err)
		}
		return false
	}
	conn.Close(context.Background())
	return true
}

// quoteLiteral quotes s for SQL as standard_conforming_strings does.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
