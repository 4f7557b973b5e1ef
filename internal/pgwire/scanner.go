package pgwire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is a message's type byte and length word.
const HeaderSize = 5

// ErrInvalidLength is a length word below 4, which no message has. The
// length is a signed Int32: one with its top bit set is negative.
var ErrInvalidLength = errors.New("pgwire: invalid message length")

// TooLargeError is a message whose body exceeds the Scanner's limit.
type TooLargeError struct{ Size, Max int }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("pgwire: message of %d bytes exceeds the limit of %d", e.Size, e.Max)
}

// WriteError is a failure writing to the destination, told apart from a
// failure reading the source: a relay handles "the server went away" and
// "the client went away" differently.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "pgwire: write: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// MaxRetained is the largest buffer a Scanner keeps for the next message
// after reading a message whole that was longer than its read buffer;
// a bigger one is dropped (or given back to its Buffers) as soon as its
// message is passed on. Below it, keeping the buffer saves an allocation
// per message for the statements of ordinary clients (ORM queries and
// batched INSERTs of tens of KiB) at a bounded cost per connection;
// above it, allocating afresh costs less than the message itself does
// (zeroing 64 KiB takes microseconds, reading it from a socket and
// having PostgreSQL parse it takes far longer), while keeping it would
// let one message, up to the body limit, stay pinned for the
// connection's life.
const MaxRetained = 64 << 10

// Buffers lends a Scanner the buffers it reads messages into that are
// asked for whole and longer than its read buffer, so that their owner
// can account for that memory and bound it across many Scanners. A
// Scanner asks for one buffer per such message and gives it back as soon
// as it is done with that message.
type Buffers interface {
	// Get returns a buffer of length n for one message, or an error,
	// which Next returns as it is: the message is then not read (its
	// header stays buffered, nothing of it is consumed) and calling Next
	// again asks again.
	Get(n int) ([]byte, error)
	// Put takes back a buffer Get returned, as Get returned it, when the
	// Scanner is done with its message: passed on or dropped (by the
	// call that does so), or abandoned at Reset or Release. The message's
	// bytes must not be used after that.
	Put(b []byte)
}

// Message is the message a Scanner stopped at.
type Message struct {
	// Type is the message type byte.
	Type byte
	// Len is the length of the body.
	Len int
	// Bytes is the whole message, header included, when Whole; else the
	// header and the part of the body that is buffered. It belongs to the
	// Scanner and is valid until its next call.
	Bytes []byte
	// Whole is false for a message longer than the read buffer whose type
	// was not asked for whole: its tail streams through on Forward.
	Whole bool
}

// Body is the message's body when Whole.
func (m Message) Body() []byte { return m.Bytes[HeaderSize:] }

// curState is where the current message is.
type curState uint8

const (
	curNone   curState = iota // decided: forwarded or discarded
	curBuffer                 // whole, in the reader's buffer after pend
	curBig                    // whole, in big (already consumed from the reader)
	curLong                   // the header and part of the body in the buffer, rest to come
	curDrop                   // curLong being dropped: Discard was called
	curFill                   // whole, being read into big, not yet returned: got bytes read
)

// Scanner frames v3 messages read from a buffered source and passes on
// the ones its caller forwards to a destination, in as few writes as
// possible: forwarded messages are only counted (they stay in the
// reader's buffer) and written together just before the Scanner would
// block on a read, or when the caller writes something of its own, drops
// a message or flushes. Everything that arrives in one read and is
// forwarded goes out in one write.
//
// The zero value is unusable; call Reset. A Scanner makes no allocation
// per message: only a message asked for whole that is longer than the
// read buffer is read into a buffer of the Scanner's own, grown as
// needed up to the body limit and kept for the next one only up to
// MaxRetained, or lent by SetBuffers's Buffers for that message alone.
//
// After a read error (a deadline used to interrupt a blocked read, the
// source closing) nothing is lost: whatever was forwarded was written
// before the read, and the next call resumes where the failed one
// stopped. After a write error (a *WriteError) the destination's state is
// unknown and the Scanner should be abandoned.
type Scanner struct {
	r     *bufio.Reader
	w     io.Writer
	max   int
	whole [4]uint64 // a bit per message type

	// pend counts bytes at the front of r's buffer forwarded but not yet
	// written.
	pend  int
	state curState
	// size is the current message's length, header included; rest, for
	// curLong and curDrop, how much of it is not yet passed on or dropped
	// from the source (buffered or not); got, for curFill, how much of it
	// is in big.
	size, rest, got int
	// big holds a message read whole that is longer than the read buffer
	// (curFill, curBig); lent says it came from bufs and goes back to it
	// when the message is done.
	big  []byte
	lent bool
	bufs Buffers
}

