package proxy

import (
	"bytes"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
)

// Tenants of the shared and schema tiers have LISTEN/NOTIFY channels of
// their own in the database they share (migrations/namespace.go): on the
// server, each channel of the tenant's carries the tenant's prefix
// (router.Route.Channels). The proxy puts the prefix into the LISTEN,
// UNLISTEN and NOTIFY statements a client sends (policy.Channels), and
// takes it off the notifications the server sends back, dropping any
// without it: a client hears its own namespace only, under the names it
// used. pg_notify and pg_listening_channels do the same inside the
// server. The database tier's database is the tenant's own, so its
// sessions have no prefix and nothing changes.

// channelsOf returns the Query or Parse m (whole) with its channels in
// the session's namespace, m itself when it names none or the session
// has no namespace, or PostgreSQL's error for a channel too long for the
// namespace. Call it only for a statement the policy allowed.
func (b *sessionBase) channelsOf(m []byte) ([]byte, error) {
	if b.channels == "" || (m[0] != pgwire.Query && m[0] != pgwire.Parse) {
		return m, nil
	}
	sql := pgwire.Statement(m)
	out, perr := b.srv.policy.Channels(sql, b.channels)
	if perr != nil {
		return nil, perr
	}
	if out == nil {
		return m, nil
	}
	return withStatement(m, sql, out), nil
}

// withStatement returns a copy of the Query or Parse m (whole), whose
// statement is sql, with out in sql's place.
func withStatement(m, sql, out []byte) []byte {
	// The text is a Query's only field, a Parse's second (after the
	// statement's name, before the parameter types): what is around it
	// stays as it is.
	start := pgwire.HeaderSize
	if m[0] == pgwire.Parse {
		start += bytes.IndexByte(m[start:], 0) + 1
	}
	end := start + len(sql)
	r := pgwire.AppendHeader(make([]byte, 0, len(m)-len(sql)+len(out)), m[0], len(m)-pgwire.HeaderSize-len(sql)+len(out))
	r = append(r, m[pgwire.HeaderSize:start]...)
	r = append(r, out...)
	return append(r, m[end:]...)
}

// relayNotification passes on the server's NotificationResponse m (whole)
// of a session with a namespace with the prefix taken off its channel, or
// drops it when the channel is not in the namespace.
func relayNotification(sc *pgwire.Scanner, m []byte, prefix string) error {
	body := m[pgwire.HeaderSize:]
	if len(body) < 4 {
		return sc.Discard()
	}
	channel, payload, ok := pgwire.CString(body[4:])
	if err := sc.Discard(); err != nil || !ok || !bytes.HasPrefix(channel, []byte(prefix)) {
		return err
	}
	channel = channel[len(prefix):]
	out := pgwire.AppendHeader(make([]byte, 0, len(m)), pgwire.NotificationResponse, 4+len(channel)+1+len(payload))
	out = append(append(append(out, body[:4]...), channel...), 0)
	return sc.Write(append(out, payload...))
}

// replace sends out in place of the current message m when they differ.
func replace(sc *pgwire.Scanner, m, out []byte) error {
	if len(out) == len(m) && &out[0] == &m[0] {
		return nil
	}
	if err := sc.Discard(); err != nil {
		return err
	}
	return sc.Write(out)
}
