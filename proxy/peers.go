package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"time"

	"go.uber.org/zap"
)

// Peering: several instances behind one TCP load balancer. A client's
// CancelRequest comes on a new connection, which the balancer may hand
// to another instance than the one holding the client's session. So each
// instance writes its peer id into the pids of the keys it hands out, and
// one that receives a key of another peer's forwards the request, as it
// came, to that peer's address, where the key is checked as usual.
//
// Layout of a pid with a peer id: the top bit is 0 (clients that read the
// pid as a signed int32 see a positive number, as from PostgreSQL), the
// next peerIDBits bits are the peer id, the remaining pidRandomBits are
// random. With the 32 random bits of the secret a key keeps 53 random
// bits: a stranger's guess names a live key of an instance with n
// sessions with probability n/2^53, about one in 10^11 at 100,000
// sessions, and every guess costs a connection to the proxy.
const (
	peerIDBits    = 10
	pidRandomBits = 31 - peerIDBits
	// MaxPeerID is the largest peer id (Config.PeerID).
	MaxPeerID = 1<<peerIDBits - 1
)

const (
	// peerDialTimeout bounds connecting to a peer: peers sit on the same
	// network, and a client waits for its cancel request's answer
	// (libpq's PQcancel blocks), so an unreachable peer must not hold it
	// long.
	peerDialTimeout = time.Second
	// maxPeerForwards caps the requests forwarded at once. A stranger
	// can make an instance forward one request per connection it opens,
	// as it could send them to the peer itself; the cap keeps the
	// instance from opening more connections to a peer than the peer
	// lets one address have in start-up (MaxStartupConnsPerAddr's
	// default, 100), and bounds a forwarding loop between instances whose
	// peer lists disagree: each hop holds a slot until the next answers,
	// so the loop stops where the slots are gone.
	maxPeerForwards = 32
)

// peerKeyPID returns pid with the peer id written over its top bits.
func peerKeyPID(peerID int, pid uint32) uint32 {
	return uint32(peerID)<<pidRandomBits | pid&(1<<pidRandomBits-1)
}

// peerOfPID is the peer id a pid names; a pid with its top bit set
// (a key of an instance without peering) names one above MaxPeerID.
func peerOfPID(pid uint32) int {
	return int(pid >> pidRandomBits)
}

// peering is an instance's peer id and its peers' addresses.
type peering struct {
	self  int
	addrs map[int]string
	// slots holds a token per request being forwarded.
	slots chan struct{}
}

// newPeering returns nil without a peer id: keys are then fully random
// and every request is this instance's.
func newPeering(self int, addrs map[int]string) *peering {
	if self == 0 {
		return nil
	}
	return &peering{self: self, addrs: maps.Clone(addrs), slots: make(chan struct{}, maxPeerForwards)}
}

// elsewhere says whether a request with pid is another instance's to
// check. Never this instance's own (its keys all carry its id), so a
// request is never forwarded back to the instance that received it.
func (p *peering) elsewhere(pid uint32) bool {
	return p != nil && peerOfPID(pid) != p.self
}

// forward sends a CancelRequest with pid and secret to the peer its pid
// names and waits for the peer to hang up, at most timeout. A pid that
// names no configured peer, or a request over maxPeerForwards, is
// dropped; like a key that is not found, that answers nothing.
func (p *peering) forward(ctx context.Context, pid uint32, secret []byte, timeout time.Duration, log *zap.Logger) {
	id := peerOfPID(pid)
	addr, ok := p.addrs[id]
	if !ok {
		log.Debug("cancel request dropped: its key names no configured peer", zap.Int("peer", id))
		return
	}
	select {
	case p.slots <- struct{}{}:
		defer func() { <-p.slots }()
	default:
		log.Warn("cancel request dropped: too many forwarded to peers at once", zap.Int("peer", id))
		return
	}
	if err := sendCancel(ctx, addr, pid, secret, timeout); err != nil {
		log.Warn("forwarding cancel request to peer failed", zap.Int("peer", id), zap.String("addr", addr), zap.Error(err))
	}
}

// sendCancel writes one CancelRequest to addr and waits until the other
// side closes the connection, which is its only answer.
func sendCancel(ctx context.Context, addr string, pid uint32, secret []byte, timeout time.Duration) error {
	d := net.Dialer{Timeout: peerDialTimeout}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	msg := make([]byte, 0, 12+len(secret))
	msg = binary.BigEndian.AppendUint32(msg, uint32(12+len(secret)))
	msg = binary.BigEndian.AppendUint32(msg, codeCancelRequest)
	msg = binary.BigEndian.AppendUint32(msg, pid)
	msg = append(msg, secret...)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		return errors.Join(fmt.Errorf("peer answered %d bytes", n), err)
	}
	return nil
}