// Reset makes s read r and write forwarded messages to w. A nil w
// consumes forwarded messages (the caller copies what it needs). Settings
// (SetMaxBody, Whole, SetBuffers) are kept; a message read whole that was
// not done with is given back, as by Release.
func (s *Scanner) Reset(r *bufio.Reader, w io.Writer) {
	s.release()
	s.r, s.w = r, w
	s.pend, s.state, s.size, s.rest = 0, curNone, 0, 0
}

// Release gives back the buffer of a message read whole that the Scanner
// still holds (the current one, or one being read when a read failed) to
// its Buffers, or drops it if it is the Scanner's own and over
// MaxRetained. Call it when done with the Scanner: it forgets the current
// message, so Reset it before using it again.
func (s *Scanner) Release() {
	s.release()
	s.state = curNone
}

// release is done with the message in big.
func (s *Scanner) release() {
	switch {
	case s.lent:
		s.bufs.Put(s.big)
		s.big, s.lent = nil, false
	case cap(s.big) > MaxRetained:
		s.big = nil
	}
}

// SetBuffers makes s read every message asked for whole that is longer
// than its read buffer into a buffer b lends for that message alone; nil
// means the Scanner's own buffer (see MaxRetained). Set it before the
// first Next; it is kept across Resets.
func (s *Scanner) SetBuffers(b Buffers) {
	s.release()
	s.bufs = b
}

// SetMaxBody bounds the body of every message; 0 means no bound.
func (s *Scanner) SetMaxBody(n int) { s.max = n }

// Whole asks for messages of the given types always whole, even when
// longer than the read buffer.
func (s *Scanner) Whole(types ...byte) {
	for _, t := range types {
		s.whole[t>>6] |= 1 << (t & 63)
	}
}

// WholeAll asks for every message whole.
func (s *Scanner) WholeAll() {
	for i := range s.whole {
		s.whole[i] = ^uint64(0)
	}
}

// Next passes on the current message unless the caller discarded it, and
// returns the next one. Errors: a read error of the source as returned
// by it (retry by calling Next again), ErrInvalidLength or a
// *TooLargeError for a bad header (the stream cannot be framed any more),
// a *WriteError, or the error of Buffers.Get for a message it could not
// lend a buffer for (nothing of that message is consumed; calling Next
// again asks again).
func (s *Scanner) Next() (Message, error) {
	if s.state == curFill {
		return s.readBig()
	}
	if err := s.Forward(); err != nil {
		return Message{}, err
	}
	if s.r.Buffered()-s.pend < HeaderSize {
		if err := s.fill(HeaderSize); err != nil {
			return Message{}, err
		}
	}
	buf, _ := s.r.Peek(s.r.Buffered())
	hdr := buf[s.pend:]
	typ := hdr[0]
	n := int(int32(binary.BigEndian.Uint32(hdr[1:5])))
	if n < 4 {
		return Message{}, ErrInvalidLength
	}
	if body := n - 4; s.max > 0 && body > s.max {
		return Message{}, &TooLargeError{Size: body, Max: s.max}
	}
	size := n + 1
	s.size = size
	switch {
	case s.pend+size <= len(buf):
	case size <= s.r.Size():
		if err := s.fill(size); err != nil {
			return Message{}, err
		}
		buf, _ = s.r.Peek(size)
	case s.whole[typ>>6]&(1<<(typ&63)) != 0:
		if err := s.Flush(); err != nil {
			return Message{}, err
		}
		if err := s.grow(size); err != nil {
			return Message{}, err
		}
		s.state, s.got = curFill, 0
		return s.readBig()
	default:
		s.state, s.rest = curLong, size
		return Message{Type: typ, Len: size - HeaderSize, Bytes: buf[s.pend:]}, nil
	}
	s.state = curBuffer
	return Message{Type: typ, Len: size - HeaderSize, Bytes: buf[s.pend : s.pend+size], Whole: true}, nil
}

// grow makes big hold size bytes for the message about to be read into
// it: lent by bufs, else the Scanner's own.
func (s *Scanner) grow(size int) error {
	s.release()
	if s.bufs != nil {
		b, err := s.bufs.Get(size)
		if err != nil {
			return err
		}
		s.big, s.lent = b, true
		return nil
	}
	if cap(s.big) < size {
		s.big = make([]byte, size)
	}
	return nil
}

// fill writes what is pending and waits until n bytes are buffered. On a
// read error nothing is pending and the bytes that came stay buffered.
func (s *Scanner) fill(n int) error {
	if err := s.Flush(); err != nil {
		return err
	}
	_, err := s.r.Peek(n)
	return err
}

