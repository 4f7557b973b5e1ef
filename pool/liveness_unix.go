//go:build linux || darwin || freebsd || netbsd || openbsd

package pool

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// probe peeks at an idle connection's socket without a round trip. An idle
// server connection has nothing to say: if a byte is waiting, it is the
// FATAL a terminated backend sends before it hangs up, and end of file
// means it already has. One non-blocking peek costs a syscall, far less
// than the query a round-trip check would need. The raw socket and the
// callback are prepared once per connection so that a check does not
// allocate.
type probe struct {
	raw  syscall.RawConn // nil when the socket cannot be peeked at
	peek func(fd uintptr) bool
	buf  [1]byte
	err  error
}

func (p *probe) init(nc net.Conn) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	p.raw = raw
	p.peek = func(fd uintptr) bool {
		_, _, p.err = syscall.Recvfrom(int(fd), p.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	}
}

// alive reports whether an idle connection can still be handed out. A
// socket that cannot be peeked at counts as alive; the setup round trip or
// the caller's first read finds it dead.
func (c *Conn) alive() bool {
	p := &c.liveness
	if p.raw == nil {
		return true
	}
	if err := p.raw.Read(p.peek); err != nil {
		return false
	}
	return errors.Is(p.err, syscall.EAGAIN)
}
