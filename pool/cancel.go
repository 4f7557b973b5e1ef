package pool

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// ErrCancelUnanswered wraps Cancel's errors from the moment the request
// may have reached the server: it can still act on it, later.
var ErrCancelUnanswered = errors.New("cancel request sent, server did not hang up")

// BeginCancel registers a cancel request for c's backend that the caller
// is about to forward with ForwardCancel. Until then, c stays out of
// circulation: a release parks it rather than hand it to its next holder
// (see put). The caller must hold c and keep it held until BeginCancel
// returns (under a lock of its own that its release path takes too), so
// that the request is registered while the statement it is meant for is
// the caller's. It reports false when c is no longer held.
func (c *Conn) BeginCancel() bool {
	p := c.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.state != stateActive {
		return false
	}
	c.cancels++
	return true
}

// ForwardCancel sends the cancel request registered by BeginCancel (Cancel
// with c's backend key) and ends the registration: if c was released
// meanwhile and this was its last request in flight, c goes back into
// circulation now, or is closed if a request went unanswered
// (ErrCancelUnanswered), because the server might still signal the
// backend while it runs another holder's statement. c may be released
// before or during the call; ForwardCancel touches only the Conn's
// immutable key and the pool's bookkeeping.
func (c *Conn) ForwardCancel(ctx context.Context, t Target) error {
	err := Cancel(ctx, t, c.pid, c.secretKey)
	c.endCancel(!errors.Is(err, ErrCancelUnanswered))
	return err
}

// endCancel ends one BeginCancel; answered means the request never
// reached the server or the server hung up after it.
func (c *Conn) endCancel(answered bool) {
	p := c.pool
	p.mu.Lock()
	c.cancels--
	if !answered {
		c.doomed = true
	}
	if c.state != stateParked || c.cancels > 0 {
		p.mu.Unlock()
		return
	}
	if !c.doomed && !p.closed {
		c.state = stateActive
		p.putLocked(c, c.holder)
		p.mu.Unlock()
		return
	}
	p.dropLocked(c)
	p.mu.Unlock()
	c.close()
}

// Cancel asks the server at t.Addr to cancel the query running on backend
// pid, with its cancel key; the proxy goes through BeginCancel and
// ForwardCancel instead, which keep the connection from its next holder
// until the request is answered. Only Addr and TLS of t are used: a cancel
// request has no login. With t.TLS the request travels encrypted, as libpq
// does, so the key is not exposed on the wire. It returns once the server
// has read the request and hung up, which is all the protocol tells:
// whether a query was running and got cancelled is not reported. Errors
// from the write on wrap ErrCancelUnanswered.
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
		return fmt.Errorf("pool: cancel: %w: %w", ErrCancelUnanswered, err)
	}
	// The server closes the connection once it has acted on the request
	// (signalled the backend); waiting for that keeps a later query from
	// being hit by a late cancel.
	if _, err := io.Copy(io.Discard, conn); err != nil {
		return fmt.Errorf("pool: cancel: %w: %w", ErrCancelUnanswered, err)
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