// readBig reads (the rest of) a message longer than the read buffer into
// s.big. After a read error, part of the message is consumed: the next
// Next goes on reading it.
func (s *Scanner) readBig() (Message, error) {
	m := s.big[:s.size]
	for s.got < len(m) {
		n, err := s.r.Read(m[s.got:])
		s.got += n
		if err != nil && s.got < len(m) {
			return Message{}, fmt.Errorf("pgwire: reading a message of %d bytes: %w", len(m), noEOF(err))
		}
	}
	s.state = curBig
	return Message{Type: m[0], Len: len(m) - HeaderSize, Bytes: m, Whole: true}, nil
}

// noEOF reports a stream ending inside a message as unexpected.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Forward passes on the current message (Next does so by default). A
// whole buffered message is only counted, to be written with the batch;
// one held in the Scanner's own buffer is written now, after the batch;
// a long one is written with the batch and its tail streamed through.
// After a read error while streaming, calling Forward or Next again goes
// on where it stopped.
func (s *Scanner) Forward() error {
	switch s.state {
	case curFill:
		return nil // no current message: Next returned an error
	case curBuffer:
		s.pend += s.size
	case curBig:
		if err := s.Write(s.big[:s.size]); err != nil {
			return err
		}
		s.release()
	case curLong:
		return s.stream(true)
	case curDrop:
		return s.stream(false)
	}
	s.state = curNone
	return nil
}

// Discard drops the current message: what was forwarded before it is
// written first, so the order on the destination is kept. After a read
// error while dropping a long message, calling Discard, Forward or Next
// again goes on dropping it.
func (s *Scanner) Discard() error {
	switch s.state {
	case curFill:
		return nil // no current message: Next returned an error
	case curBuffer:
		if err := s.Flush(); err != nil {
			return err
		}
		s.r.Discard(s.size)
	case curBig:
		s.release()
	case curLong:
		if err := s.Flush(); err != nil {
			return err
		}
		s.state = curDrop
		return s.stream(false)
	case curDrop:
		return s.stream(false)
	}
	s.state = curNone
	return nil
}

// stream passes on (or drops) the rest of a long message: what is
// buffered of it, then chunk by chunk as it comes.
func (s *Scanner) stream(write bool) error {
	for s.rest > 0 {
		if s.r.Buffered() == s.pend {
			if err := s.fill(s.pend + 1); err != nil {
				return err
			}
		}
		chunk := min(s.rest, s.r.Buffered()-s.pend)
		if write {
			s.pend += chunk
			if err := s.Flush(); err != nil {
				return err
			}
		} else {
			s.r.Discard(chunk)
		}
		s.rest -= chunk
	}
	s.state = curNone
	return nil
}

// Write writes what was forwarded, then b: in front of the current
// message if it is not passed on yet, else after it.
func (s *Scanner) Write(b []byte) error {
	if err := s.Flush(); err != nil {
		return err
	}
	if s.w == nil {
		return nil
	}
	if _, err := s.w.Write(b); err != nil {
		return &WriteError{err}
	}
	return nil
}

// Flush writes everything forwarded so far in one write.
func (s *Scanner) Flush() error {
	if s.pend == 0 {
		return nil
	}
	b, _ := s.r.Peek(s.pend)
	var err error
	if s.w != nil {
		_, err = s.w.Write(b)
	}
	s.r.Discard(s.pend)
	s.pend = 0
	if err != nil {
		return &WriteError{err}
	}
	return nil
}

// Buffered is how many bytes are buffered beyond the current message and
// those forwarded before it.
func (s *Scanner) Buffered() int {
	n := s.r.Buffered() - s.pend
	if s.state == curBuffer {
		n -= s.size
	}
	if s.state == curLong || s.state == curDrop || s.state == curFill {
		return 0
	}
	return n
}

// AtBoundary reports whether the source is at a message boundary: no
// long message is partly passed on, dropped or read.
func (s *Scanner) AtBoundary() bool {
	return s.state != curLong && s.state != curDrop && s.state != curFill
}

// Peek returns the type of the message after the current one if that
// message is wholly buffered and the Scanner could return it from Next
// without reading; ok is false otherwise (too short, too long, invalid).
func (s *Scanner) Peek() (typ byte, ok bool) {
	if !s.AtBoundary() || s.state == curBig && s.r.Buffered() < HeaderSize {
		return 0, false
	}
	at := s.pend
	if s.state == curBuffer {
		at += s.size
	}
	buf, _ := s.r.Peek(s.r.Buffered())
	if len(buf)-at < HeaderSize {
		return 0, false
	}
	n := int(int32(binary.BigEndian.Uint32(buf[at+1 : at+HeaderSize])))
	if n < 4 || at+n+1 > len(buf) || (s.max > 0 && n-4 > s.max) {
		return 0, false
	}
	return buf[at], true
}
