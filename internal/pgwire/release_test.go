package pgwire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// lender is a Buffers that keeps count of what it lent: at most one
// buffer at a time, given back as lent. fail, when set, makes a Get fail
// with errWake.
type lender struct {
	out        []byte // the buffer lent, nil when none
	gets, puts int
	sizes      []int
	fail       func() bool
	bad        []string
}

func (l *lender) Get(n int) ([]byte, error) {
	if l.fail != nil && l.fail() {
		return nil, errWake
	}
	if l.out != nil {
		l.bad = append(l.bad, fmt.Sprintf("Get(%d) with a buffer of %d still out", n, len(l.out)))
	}
	l.out = make([]byte, n)
	l.gets++
	l.sizes = append(l.sizes, n)
	return l.out, nil
}

func (l *lender) Put(b []byte) {
	if l.out == nil || len(b) != len(l.out) || &b[0] != &l.out[0] {
		l.bad = append(l.bad, fmt.Sprintf("Put of a %d-byte buffer not lent", len(b)))
	}
	l.out = nil
	l.puts++
}

// check fails t if the lender saw a misuse or still has a buffer out.
func (l *lender) check(t *testing.T) {
	t.Helper()
	if len(l.bad) > 0 {
		t.Fatal(strings.Join(l.bad, "; "))
	}
	if l.out != nil {
		t.Fatalf("a buffer of %d bytes is still out after %d gets and %d puts", len(l.out), l.gets, l.puts)
	}
}

// A long message's own buffer is kept for the next one only up to
// MaxRetained, however it was done with: forwarded, discarded, passed on
// by the next Next, abandoned by Reset or Release.
func TestScannerDropsABufferOverMaxRetained(t *testing.T) {
	small := msg(Query, strings.Repeat("s", 100)+"\x00")
	huge := msg(Query, strings.Repeat("h", MaxRetained)+"\x00")
	q := msg(Query, "SELECT 1\x00")
	done := map[string]func(sc *Scanner) error{
		"Forward": (*Scanner).Forward,
		"Discard": (*Scanner).Discard,
		"Next":    func(sc *Scanner) error { _, err := sc.Next(); return err },
		"Reset": func(sc *Scanner) error {
			sc.Reset(bufio.NewReaderSize(bytes.NewReader(q), 16), io.Discard)
			_, err := sc.Next()
			return err
		},
		"Release": func(sc *Scanner) error { sc.Release(); return nil },
	}
	for name, op := range done {
		t.Run(name, func(t *testing.T) {
			sc := newScanner(bytes.NewReader(bytes.Join([][]byte{small, q, huge, q}, nil)), 16, io.Discard)
			sc.Whole(Query)
			if m, err := sc.Next(); err != nil || !m.Whole || len(m.Bytes) != len(small) {
				t.Fatalf("Next = %d bytes, %v; want the small long Query whole", len(m.Bytes), err)
			}
			if err := sc.Forward(); err != nil {
				t.Fatal(err)
			}
			if cap(sc.big) != len(small) {
				t.Fatalf("after a %d-byte message the Scanner keeps %d bytes; want it kept", len(small), cap(sc.big))
			}
			if _, err := sc.Next(); err != nil {
				t.Fatal(err)
			}
			if m, err := sc.Next(); err != nil || !m.Whole || len(m.Bytes) != len(huge) {
				t.Fatalf("Next = %d bytes, %v; want the huge Query whole", len(m.Bytes), err)
			}
			if err := op(sc); err != nil {
				t.Fatal(err)
			}
			if sc.big != nil {
				t.Fatalf("after %s the Scanner keeps a buffer of %d bytes; want none over %d", name, cap(sc.big), MaxRetained)
			}
		})
	}
}

