package proxy

import (
	"bufio"
	"io"
)

// idlePrefixSize is what an idle client's first read takes: enough for a
// typical transaction's first write (a simple Query, or Parse to Sync),
// so that it needs no second read.
const idlePrefixSize = 512

// idlePrefix is an io.Reader that returns the bytes already read into
// buf, then reads conn. A transaction-mode client waits for its next
// transaction on it rather than on a pooled read buffer, so an idle
// client holds only these bytes.
type idlePrefix struct {
	buf  [idlePrefixSize]byte
	r, w int
	conn io.Reader
}

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
	n, err := f.conn.Read(f.buf[:])
	if mayPark && tx.settled(err) && n == 0 {
		return nil, errIdle
	}
	for n == 0 && err == nil {
		n, err = f.conn.Read(f.buf[:])
	}
	if n > 0 {
		f.r, f.w = 0, n
		return getTxReader(f), nil
	}
	return nil, err
}
