package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// Request codes that share the startup packet's position (PostgreSQL's
// pqcomm.h).
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	protocol30        = 3 << 16
	// maxNegotiations bounds SSLRequest/GSSENCRequest rounds before the
	// startup message: PostgreSQL clients send at most one of each.
	maxNegotiations = 2
)

// clientConn is a client socket during admission and authentication. It
// reads whole messages with io.ReadFull and no read-ahead, so no plaintext
// sent before a TLS handshake can be mistaken for encrypted data.
type clientConn struct {
	raw        net.Conn
	conn       net.Conn // raw or the TLS connection over it
	tls        bool
	serverName string
	buf        []byte
	// slot is the connection's place under the start-up caps, left once
	// it authenticates (establish).
	slot *startupSlot
}

// send encodes msgs and writes them in one write.
func (c *clientConn) send(msgs ...pgproto3.BackendMessage) error {
	c.buf = c.buf[:0]
	for _, m := range msgs {
		var err error
		if c.buf, err = m.Encode(c.buf); err != nil {
			return err
		}
	}
	_, err := c.conn.Write(c.buf)
	return err
}

// readMessage reads one typed message of at most max body bytes. The body
// is valid until the next read.
func (c *clientConn) readMessage(max int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > max {
		return 0, nil, pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid message length %d", n+4)
	}
	if cap(c.buf) < n {
		c.buf = make([]byte, n)
	}
	body := c.buf[:n]
	if _, err := io.ReadFull(c.conn, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

// startupPacket is a parsed startup-phase packet: a StartupMessage, an
// SSLRequest, a GSSENCRequest or a CancelRequest.
type startupPacket struct {
	code uint32
	// params are the StartupMessage's parameters, "_pq_." protocol
	// options excluded (they are listed in unrecognized: this proxy
	// supports none).
	params       map[string]string
	unrecognized []string
	cancelPID    uint32
	cancelSecret []byte
}

// readStartupPacket reads a length-prefixed startup packet of at most max
// bytes (length word included).
func readStartupPacket(r io.Reader, max int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < minStartupPacket || n > max {
		return nil, pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid length of startup packet: %d", n)
	}
	b := make([]byte, n-4)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// parseStartupPacket decodes a startup packet's body (after the length
// word). Errors are *pgerr.Error.
func parseStartupPacket(b []byte) (startupPacket, error) {
	if len(b) < 4 {
		return startupPacket{}, pgerr.Errorf(pgerr.CodeProtocolViolation, "startup packet too short")
	}
	p := startupPacket{code: binary.BigEndian.Uint32(b)}
	rest := b[4:]
	switch p.code {
	case codeSSLRequest, codeGSSENCRequest:
		if len(rest) != 0 {
			return p, pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid length of encryption request")
		}
		return p, nil
	case codeCancelRequest:
		// Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256.
		if len(rest) < 8 || len(rest) > 4+256 {
			return p, pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid length of cancel request")
		}
		p.cancelPID = binary.BigEndian.Uint32(rest)
		p.cancelSecret = rest[4:]
		return p, nil
	}
	if p.code>>16 != 3 {
		return p, pgerr.Errorf(pgerr.CodeFeatureNotSupported,
			"unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", p.code>>16, p.code&0xffff)
	}
	p.params = make(map[string]string)
	for {
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return p, pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		if i == 0 {
			if len(rest) != 1 {
				return p, pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid startup packet layout: data after terminator")
			}
			return p, nil
		}
		name := string(rest[:i])
		rest = rest[i+1:]
		j := bytes.IndexByte(rest, 0)
		if j < 0 {
			return p, pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		if strings.HasPrefix(name, "_pq_.") {
			p.unrecognized = append(p.unrecognized, name)
		} else {
			p.params[name] = string(rest[:j])
		}
		rest = rest[j+1:]
	}
}

// admit runs the startup phase up to a StartupMessage: encryption
// negotiation and cancel requests. It returns nil (and no error) when the
// connection was a CancelRequest, which it has handled.
func (s *Server) admit(c *clientConn, lv *live) (*startupPacket, error) {
	for round := 0; ; round++ {
		b, err := readStartupPacket(c.conn, lv.cfg.MaxStartupPacket)
		if err != nil {
			return nil, err
		}
		p, err := parseStartupPacket(b)
		if err != nil {
			return nil, err
		}
		if (p.code == codeSSLRequest || p.code == codeGSSENCRequest) && (round >= maxNegotiations || c.tls) {
			return nil, pgerr.Errorf(pgerr.CodeProtocolViolation, "unexpected encryption request")
		}
		switch p.code {
		case codeSSLRequest:
			if lv.cfg.TLS == nil {
				if _, err := c.conn.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := c.conn.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(c.raw, lv.cfg.TLS)
			if err := tc.Handshake(); err != nil {
				return nil, fmt.Errorf("tls handshake: %w", err)
			}
			c.conn, c.tls, c.serverName = tc, true, tc.ConnectionState().ServerName
		case codeGSSENCRequest:
			if _, err := c.conn.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case codeCancelRequest:
			s.forwardCancel(p.cancelPID, p.cancelSecret)
			return nil, nil
		default:
			if p.code != protocol30 || len(p.unrecognized) > 0 {
				// A newer minor version or protocol options: answer as
				// PostgreSQL does and carry on in 3.0.
				if err := c.send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: p.unrecognized}); err != nil {
					return nil, err
				}
			}
			if lv.cfg.RequireTLS && !c.tls {
				return nil, pgerr.Errorf(pgerr.CodeTLSRequired, "connections without TLS are not accepted")
			}
			return &p, nil
		}
	}
}
