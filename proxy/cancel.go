package proxy

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"sync"

	"github.com/tenantproxy/tenantproxy/pool"
)

// cancelKeys maps the cancel keys the proxy hands to clients to their
// sessions. Clients never see a server's own key, so a CancelRequest can
// reach a server only through the session that owns the key, and only the
// statement of that session's client (canceller).
type cancelKeys struct {
	// peerID, when not 0, is written into every pid handed out
	// (peerKeyPID), so that another instance of a peering can tell whose
	// key a CancelRequest carries.
	peerID int
	mu     sync.Mutex
	m      map[uint32]cancelEntry
}

type cancelEntry struct {
	secret [4]byte
	// target is where the session's server connections are: its Addr
	// and TLS carry the request.
	target pool.Target
	tenant string
	sess   canceller
}

// canceller is a session as its client's cancel requests see it. A
// server connection is handed from holder to holder, and a cancel request
// is a signal the postmaster sends its backend some time after the proxy
// forwarded it, to whatever runs there then. So a request is forwarded
// only while the client's own statement runs on the connection, and the
// connection goes to no other holder until the postmaster has answered
// (pool.Conn.BeginCancel): by then the backend has been signalled, and a
// signal that finds it idle is dropped by PostgreSQL.
type canceller interface {
	// startCancel returns the server connection that runs a statement of
	// the session's client, registered for one cancel request
	// (pool.Conn.BeginCancel), or nil to drop the request: no statement of
	// the client's is in flight, the proxy's own set-up of the client's
	// context is (a cancelled set-up would end the session), or a request
	// of the session is already in flight (one at a time, so that a client
	// cannot flood the postmaster, which forks a process per request).
	startCancel() *pool.Conn
	// cancelDone ends what startCancel began, once the request has been
	// forwarded (pool.Conn.ForwardCancel).
	cancelDone()
	// cancelHold ends the wait of a statement the proxy holds for its
	// tenant's limits, reporting whether there was one.
	cancelHold() bool
}

var (
	_ canceller = (*pinnedSession)(nil)
	_ canceller = (*txSession)(nil)
)

func newCancelKeys(peerID int) *cancelKeys {
	return &cancelKeys{peerID: peerID, m: make(map[uint32]cancelEntry)}
}

// add registers a session of tenant whose server connections are at t
// and returns the key to give its client: 64 random bits, or with a peer
// id 53 (peerKeyPID).
func (k *cancelKeys) add(t pool.Target, tenant string, sess canceller) (pid uint32, secret [4]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for {
		var b [8]byte
		rand.Read(b[:])
		pid = binary.BigEndian.Uint32(b[:4])
		if k.peerID != 0 {
			pid = peerKeyPID(k.peerID, pid)
		}
		if _, taken := k.m[pid]; pid == 0 || taken {
			continue
		}
		copy(secret[:], b[4:])
		k.m[pid] = cancelEntry{secret: secret, target: t, tenant: tenant, sess: sess}
		return pid, secret
	}
}

// remove forgets a key when its session ends. What keeps a late request
// from the connection's next holder is the session (startCancel checks
// that the connection is still its own) and the pool (which parks a
// connection until the requests forwarded to it are answered), not the
// order of remove and release.
func (k *cancelKeys) remove(pid uint32) {
	k.mu.Lock()
	delete(k.m, pid)
	k.mu.Unlock()
}

// lookup returns the session of a client's key. The secret is compared
// in constant time; an unknown pid and a wrong secret look alike.
func (k *cancelKeys) lookup(pid uint32, secret []byte) (cancelEntry, bool) {
	k.mu.Lock()
	e, ok := k.m[pid]
	k.mu.Unlock()
	if subtle.ConstantTimeCompare(e.secret[:], secret) != 1 || !ok {
		return cancelEntry{}, false
	}
	return e, true
}

// startCancel, in session mode: the pinned connection runs only the
// client's statements (its context was set up before the client had a
// key), until the session gives it back (stopCancels).
func (ss *pinnedSession) startCancel() *pool.Conn {
	ss.cancelMu.Lock()
	defer ss.cancelMu.Unlock()
	if ss.released || ss.cancelling || ss.backend == nil || !ss.backend.BeginCancel() {
		return nil
	}
	ss.cancelling = true
	return ss.backend
}

func (ss *pinnedSession) cancelDone() {
	ss.cancelMu.Lock()
	ss.cancelling = false
	ss.cancelMu.Unlock()
}

// stopCancels is called before the pinned connection is released: no
// request is forwarded to it from then on. One already registered is
// answered before the pool hands the connection on; it may cancel the
// pool's reset, and a connection whose reset failed is closed.
func (ss *pinnedSession) stopCancels() {
	ss.cancelMu.Lock()
	ss.released = true
	ss.cancelMu.Unlock()
}

// startCancel, in transaction mode: only while the client's transaction
// is bound and the connection owes the client replies (a statement or
// batch in flight), and not before the replies to the context set-up in
// front of it have all been read (swallow): until then the server may
// still run the set-up. The binding cannot end meanwhile: unbinding takes
// tx.mu, held here until the request is registered on the connection.
func (tx *txSession) startCancel() *pool.Conn {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	c := tx.server
	if c == nil || tx.cancelling || tx.swallow > 0 || (!tx.partial && tx.replies.owed() == 0) || !c.BeginCancel() {
		return nil
	}
	tx.cancelling = true
	return c
}

func (tx *txSession) cancelDone() {
	tx.mu.Lock()
	tx.cancelling = false
	tx.mu.Unlock()
}
