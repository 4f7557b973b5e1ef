package pool

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Cancel asks the server at t.Addr to cancel the query running on backend
// pid, with its cancel key; the proxy calls it with the keys of the Conn a
// client holds. Only Addr and TLS of t are used: a cancel request has no
// login. With t.TLS the request travels encrypted, as libpq does, so the
// key is not exposed on the wire. It returns once the server has read the
// request and hung up, which is all the protocol tells: whether a query was
// running and got cancelled is not reported.
func Cancel(ctx context.Context, t Target, pid, secret uint32) error {
	host, portText, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return fmt.Errorf("pool: cancel: address %q: %w", t.Addr, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return fmt.Errorf("pool: cancel: address %q: port: %w", t.Addr, err)
	}
	network, address := pgconn.NetworkAddress(host, uint16(port))
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, address)
	if err != nil {
		return fmt.Errorf("pool: cancel: %w", err)
	}
	defer raw.Close()
	if deadline, ok := ctx.Deadline(); ok {
		raw.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	conn := raw
	if t.TLS != nil {
		if conn, err = startTLS(ctx, raw, t.TLS); err != nil {
			return fmt.Errorf("pool: cancel: %w", err)
		}
	}
	var key [4]byte
	binary.BigEndian.PutUint32(key[:], secret)
	msg, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: key[:]}).Encode(nil)
	if err != nil {
		return fmt.Errorf("pool: cancel: %w", err)
	}
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("pool: cancel: %w", err)
	}
	// The server closes the connection once it has acted on the request;
	// waiting for that keeps a later query from being hit by a late cancel.
	if _, err := io.Copy(io.Discard, conn); err != nil {
		return fmt.Errorf("pool: cancel: %w", err)
	}
	return nil
}

// startTLS negotiates TLS the way PostgreSQL expects: SSLRequest, one byte
// of answer, then the handshake.
func startTLS(ctx context.Context, raw net.Conn, cfg *tls.Config) (net.Conn, error) {
	req, err := (&pgproto3.SSLRequest{}).Encode(nil)
	if err != nil {
		return nil, err
	}
	if _, err := raw.Write(req); err != nil {
		return nil, err
	}
	var answer [1]byte
	if _, err := io.ReadFull(raw, answer[:]); err != nil {
		return nil, err
	}
	if answer[0] != 'S' {
		return nil, fmt.Errorf("server refused TLS (answered %q)", answer[0])
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return tc, nil
}
