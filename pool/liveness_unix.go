//go:build linux || darwin || freebsd || netbsd || openbsd

package pool

import (
	"crypto/tls"
	"errors"
	"syscall"
)

// alive tells, without a round trip, whether an idle connection can still
// be handed out. An idle server connection has nothing to say: if a byte is
// waiting, it is the FATAL a terminated backend sends before it hangs up,
// and end of file means it already has. One non-blocking peek costs a
// syscall, far less than the query a round-trip check would need.
func (c *Conn) alive() bool {
	nc := c.netConn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var (
		buf     [1]byte
		peekErr error
	)
	err = raw.Read(func(fd uintptr) bool {
		_, _, peekErr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	if err != nil {
		return false
	}
	return errors.Is(peekErr, syscall.EAGAIN)
}
