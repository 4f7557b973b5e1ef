package proxy

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"sync"

	"github.com/tenantproxy/tenantproxy/pool"
)

// cancelKeys maps the cancel keys the proxy hands to clients to the
// server connections their sessions hold. Clients never see a server's
// own key, so a CancelRequest can reach a server only through the session
// that owns it.
type cancelKeys struct {
	mu sync.Mutex
	m  map[uint32]cancelTarget
}

type cancelTarget struct {
	secret [4]byte
	target pool.Target
	pid    uint32
	key    uint32
}

func newCancelKeys() *cancelKeys {
	return &cancelKeys{m: make(map[uint32]cancelTarget)}
}

// add registers a session's server connection and returns the random key
// to give its client.
func (k *cancelKeys) add(t pool.Target, serverPID, serverKey uint32) (pid uint32, secret [4]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for {
		var b [8]byte
		rand.Read(b[:])
		pid = binary.BigEndian.Uint32(b[:4])
		if _, taken := k.m[pid]; pid == 0 || taken {
			continue
		}
		copy(secret[:], b[4:])
		k.m[pid] = cancelTarget{secret: secret, target: t, pid: serverPID, key: serverKey}
		return pid, secret
	}
}

// remove forgets a key; sessions call it before releasing their server
// connection so a late cancel cannot reach the connection's next holder.
func (k *cancelKeys) remove(pid uint32) {
	k.mu.Lock()
	delete(k.m, pid)
	k.mu.Unlock()
}

// lookup returns the server connection for a client's key. The secret is
// compared in constant time; an unknown pid and a wrong secret look alike.
func (k *cancelKeys) lookup(pid uint32, secret []byte) (cancelTarget, bool) {
	k.mu.Lock()
	t, ok := k.m[pid]
	k.mu.Unlock()
	if subtle.ConstantTimeCompare(t.secret[:], secret) != 1 || !ok {
		return cancelTarget{}, false
	}
	return t, true
}

// rebind points a client's cancel key at the server connection its
// transaction is bound to (pid 0: none; a cancel then reaches no query).
func (k *cancelKeys) rebind(pid, serverPID, serverKey uint32) {
	k.mu.Lock()
	if t, ok := k.m[pid]; ok {
		t.pid, t.key = serverPID, serverKey
		k.m[pid] = t
	}
	k.mu.Unlock()
}
