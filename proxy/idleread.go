package proxy

import (
	"bufio"
	"io"
	"sync"
)

// idlePrefixSize is what an idle client's first read takes: enough for a
// typical transaction's first write (a simple Query, or Parse to Sync),
// so that it needs no second read.
const idlePrefixSize = 512

// idlePrefix is an io.Reader that returns the bytes already read into
// buf, then reads conn. A transaction-mode client waits for its next
// transaction on it rather than on a pooled read buffer, so an idle
// client holds only these bytes, and only while it waits in a read: buf
// comes from idleBufs for the read and goes back once handed on, so a
// parked client (park.go) holds none. BenchmarkIdleSessionMemory in
// transaction mode: proxy heap per idle client 5.4-5.9 kB with buf in
// the session, 4.8 kB pooled (txSession from 1,816 B, in the 2,048 B
// size class, to 1,312 B, in the 1,408 B one).
type idlePrefix struct {
	buf  *[idlePrefixSize]byte
	r, w int
	conn io.Reader
}

var idleBufs = sync.Pool{New: func() any { return new([idlePrefixSize]byte) }}

func (f *idlePrefix) Read(p []byte) (int, error) {
	if f.r < f.w {
		n := copy(p, f.buf[f.r:f.w])
		f.r += n
		return n, nil
	}
	return f.conn.Read(p)
}

// empty reports whether every byte read ahead was handed on.
func (f *idlePrefix) empty() bool { return f.r == f.w }

// release gives buf back once every byte read ahead was handed on.
func (f *idlePrefix) release() {
	if f.buf != nil && f.empty() {
		idleBufs.Put(f.buf)
		f.buf = nil
	}
}

// idleRead waits for a client with nothing buffered to send something and
// returns a pooled reader that yields what came, then the rest of the
// client's stream. With mayPark it waits parkAfter at most: errIdle
// means the client sent nothing meanwhile and the session may park
// (park.go).
func (tx *txSession) idleRead(mayPark bool) (*bufio.Reader, error) {
	f := &tx.first
	f.conn = tx.client
	if mayPark {
		tx.settle()
	}
	f.buf = idleBufs.Get().(*[idlePrefixSize]byte)
	f.r, f.w = 0, 0
	n, err := f.conn.Read(f.buf[:])
	if mayPark && tx.settled(err) && n == 0 {
		f.release()
		return nil, errIdle
	}
	for n == 0 && err == nil {
		n, err = f.conn.Read(f.buf[:])
	}
	if n > 0 {
		f.w = n
		return getTxReader(f), nil
	}
	f.release()
	return nil, err
}
