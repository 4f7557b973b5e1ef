package test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestHostileClients sends malformed and hostile input. Each connection
// gets an error or is timed out, the proxy keeps serving real clients,
// and no goroutine outlives the proxy.
func TestHostileClients(t *testing.T) {
	e := newProxyEnv(t)
	leaks := goleak.IgnoreCurrent()
	const startupTimeout = 500 * time.Millisecond
	srv, addr := e.startProxy(t, proxy.Config{StartupTimeout: startupTimeout, MaxMessageSize: 1 << 20})

	dial := func(t *testing.T) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	// expectError reads until the proxy's ErrorResponse and then EOF.
	expectError := func(t *testing.T, c net.Conn, sqlstate string) {
		t.Helper()
		fe := pgproto3.NewFrontend(c, c)
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("want ErrorResponse %s, got %v", sqlstate, err)
			}
			if er, ok := msg.(*pgproto3.ErrorResponse); ok {
				if er.Code != sqlstate {
					t.Fatalf("ErrorResponse %s %q; want %s", er.Code, er.Message, sqlstate)
				}
				break
			}
		}
		expectClosed(t, c)
	}
	startup := func(user string) []byte {
		b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": user, "database": "x"}}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	length := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

	t.Run("garbage before startup", func(t *testing.T) {
		c := dial(t)
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		expectError(t, c, "08P01")
	})
	t.Run("absurd startup length", func(t *testing.T) {
		c := dial(t)
		c.Write(length(0x7fffffff))
		expectError(t, c, "08P01")
	})
	t.Run("negative startup length", func(t *testing.T) {
		c := dial(t)
		c.Write(length(0xfffffff0))
		expectError(t, c, "08P01")
	})
	t.Run("unsupported protocol version", func(t *testing.T) {
		c := dial(t)
		c.Write(append(length(8), 0, 2, 0, 0))
		expectError(t, c, "0A000")
	})
	t.Run("truncated startup packet then close", func(t *testing.T) {
		c := dial(t)
		c.Write(append(length(100), 0, 3, 0, 0, 'u'))
		c.(*net.TCPConn).CloseWrite()
		expectClosed(t, c)
	})
	t.Run("truncated startup packet then silence", func(t *testing.T) {
		c := dial(t)
		c.Write(append(length(100), 0, 3, 0, 0, 'u'))
		start := time.Now()
		expectClosed(t, c)
		if time.Since(start) < startupTimeout/2 {
			t.Fatalf("closed after %s, before the startup timeout", time.Since(start))
		}
	})
	t.Run("silent client", func(t *testing.T) {
		expectClosed(t, dial(t))
	})
	t.Run("too many encryption requests", func(t *testing.T) {
		c := dial(t)
		ssl := append(length(8), 0x04, 0xd2, 0x16, 0x2f)
		c.Write(ssl)
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != 'N' {
			t.Fatalf("SSLRequest answered %q, %v; want N", b, err)
		}
		c.Write(ssl)
		io.ReadFull(c, b)
		c.Write(ssl)
		expectError(t, c, "08P01")
	})
	t.Run("malformed startup parameters", func(t *testing.T) {
		c := dial(t)
		c.Write(append(length(14), 0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 'x'))
		expectError(t, c, "08P01")
	})
	t.Run("client that never finishes auth", func(t *testing.T) {
		c := dial(t)
		c.Write(startup("alice.acme"))
		fe := pgproto3.NewFrontend(c, c)
		msg, err := fe.Receive()
		if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("got %T, %v; want AuthenticationSASL", msg, err)
		}
		expectClosed(t, c)
	})
	t.Run("garbage SASL response", func(t *testing.T) {
		c := dial(t)
		c.Write(startup("alice.acme"))
		fe := pgproto3.NewFrontend(c, c)
		fe.Receive()
		c.Write([]byte{'p', 0, 0, 0, 8, 'x', 'y', 'z', 0})
		expectError(t, c, "08P01")
	})
	t.Run("huge SASL response", func(t *testing.T) {
		c := dial(t)
		c.Write(startup("alice.acme"))
		fe := pgproto3.NewFrontend(c, c)
		fe.Receive()
		c.Write([]byte{'p', 0x7f, 0, 0, 0})
		expectError(t, c, "08P01")
	})
	t.Run("cancel request with a wrong key", func(t *testing.T) {
		c := dial(t)
		c.Write(append(length(16), 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2))
		expectClosed(t, c)
	})

	// Hostile input in a running session: a trust-auth proxy lets a raw
	// client in.
	trust, trustAddr := e.startProxy(t, proxy.Config{AuthMethod: proxy.AuthTrust, MaxMessageSize: 1 << 20})
	session := func(t *testing.T) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", trustAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(startup("alice.acme"))
		fe := pgproto3.NewFrontend(c, c)
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				return c
			}
		}
	}
	t.Run("oversized message in session", func(t *testing.T) {
		c := session(t)
		c.Write([]byte{'Q', 0x40, 0, 0, 0})
		expectError(t, c, "54000")
	})
	t.Run("invalid message length in session", func(t *testing.T) {
		c := session(t)
		c.Write([]byte{'Q', 0, 0, 0, 2})
		expectError(t, c, "08P01")
	})
	t.Run("truncated message then close in session", func(t *testing.T) {
		c := session(t)
		c.Write([]byte{'Q', 0, 0, 0, 100, 'S', 'E', 'L'})
		c.(*net.TCPConn).CloseWrite()
		expectClosed(t, c)
	})

	t.Run("fast-path function call refused, session goes on", func(t *testing.T) {
		c := session(t)
		fe := pgproto3.NewFrontend(c, c)
		// set_config(text, text, bool) by OID: the policy cannot read it.
		fe.Send(&pgproto3.FunctionCall{Function: 2078, Arguments: [][]byte{[]byte("app.tenant_id"), []byte("globex"), []byte("f")}, ArgFormatCodes: []uint16{0}})
		fe.Send(&pgproto3.Query{String: "SELECT current_setting('app.tenant_id')"})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for ready := 0; ready < 2; {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			switch m := msg.(type) {
			case *pgproto3.ErrorResponse:
				got = append(got, "E"+m.Code)
			case *pgproto3.DataRow:
				got = append(got, "D"+string(m.Values[0]))
			case *pgproto3.ReadyForQuery:
				got = append(got, "Z")
				ready++
			}
		}
		if strings.Join(got, " ") != "E42501 Z Dacme Z" {
			t.Fatalf("replies %q; want the refusal, then the tenant still acme", got)
		}
	})
	t.Run("real clients still served", func(t *testing.T) {
		conn := connect(t, dsn(addr, "alice.acme", tenantPassword))
		var n int
		if err := conn.QueryRow(ctxT(t), "SELECT 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
	})

	ctx := ctxT(t)
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := trust.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, leaks)
}

// expectClosed reads until the proxy closes the connection.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	// A reset is a close too: the proxy closes with the client's unread
	// garbage still in its receive buffer.
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("want the proxy to close the connection: %v", err)
	}
}