// With Buffers, each long message read whole is read into a buffer lent
// for it alone, of its size, given back as soon as it is passed on or
// dropped (or abandoned by Release); no other message asks for one.
func TestScannerLendsLongWholeMessagesFromBuffers(t *testing.T) {
	short := msg(Query, "x\x00")
	long := msg(Query, strings.Repeat("l", 50)+"\x00")
	streamed := msg(CopyData, strings.Repeat("c", 50))
	msgs := [][]byte{short, long, streamed, long, short, long, long}
	// What is done with each; leave leaves it to the next Next.
	const leave = action(255)
	decisions := []action{forward, forward, forward, discard, forward, leave, forward}
	for _, mode := range readModes {
		t.Run(mode, func(t *testing.T) {
			l := &lender{}
			w := &recorder{}
			sc := newScanner(newChunkReader(mode, bytes.Join(msgs, nil), 7), 16, w)
			sc.Whole(Query)
			sc.SetBuffers(l)
			var want []byte
			for i, ref := range msgs {
				var m Message
				if err := retry(func() (err error) { m, err = sc.Next(); return err }, nil); err != nil {
					t.Fatal(err)
				}
				if !bytes.HasPrefix(ref, m.Bytes) || m.Len != len(ref)-HeaderSize {
					t.Fatalf("message %d = %q; want %q", i, m.Bytes, ref)
				}
				lent := l.out != nil && len(m.Bytes) > 0 && &l.out[0] == &m.Bytes[0]
				if isLong := bytes.Equal(ref, long); lent != isLong || l.gets != l.puts+btoi(isLong) {
					t.Fatalf("message %d (%d bytes): in a lent buffer %v after %d gets, %d puts", i, len(ref), lent, l.gets, l.puts)
				}
				if i == len(msgs)-1 {
					break // abandoned below
				}
				switch decisions[i] {
				case forward:
					want = append(want, ref...)
					if err := retry(sc.Forward, nil); err != nil {
						t.Fatal(err)
					}
				case discard:
					if err := retry(sc.Discard, nil); err != nil {
						t.Fatal(err)
					}
				default:
					want = append(want, ref...)
					continue
				}
				if l.out != nil {
					t.Fatalf("message %d done with, its buffer still out", i)
				}
			}
			sc.Release()
			l.check(t)
			if l.gets != 4 {
				t.Fatalf("%d gets; want one per long Query (4)", l.gets)
			}
			for _, n := range l.sizes {
				if n != len(long) {
					t.Fatalf("Get(%d); want the message's size %d", n, len(long))
				}
			}
			if err := sc.Flush(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(w.Bytes(), want) {
				t.Fatalf("destination got %q; want %q", w.Bytes(), want)
			}
		})
	}
}

// A Get that fails leaves the message unread: Next returns the error as
// it is, the header stays buffered, and the next Next asks again and
// reads the message.
func TestScannerBuffersGetErrorLeavesTheMessageUnread(t *testing.T) {
	long := msg(Parse, "\x00"+strings.Repeat("p", 40)+"\x00\x00\x00")
	q := msg(Query, "SELECT 1\x00")
	errNoRoom := errors.New("no room")
	fails := 2
	l := &lender{}
	b := failingBuffers{lender: l, fail: func() bool { fails--; return fails >= 0 }, err: errNoRoom}
	w := &recorder{}
	sc := newScanner(bytes.NewReader(append(append(q[:len(q):len(q)], long...), q...)), 16, w)
	sc.Whole(Parse)
	sc.SetBuffers(b)
	if _, err := sc.Next(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := sc.Next(); !errors.Is(err, errNoRoom) {
			t.Fatalf("Next = %v; want the Get's error", err)
		}
		if !sc.AtBoundary() || sc.Buffered() < HeaderSize {
			t.Fatalf("after a failed Get AtBoundary %v, Buffered %d; want at the message's header", sc.AtBoundary(), sc.Buffered())
		}
		if w.String() != string(q) {
			t.Fatalf("destination got %q; want the Query before the Parse, written", w.String())
		}
	}
	m, err := sc.Next()
	if err != nil || !m.Whole || !bytes.Equal(m.Bytes, long) {
		t.Fatalf("Next = %q, %v; want the Parse whole", m.Bytes, err)
	}
	if _, err := sc.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Next(); err != io.EOF {
		t.Fatalf("Next at the end = %v; want io.EOF", err)
	}
	l.check(t)
	if want := string(q) + string(long) + string(q); w.String() != want {
		t.Fatalf("destination got %q; want %q", w.String(), want)
	}
}

// failingBuffers fails Get with err while fail says so, else lends from
// lender.
type failingBuffers struct {
	*lender
	fail func() bool
	err  error
}

func (b failingBuffers) Get(n int) ([]byte, error) {
	if b.fail() {
		return nil, b.err
	}
	return b.lender.Get(n)
}

// A message being read when the source fails keeps its lent buffer (the
// next Next goes on reading it); Release gives it back.
func TestScannerReleaseGivesBackAMessageBeingRead(t *testing.T) {
	long := msg(Query, strings.Repeat("r", 60)+"\x00")
	l := &lender{}
	sc := newScanner(&chunkReader{b: long, next: func() int { return 10 }, stops: []int{30}}, 16, io.Discard)
	sc.Whole(Query)
	sc.SetBuffers(l)
	if _, err := sc.Next(); !errors.Is(err, errWake) {
		t.Fatalf("Next = %v; want the wake at offset 30", err)
	}
	if l.out == nil || sc.AtBoundary() {
		t.Fatalf("interrupted inside a long message: buffer out %v, AtBoundary %v; want the buffer kept, not at a boundary", l.out != nil, sc.AtBoundary())
	}
	sc.Release()
	l.check(t)
	if !sc.AtBoundary() {
		t.Fatal("after Release the Scanner is still inside a message")
	}
}
