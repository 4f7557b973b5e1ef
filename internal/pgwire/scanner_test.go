package pgwire

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// msg builds a message of type typ with body.
func msg(typ byte, body string) []byte {
	return append(AppendHeader(nil, typ, len(body)), body...)
}

// errWake is what chunkReader fails with at its stops: the error a past
// read deadline wakes a blocked read with.
var errWake = os.ErrDeadlineExceeded

// chunkReader yields b in reads of at most next() bytes. Before the read
// that starts at each offset in stops (sorted), it fails once with
// errWake.
type chunkReader struct {
	b     []byte
	pos   int
	next  func() int
	stops []int
	calls int // Read calls, failed ones included
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.calls++
	for len(r.stops) > 0 && r.stops[0] < r.pos {
		r.stops = r.stops[1:]
	}
	if len(r.stops) > 0 && r.stops[0] == r.pos {
		r.stops = r.stops[1:]
		return 0, errWake
	}
	if r.pos == len(r.b) {
		return 0, io.EOF
	}
	n := min(len(p), len(r.b)-r.pos, max(1, r.next()))
	if len(r.stops) > 0 {
		n = min(n, r.stops[0]-r.pos)
	}
	copy(p, r.b[r.pos:r.pos+n])
	r.pos += n
	return n, nil
}

// readModes are the ways every table case cuts its stream into reads:
// what the destination gets must not depend on it.
var readModes = []string{"all at once", "byte at a time", "random chunks"}

func newChunkReader(mode string, b []byte, seed uint64) *chunkReader {
	r := &chunkReader{b: b}
	switch mode {
	case "all at once":
		r.next = func() int { return len(b) }
	case "byte at a time":
		r.next = func() int { return 1 }
	default:
		rng := rand.New(rand.NewPCG(seed, 0x5ca1ab1e))
		r.next = func() int { return 1 + rng.IntN(40) }
	}
	return r
}

// recorder is a destination that keeps what it is written and the size
// of every write; the write numbered failAt (from 1) fails with err.
type recorder struct {
	bytes.Buffer
	sizes  []int
	failAt int
	err    error
}

func (w *recorder) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	if len(w.sizes) == w.failAt {
		return 0, w.err
	}
	return w.Buffer.Write(p)
}

// action is a test's decision for the message Next returned.
type action uint8

const (
	forward      action = iota // Forward (or leave it to the next Next)
	discard                    // Discard
	injectBefore               // Write injected(i), then Forward
	replace                    // Discard, then Write injected(i)
)

// injected is what tests write for message i: a message of a type no
// test stream uses, so that misplaced bytes show.
func injected(i int) []byte { return msg('!', strconv.Itoa(i)) }

// retry calls op again while it fails with errWake, at most 1000 times,
// calling woken (when not nil) after each errWake.
func retry(op func() error, woken func()) error {
	for range 1000 {
		err := op()
		if !errors.Is(err, errWake) {
			return err
		}
		if woken != nil {
			woken()
		}
	}
	return errors.New("test: still woken after 1000 retries")
}

// drive runs sc over its source to its end, deciding message i with
// decide, retrying every call that a wake fails. It returns copies of the
// messages Next returned and the error that ended the stream (io.EOF when
// clean), after a final Flush.
func drive(sc *Scanner, decide func(i int) action) ([]Message, error) {
	var seen []Message
	for i := 0; ; i++ {
		var m Message
		err := retry(func() (err error) { m, err = sc.Next(); return err }, nil)
		if err == nil {
			m.Bytes = bytes.Clone(m.Bytes)
			seen = append(seen, m)
			err = apply(sc, decide(i), injected(i))
		}
		if err != nil {
			if ferr := sc.Flush(); ferr != nil {
				return seen, ferr
			}
			return seen, err
		}
	}
}

// apply carries out a on sc's current message, retrying each step after
// a wake.
func apply(sc *Scanner, a action, inj []byte) error {
	write := func() error { return sc.Write(inj) }
	switch a {
	case discard:
		return retry(sc.Discard, nil)
	case injectBefore:
		if err := retry(write, nil); err != nil {
			return err
		}
	case replace:
		if err := retry(sc.Discard, nil); err != nil {
			return err
		}
		return retry(write, nil)
	}
	return retry(sc.Forward, nil)
}

func forwardAll(int) action { return forward }

func decideAt(at int, a action) func(int) action {
	return func(i int) action {
		if i == at {
			return a
		}
		return forward
	}
}

// newScanner returns a Scanner over r with a read buffer of size bytes,
// writing to w.
func newScanner(r io.Reader, size int, w io.Writer) *Scanner {
	sc := new(Scanner)
	sc.Reset(bufio.NewReaderSize(r, size), w)
	return sc
}

func TestScannerForwardsDiscardsAndWrites(t *testing.T) {
	q1, q2 := msg(Query, "SELECT 1\x00"), msg(Query, "SELECT 2\x00")
	long := func(typ byte, n int) []byte { return msg(typ, strings.Repeat("x", n)) }
	tests := []struct {
		name   string
		in     [][]byte
		size   int // read buffer; 16 when 0
		whole  []byte
		all    bool // WholeAll
		max    int
		decide func(int) action // forwardAll when nil
		want   [][]byte         // what the destination gets; in when nil
		err    error            // errors.Is target; io.EOF when nil
		clean  bool             // AtBoundary() && Buffered() == 0 at the end; true when err is nil
		check  func(t *testing.T, seen []Message)
	}{
		{
			name:  "several messages in one buffer",
			in:    [][]byte{q1, msg(Parse, "\x00SELECT $1\x00\x00\x00"), msg(Bind, "\x00\x00\x00\x00\x00\x00\x00\x00"), msg(Execute, "\x00\x00\x00\x00\x00"), msg(Sync, "")},
			size:  256,
			whole: []byte{Query, Parse},
			check: func(t *testing.T, seen []Message) {
				if got := len(seen); got != 5 {
					t.Fatalf("Next returned %d messages; want 5", got)
				}
				for _, m := range seen {
					if !m.Whole || len(m.Bytes) != HeaderSize+m.Len {
						t.Errorf("%q: whole %v, %d bytes, Len %d; want whole", m.Type, m.Whole, len(m.Bytes), m.Len)
					}
				}
			},
		},
		{
			name: "a message split across reads",
			in:   [][]byte{q1, msg(DataRow, strings.Repeat("r", 30)), q2},
			size: 64,
			check: func(t *testing.T, seen []Message) {
				if m := seen[1]; !m.Whole || !bytes.Equal(m.Bytes, msg(DataRow, strings.Repeat("r", 30))) {
					t.Errorf("DataRow = whole %v %q; want all of it", m.Whole, m.Bytes)
				}
			},
		},
		{
			name: "a message longer than the buffer streams as a tail",
			in:   [][]byte{q1, long(CopyData, 200), q2},
			check: func(t *testing.T, seen []Message) {
				m := seen[1]
				if m.Whole || m.Type != CopyData || m.Len != 200 || len(m.Bytes) < HeaderSize || len(m.Bytes) > 16 || !bytes.HasPrefix(long(CopyData, 200), m.Bytes) {
					t.Errorf("long CopyData = whole %v, Len %d, %d bytes; want its header and what is buffered", m.Whole, m.Len, len(m.Bytes))
				}
			},
		},
		{
			name:  "a long message asked for whole is read whole",
			in:    [][]byte{q1, long(Query, 100), q2},
			whole: []byte{Query},
			check: func(t *testing.T, seen []Message) {
				if m := seen[1]; !m.Whole || !bytes.Equal(m.Bytes, long(Query, 100)) || !bytes.Equal(m.Body(), long(Query, 100)[HeaderSize:]) {
					t.Errorf("long Query = whole %v, %d bytes; want all of its 105", m.Whole, len(m.Bytes))
				}
			},
		},
		{
			name:  "a long message asked for whole behind forwarded ones in the buffer",
			in:    [][]byte{q1, q2, long(Query, 100), q1},
			size:  64,
			whole: []byte{Query},
		},
		{
			name: "every message whole, as transaction mode reads the client",
			in:   [][]byte{long(Bind, 40), long(Parse, 17), msg(Sync, ""), long(CopyData, 300)},
			all:  true,
			check: func(t *testing.T, seen []Message) {
				for _, m := range seen {
					if !m.Whole || len(m.Bytes) != HeaderSize+m.Len {
						t.Errorf("%q = whole %v, %d bytes; want all %d", m.Type, m.Whole, len(m.Bytes), HeaderSize+m.Len)
					}
				}
			},
		},
		{
			name:   "discard in the middle of a batch",
			in:     [][]byte{q1, msg(Bind, "\x00\x00"), q2},
			size:   256,
			decide: decideAt(1, discard),
			want:   [][]byte{q1, q2},
		},
		{
			name:   "discard a message longer than the buffer",
			in:     [][]byte{q1, long(CopyData, 200), q2},
			decide: decideAt(1, discard),
			want:   [][]byte{q1, q2},
		},
		{
			name:   "discard a long message asked for whole",
			in:     [][]byte{q1, long(Query, 200), q2},
			whole:  []byte{Query},
			decide: decideAt(1, discard),
			want:   [][]byte{q1, q2},
		},
		{
			name:   "write before a message",
			in:     [][]byte{q1, q2},
			decide: decideAt(1, injectBefore),
			want:   [][]byte{q1, injected(1), q2},
		},
		{
			name:   "write before a message that streams",
			in:     [][]byte{q1, long(CopyData, 100), q2},
			decide: decideAt(1, injectBefore),
			want:   [][]byte{q1, injected(1), long(CopyData, 100), q2},
		},
		{
			name:   "write before a long message asked for whole",
			in:     [][]byte{q1, long(Query, 100), q2},
			whole:  []byte{Query},
			decide: decideAt(1, injectBefore),
			want:   [][]byte{q1, injected(1), long(Query, 100), q2},
		},
		{
			name:   "replace a message, as a refused fast-path call becomes a Sync",
			in:     [][]byte{q1, msg(FunctionCall, "\x00\x00\x08\x1e"), msg(Sync, "")},
			decide: decideAt(1, replace),
			want:   [][]byte{q1, injected(1), msg(Sync, "")},
		},
		{
			name: "length below 4",
			in:   [][]byte{q1, {'Q', 0, 0, 0, 3}, q2},
			want: [][]byte{q1},
			err:  ErrInvalidLength,
		},
		{
			name: "length 0",
			in:   [][]byte{{'d', 0, 0, 0, 0}},
			want: [][]byte{},
			err:  ErrInvalidLength,
		},
		{
			// The length is a signed Int32: with its top bit set it is
			// negative, which no message has.
			name: "length beyond Int32",
			in:   [][]byte{q1, {'d', 0x80, 0, 0, 4}},
			want: [][]byte{q1},
			err:  ErrInvalidLength,
		},
		{
			name:  "too large, asked for whole",
			in:    [][]byte{q1, long(Query, 65)},
			whole: []byte{Query},
			max:   64,
			want:  [][]byte{q1},
			err:   &TooLargeError{Size: 65, Max: 64},
		},
		{
			name: "too large, streamed",
			in:   [][]byte{q1, long(CopyData, 65)},
			max:  64,
			want: [][]byte{q1},
			err:  &TooLargeError{Size: 65, Max: 64},
		},
		{
			name:  "exactly at the limit",
			in:    [][]byte{long(Query, 64)},
			whole: []byte{Query},
			max:   64,
		},
		{
			name: "truncated header",
			in:   [][]byte{q1, q2[:3]},
			want: [][]byte{q1},
			err:  io.EOF,
		},
		{
			name: "truncated message that fits the buffer",
			in:   [][]byte{q1, q2[:7]},
			want: [][]byte{q1},
			err:  io.EOF,
		},
		{
			name:  "truncated long message asked for whole",
			in:    [][]byte{q1, long(Query, 100)[:50]},
			whole: []byte{Query},
			want:  [][]byte{q1},
			err:   io.ErrUnexpectedEOF,
		},
		{
			name: "truncated long message streamed",
			in:   [][]byte{q1, long(CopyData, 100)[:50]},
			want: [][]byte{q1, long(CopyData, 100)[:50]},
			err:  io.EOF,
		},
		{
			name: "empty stream ends cleanly",
		},
	}
	for _, tt := range tests {
		for _, mode := range readModes {
			t.Run(tt.name+"/"+mode, func(t *testing.T) {
				size := cmp.Or(tt.size, 16)
				w := &recorder{}
				sc := newScanner(newChunkReader(mode, bytes.Join(tt.in, nil), 1), size, w)
				sc.Whole(tt.whole...)
				if tt.all {
					sc.WholeAll()
				}
				sc.SetMaxBody(tt.max)
				decide := tt.decide
				if decide == nil {
					decide = forwardAll
				}
				seen, err := drive(sc, decide)
				wantErr := cmp.Or(tt.err, io.EOF)
				var tooLarge *TooLargeError
				if errors.As(wantErr, &tooLarge) {
					var got *TooLargeError
					if !errors.As(err, &got) || *got != *tooLarge {
						t.Fatalf("error = %v; want %v", err, wantErr)
					}
				} else if !errors.Is(err, wantErr) {
					t.Fatalf("error = %v; want %v", err, wantErr)
				}
				want := bytes.Join(tt.in, nil)
				if tt.want != nil {
					want = bytes.Join(tt.want, nil)
				}
				if got := w.Bytes(); !bytes.Equal(got, want) {
					t.Fatalf("destination got\n%q\nwant\n%q", got, want)
				}
				// Writes larger than the buffer are whole messages held
				// by the Scanner, never a batch out of the buffer.
				for _, n := range w.sizes {
					if n > size && !slices.ContainsFunc(seen, func(m Message) bool { return m.Whole && len(m.Bytes) == n }) {
						t.Errorf("a write of %d bytes: more than the %d-byte buffer, and not a whole message", n, size)
					}
				}
				if clean := sc.AtBoundary() && sc.Buffered() == 0; clean != (tt.err == nil) {
					t.Errorf("at the end AtBoundary() = %v, Buffered() = %d; want clean %v", sc.AtBoundary(), sc.Buffered(), tt.err == nil)
				}
				if tt.check != nil {
					tt.check(t, seen)
				}
			})
		}
	}
}

// A read error leaves the Scanner where it was: Next called again goes on
// with nothing lost or repeated, wherever the error hits (here before
// every byte of a stream with every kind of message and decision). A
// Forward or Discard that a read error interrupts is finished by the next
// Next, as the relay loops do after a wake.
func TestScannerResumesAfterReadErrors(t *testing.T) {
	in := [][]byte{
		msg(Query, "SELECT 1\x00"),
		msg(CopyData, strings.Repeat("t", 70)),                    // streamed, forwarded
		msg(CopyData, strings.Repeat("s", 70)),                    // streamed, discarded
		msg(Query, strings.Repeat("w", 70)+"\x00"),                // whole, longer than the buffer, a Write in front
		msg(Parse, "\x00SELECT 2\x00\x00\x00"),                    // whole, fits
		msg(Sync, ""),                                             // a Write in front
		msg(Query, strings.Repeat("r", 70)+"\x00"),                // whole, longer than the buffer, replaced
		msg(CopyData, strings.Repeat("u", 70)),                    // streamed, forwarded
		msg(CopyData, strings.Repeat("v", 70)),                    // streamed, discarded
		msg(Parse, "\x00"+strings.Repeat("p", 70)+"\x00\x00\x00"), // whole, discarded
		msg(Terminate, ""),
	}
	actions := []action{forward, forward, discard, injectBefore, forward, injectBefore, replace, forward, discard, discard, forward}
	var want []byte
	for i, m := range in {
		switch actions[i] {
		case forward:
			want = append(want, m...)
		case injectBefore:
			want = append(append(want, injected(i)...), m...)
		case replace:
			want = append(want, injected(i)...)
		}
	}
	stream := bytes.Join(in, nil)
	boundaries := map[int]bool{0: true}
	for off, i := 0, 0; i < len(in); i++ {
		off += len(in[i])
		boundaries[off] = true
	}
	for _, viaNext := range []bool{false, true} {
		for _, mode := range readModes {
			name := mode + "/retrying the call"
			if viaNext {
				name = mode + "/going on with Next"
			}
			t.Run(name, func(t *testing.T) {
				src := newChunkReader(mode, stream, 7)
				for off := range len(stream) + 1 {
					src.stops = append(src.stops, off)
				}
				w := &recorder{}
				br := bufio.NewReaderSize(src, 32)
				sc := new(Scanner)
				sc.Reset(br, w)
				sc.Whole(Query, Parse)
				wakes := 0
				woken := func() {
					wakes++
					if clean, rest := sc.AtBoundary() && sc.Buffered() == 0, boundaries[src.pos] && br.Buffered() == 0; clean != rest {
						t.Fatalf("woken at offset %d with %d buffered: AtBoundary() %v, Buffered() %d; want clean %v", src.pos, br.Buffered(), sc.AtBoundary(), sc.Buffered(), rest)
					}
				}
				// step runs op; a wake either retries it or, viaNext,
				// leaves it to the next Next to finish.
				step := func(op func() error) {
					err := op()
					if errors.Is(err, errWake) {
						woken()
						if viaNext {
							return
						}
						err = retry(op, woken)
					}
					if err != nil {
						t.Fatal(err)
					}
				}
				var got []byte
				for i := 0; ; i++ {
					var m Message
					err := retry(func() (err error) { m, err = sc.Next(); return err }, woken)
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatalf("Next %d: %v", i, err)
					}
					if !bytes.HasPrefix(in[i], m.Bytes) || m.Len != len(in[i])-HeaderSize || m.Type != in[i][0] {
						t.Fatalf("message %d = %q (Len %d); want %q", i, m.Bytes, m.Len, in[i])
					}
					if (m.Type == Query || m.Type == Parse) && !m.Whole {
						t.Fatalf("message %d (%q) not whole", i, m.Type)
					}
					got = append(got, m.Type)
					write := func() error { return sc.Write(injected(i)) }
					switch actions[i] {
					case discard:
						step(sc.Discard)
					case injectBefore:
						step(write)
						step(sc.Forward)
					case replace:
						// A message asked for whole is all read: dropping
						// it does not read.
						if err := sc.Discard(); err != nil {
							t.Fatal(err)
						}
						step(write)
					default:
						step(sc.Forward)
					}
				}
				if len(got) != len(in) {
					t.Fatalf("Next returned %d messages %q; want %d", len(got), got, len(in))
				}
				if wakes < len(stream)/32 {
					t.Errorf("only %d wakes; the test means to wake the Scanner before every read", wakes)
				}
				if !bytes.Equal(w.Bytes(), want) {
					t.Fatalf("destination got\n%q\nwant\n%q", w.Bytes(), want)
				}
				if !sc.AtBoundary() || sc.Buffered() != 0 {
					t.Fatalf("at the end AtBoundary() %v, Buffered() %d", sc.AtBoundary(), sc.Buffered())
				}
			})
		}
	}
}

// A read error before a given byte, in each read mode, with the batch
// before it forwarded: Next returns the source's error as it is, what was
// forwarded is already written, and Next called again returns the
// message the error interrupted, whole.
func TestScannerNextResumesAfterADeadline(t *testing.T) {
	q1, q2 := msg(Query, "SELECT 1\x00"), msg(Query, "SELECT 2\x00")
	stream := append(q1[:len(q1):len(q1)], q2...)
	for _, stop := range []int{len(q1), len(q1) + 3, len(q1) + 7} {
		for _, mode := range readModes {
			t.Run(strconv.Itoa(stop)+"/"+mode, func(t *testing.T) {
				src := newChunkReader(mode, stream, 3)
				src.stops = []int{stop}
				w := &recorder{}
				sc := newScanner(src, 64, w)
				if m, err := sc.Next(); err != nil || !bytes.Equal(m.Bytes, q1) {
					t.Fatalf("Next = %q, %v; want %q", m.Bytes, err, q1)
				}
				m, err := sc.Next()
				if err != errWake {
					t.Fatalf("Next = %q, %v; want the deadline as the source returned it", m.Bytes, err)
				}
				var werr *WriteError
				if errors.As(err, &werr) {
					t.Fatalf("a read deadline reported as a write error: %v", err)
				}
				if !bytes.Equal(w.Bytes(), q1) {
					t.Fatalf("written before the read: %q; want %q", w.Bytes(), q1)
				}
				if clean := sc.AtBoundary() && sc.Buffered() == 0; clean != (stop == len(q1)) {
					t.Fatalf("woken %d bytes into the second message: clean %v", stop-len(q1), clean)
				}
				if m, err = sc.Next(); err != nil || !bytes.Equal(m.Bytes, q2) || !m.Whole {
					t.Fatalf("Next after the wake = %q, %v; want %q", m.Bytes, err, q2)
				}
				if _, err := sc.Next(); err != io.EOF {
					t.Fatalf("Next at the end = %v; want io.EOF", err)
				}
				if !bytes.Equal(w.Bytes(), stream) || len(w.sizes) != 2 {
					t.Fatalf("destination got %q in %d writes; want %q in 2", w.Bytes(), len(w.sizes), stream)
				}
			})
		}
	}
}

// The proxy wakes a blocked read with a past deadline, looks at its flags,
// clears the deadline and reads on: here inside a long message asked for
// whole, which must come whole after the wake, with what was forwarded
// before it already written.
func TestScannerWakesOnAPastReadDeadline(t *testing.T) {
	client, proxy := net.Pipe()
	defer client.Close()
	defer proxy.Close()
	q1, long := msg(Query, "SELECT 1\x00"), msg(Query, strings.Repeat("x", 100)+"\x00")
	resume := make(chan struct{})
	go func() {
		client.Write(append(q1[:len(q1):len(q1)], long[:40]...))
		proxy.SetReadDeadline(time.Unix(1, 0))
		<-resume
		client.Write(long[40:])
		client.Close()
	}()
	w := &recorder{}
	sc := newScanner(proxy, 32, w)
	sc.Whole(Query)
	var m Message
	var err error
	for m, err = sc.Next(); err == nil; m, err = sc.Next() {
		if !bytes.Equal(m.Bytes, q1) {
			t.Fatalf("Next = %q; want %q", m.Bytes, q1)
		}
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Next = %v; want the deadline", err)
	}
	if !bytes.Equal(w.Bytes(), q1) {
		t.Fatalf("written before blocking: %q; want %q", w.Bytes(), q1)
	}
	if sc.AtBoundary() {
		t.Fatalf("AtBoundary() with part of a message read")
	}
	proxy.SetReadDeadline(time.Time{})
	close(resume)
	if m, err = sc.Next(); err != nil || !m.Whole || !bytes.Equal(m.Bytes, long) {
		t.Fatalf("Next after the wake = %q, %v; want %q", m.Bytes, err, long)
	}
	if _, err := sc.Next(); err != io.EOF || !sc.AtBoundary() || sc.Buffered() != 0 {
		t.Fatalf("Next at the end = %v, AtBoundary %v, Buffered %d; want io.EOF, clean", err, sc.AtBoundary(), sc.Buffered())
	}
	if want := append(q1, long...); !bytes.Equal(w.Bytes(), want) {
		t.Fatalf("destination got %q; want %q", w.Bytes(), want)
	}
}

// Write errors come back as *WriteError wrapping the destination's error,
// whichever call hits them.
func TestScannerReportsWriteErrors(t *testing.T) {
	errBroken := errors.New("broken pipe")
	long := msg(DataRow, strings.Repeat("x", 40))
	in := [][]byte{msg(DataRow, "a"), msg(DataRow, "b"), msg(ReadyForQuery, "I"), long, msg(ParameterStatus, strings.Repeat("p", 40))}
	tests := []struct {
		name string
		werr error
		run  func(sc *Scanner) error
	}{
		{"flushed before a read", errBroken, func(sc *Scanner) error {
			for {
				if _, err := sc.Next(); err != nil {
					return err
				}
			}
		}},
		{"flushed by Discard", errBroken, func(sc *Scanner) error {
			sc.Next()
			sc.Next()
			return sc.Discard()
		}},
		{"flushed by Write", errBroken, func(sc *Scanner) error {
			sc.Next()
			sc.Next()
			return sc.Write([]byte("x"))
		}},
		{"written by Write", errBroken, func(sc *Scanner) error {
			return sc.Write([]byte("x")) // nothing pending: its own write
		}},
		{"flushed by Flush", os.ErrDeadlineExceeded, func(sc *Scanner) error {
			sc.Next()
			sc.Next()
			return sc.Flush()
		}},
		{"streaming a long message", errBroken, func(sc *Scanner) error {
			for {
				m, err := sc.Next()
				if err != nil {
					return err
				}
				if m.Whole {
					if err := sc.Discard(); err != nil {
						return err
					}
				}
			}
		}},
		{"a message held whole", errBroken, func(sc *Scanner) error {
			for {
				m, err := sc.Next()
				if err != nil {
					return err
				}
				if m.Type != ParameterStatus {
					if err := sc.Discard(); err != nil {
						return err
					}
				}
			}
		}},
		{"short write", nil, func(sc *Scanner) error {
			sc.Next()
			return sc.Write([]byte("xy"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w io.Writer = &recorder{failAt: 1, err: tt.werr}
			if tt.werr == nil {
				w = shortWriter{}
			}
			sc := newScanner(newChunkReader("all at once", bytes.Join(in, nil), 0), 16, w)
			sc.Whole(ReadyForQuery, ParameterStatus)
			err := tt.run(sc)
			var werr *WriteError
			if !errors.As(err, &werr) {
				t.Fatalf("error = %v; want a *WriteError", err)
			}
			if want := cmp.Or(tt.werr, io.ErrShortWrite); !errors.Is(err, want) || werr.Unwrap() != want {
				t.Fatalf("error = %v; want it to wrap %v", err, want)
			}
			if !strings.HasPrefix(err.Error(), "pgwire: write: ") {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

// shortWriter writes half of what it is given, with io.ErrShortWrite.
type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, io.ErrShortWrite }

// A nil destination consumes: forwarded messages, long ones and bytes
// written go nowhere, as transaction mode reads its client.
func TestScannerNilDestinationConsumes(t *testing.T) {
	in := [][]byte{msg(Bind, "abc"), msg(CopyData, strings.Repeat("d", 50)), msg(Query, strings.Repeat("q", 50)), msg(Sync, "")}
	for _, mode := range readModes {
		t.Run(mode, func(t *testing.T) {
			sc := newScanner(newChunkReader(mode, bytes.Join(in, nil), 5), 16, nil)
			sc.Whole(Query)
			seen, err := drive(sc, func(i int) action { return [...]action{forward, injectBefore, forward, replace}[i] })
			if err != io.EOF || len(seen) != len(in) {
				t.Fatalf("drive = %d messages, %v; want %d, io.EOF", len(seen), err, len(in))
			}
			if !bytes.Equal(seen[2].Bytes, in[2]) || seen[1].Whole {
				t.Fatalf("Query %q, CopyData whole %v; want the Query whole, the CopyData streamed", seen[2].Bytes, seen[1].Whole)
			}
		})
	}
}

// A batch of messages that arrives in one read leaves in one write: the
// proxy's throughput depends on it.
func TestScannerWritesOneReadInOneWrite(t *testing.T) {
	reply := bytes.Join([][]byte{
		msg(RowDescription, "\x00\x01abalance\x00\x00\x00\x40\x03\x00\x03\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"),
		msg(DataRow, "\x00\x01\x00\x00\x00\x010"),
		msg(CommandComplete, "SELECT 1\x00"),
		msg(ReadyForQuery, "I"),
	}, nil)
	src := newChunkReader("all at once", bytes.Repeat(reply, 3), 0)
	src.next = func() int { return len(reply) }
	w := &recorder{}
	sc := newScanner(src, 8<<10, w)
	sc.Whole(ReadyForQuery, ParameterStatus, CopyInResponse, CopyBothResponse)
	if _, err := drive(sc, forwardAll); err != io.EOF {
		t.Fatalf("drive: %v", err)
	}
	if want := []int{len(reply), len(reply), len(reply)}; !slices.Equal(w.sizes, want) {
		t.Fatalf("write sizes %v; want %v: one write per read", w.sizes, want)
	}
}

// A discard or a write splits the batch where it happens, and only there.
func TestScannerSplitsTheBatchOnlyAtDiscardAndWrite(t *testing.T) {
	in := [][]byte{msg(DataRow, "a"), msg(DataRow, "b"), msg(ReadyForQuery, "I"), msg(DataRow, "c"), msg(DataRow, "d")}
	w := &recorder{}
	sc := newScanner(newChunkReader("all at once", bytes.Join(in, nil), 0), 256, w)
	_, err := drive(sc, func(i int) action { return [...]action{forward, discard, injectBefore, forward, forward}[i] })
	if err != io.EOF {
		t.Fatalf("drive: %v", err)
	}
	want := []int{len(in[0]), len(injected(2)), len(in[2]) + len(in[3]) + len(in[4])}
	if !slices.Equal(w.sizes, want) {
		t.Fatalf("write sizes %v; want %v (before the discard, the written bytes, the rest)", w.sizes, want)
	}
}

// The length checks come before the body is read or any buffer is
// allocated: a client cannot make the proxy reserve memory by declaring a
// huge message.
func TestScannerChecksLengthBeforeReadingTheBody(t *testing.T) {
	for _, mode := range readModes {
		t.Run(mode, func(t *testing.T) {
			hdr := AppendHeader(nil, Query, 1<<30)
			src := newChunkReader(mode, hdr, 0)
			sc := newScanner(io.MultiReader(src, failReader{t}), 16, io.Discard)
			sc.Whole(Query)
			sc.SetMaxBody(1 << 20)
			for range 2 {
				_, err := sc.Next()
				var tooLarge *TooLargeError
				if !errors.As(err, &tooLarge) || tooLarge.Size != 1<<30 || tooLarge.Max != 1<<20 {
					t.Fatalf("Next = %v; want a TooLargeError of 1073741824 bytes over 1048576", err)
				}
			}
			if cap(sc.big) != 0 {
				t.Fatalf("allocated %d bytes for a message over the limit", cap(sc.big))
			}
		})
	}
	if got := (&TooLargeError{Size: 70, Max: 64}).Error(); got != "pgwire: message of 70 bytes exceeds the limit of 64" {
		t.Errorf("Error() = %q", got)
	}
}

// failReader fails the test when read: the source has nothing more the
// Scanner may ask for.
type failReader struct{ t *testing.T }

func (r failReader) Read([]byte) (int, error) {
	r.t.Fatal("read past the header of a message over the limit")
	return 0, io.EOF
}

// Peek tells whether Next would return the following message whole
// without reading; Buffered counts what is buffered past the current
// message; AtBoundary is false only inside a long message.
func TestScannerPeekBufferedAtBoundary(t *testing.T) {
	p := msg(Parse, "\x00SELECT 1\x00\x00\x00")
	b := msg(Bind, "\x00\x00\x00\x00\x00\x00\x00\x00")
	s := msg(Sync, "")
	x := msg(Terminate, "")
	long := msg(CopyData, strings.Repeat("c", 40))
	big := msg(Query, strings.Repeat("q", 40))
	q := msg(Query, "SELECT 2\x00")
	stream := bytes.Join([][]byte{p, b, s, x, long, big, q}, nil)
	src := newChunkReader("all at once", stream, 0)
	// Reads stop inside Sync, then at the end of Terminate and of each
	// message after it (and wherever the 32-byte buffer is full).
	upTo := func(ms ...[]byte) int { return len(bytes.Join(ms, nil)) }
	cuts := []int{upTo(p, b) + 2, upTo(p, b, s, x), upTo(p, b, s, x, long), upTo(p, b, s, x, long, big), len(stream)}
	src.next = func() int {
		for cuts[0] <= src.pos {
			cuts = cuts[1:]
		}
		return cuts[0] - src.pos
	}
	w := &recorder{}
	sc := newScanner(src, 32, w)
	sc.Whole(Query)
	sc.SetMaxBody(100)

	type state struct {
		peek     byte
		ok       bool
		buffered int
		boundary bool
	}
	check := func(step string, want state) {
		t.Helper()
		typ, ok := sc.Peek()
		got := state{typ, ok, sc.Buffered(), sc.AtBoundary()}
		if !ok {
			got.peek = 0
		}
		if got != want {
			t.Fatalf("%s: Peek %q %v, Buffered %d, AtBoundary %v; want %q %v, %d, %v", step, got.peek, got.ok, got.buffered, got.boundary, want.peek, want.ok, want.buffered, want.boundary)
		}
	}
	next := func(want []byte, whole bool) {
		t.Helper()
		calls := src.calls
		m, err := sc.Next()
		if err != nil || !bytes.HasPrefix(want, m.Bytes) || m.Whole != whole || m.Whole && len(m.Bytes) != len(want) {
			t.Fatalf("Next = %q (whole %v), %v; want %q", m.Bytes, m.Whole, err, want)
		}
		if whole && calls == src.calls && len(want) > 32 {
			t.Fatalf("a message longer than the buffer came without a read")
		}
	}
	check("before any read", state{0, false, 0, true})
	next(p, true)
	check("at Parse", state{Bind, true, len(b) + 2, true})
	calls := src.calls
	next(b, true)
	if src.calls != calls {
		t.Fatalf("Next read although Peek said the message was buffered")
	}
	check("at Bind, Sync partly buffered", state{0, false, 2, true})
	next(s, true)
	check("at Sync", state{Terminate, true, len(x), true})
	next(x, true)
	check("at Terminate, nothing more buffered", state{0, false, 0, true})
	if err := sc.Forward(); err != nil {
		t.Fatal(err)
	}
	check("Terminate forwarded", state{0, false, 0, true})
	next(long, false)
	check("at a long CopyData", state{0, false, 0, false})
	if err := sc.Forward(); err != nil {
		t.Fatal(err)
	}
	check("the CopyData streamed", state{0, false, 0, true})
	next(big, true)
	check("at a long Query held whole", state{0, false, 0, true})
	next(q, true)
	check("at the last Query", state{0, false, 0, true})
	if _, err := sc.Next(); err != io.EOF {
		t.Fatalf("Next at the end = %v", err)
	}
	check("at the end", state{0, false, 0, true})
	if !bytes.Equal(w.Bytes(), stream) {
		t.Fatalf("destination got %q", w.Bytes())
	}
}

// Peek says no to what Next would refuse: a bad length, a body over the
// limit.
func TestScannerPeekRefusesBadHeaders(t *testing.T) {
	q := msg(Query, "SELECT 1\x00")
	for _, tt := range []struct {
		name string
		next []byte
	}{
		{"length below 4", []byte{'Q', 0, 0, 0, 3}},
		{"negative length", []byte{'Q', 0xff, 0xff, 0xff, 0xff}},
		{"over the limit", msg(Query, strings.Repeat("x", 17))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sc := newScanner(bytes.NewReader(append(q[:len(q):len(q)], tt.next...)), 64, io.Discard)
			sc.SetMaxBody(16)
			if _, err := sc.Next(); err != nil {
				t.Fatal(err)
			}
			if typ, ok := sc.Peek(); ok {
				t.Fatalf("Peek = %q, true; want false", typ)
			}
			if _, err := sc.Next(); err == nil {
				t.Fatal("Next accepted what Peek refused")
			}
		})
	}
}

// Reset swaps sources without allocating, keeps the settings and drops
// the old position.
func TestScannerResetKeepsSettings(t *testing.T) {
	sc := newScanner(bytes.NewReader(msg(CopyData, strings.Repeat("x", 40))), 16, io.Discard)
	sc.Whole(ReadyForQuery)
	sc.SetMaxBody(60)
	if m, err := sc.Next(); err != nil || m.Whole {
		t.Fatalf("Next = %v, %v; want a long CopyData", m, err)
	}
	r := bufio.NewReaderSize(bytes.NewReader(msg(ReadyForQuery, strings.Repeat("I", 61))), 16)
	if n := testing.AllocsPerRun(10, func() { sc.Reset(r, io.Discard) }); n != 0 {
		t.Fatalf("Reset allocates %v times", n)
	}
	if !sc.AtBoundary() || sc.Buffered() != 0 {
		t.Fatalf("after Reset AtBoundary %v, Buffered %d", sc.AtBoundary(), sc.Buffered())
	}
	var tooLarge *TooLargeError
	if _, err := sc.Next(); !errors.As(err, &tooLarge) {
		t.Fatalf("Next after Reset = %v; want the limit kept", err)
	}
	r = bufio.NewReaderSize(bytes.NewReader(msg(ReadyForQuery, strings.Repeat("I", 40))), 16)
	sc.Reset(r, io.Discard)
	if m, err := sc.Next(); err != nil || !m.Whole {
		t.Fatalf("Next after Reset = %v, %v; want ReadyForQuery still asked for whole", m, err)
	}
}

// Bytes written right after a long message forwarded go after its end,
// never inside it.
func TestScannerWriteAfterAStreamedMessage(t *testing.T) {
	long := msg(CopyData, strings.Repeat("x", 100))
	q := msg(Query, "SELECT 1\x00")
	for _, mode := range readModes {
		t.Run(mode, func(t *testing.T) {
			w := &recorder{}
			sc := newScanner(newChunkReader(mode, append(long[:len(long):len(long)], q...), 3), 16, w)
			for _, op := range []func() error{
				func() error { _, err := sc.Next(); return err },
				sc.Forward,
				func() error { return sc.Write([]byte("!")) },
				func() error { _, err := sc.Next(); return err },
				sc.Flush,
			} {
				if err := op(); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := sc.Next(); err != io.EOF {
				t.Fatalf("Next at the end = %v; want io.EOF", err)
			}
			if want := string(long) + "!" + string(q); w.String() != want {
				t.Fatalf("destination got %q; want %q", w.String(), want)
			}
		})
	}
}

// Steady state allocates nothing, with messages streamed through and a
// long message held whole once its buffer has grown.
func TestScannerSteadyStateDoesNotAllocate(t *testing.T) {
	long := msg(Query, strings.Repeat("x", 20<<10)+"\x00")
	copyData := msg(CopyData, strings.Repeat("y", 20<<10))
	client, _ := benchScanner(bytes.Join([][]byte{selectQuery, long, copyData, selectQuery}, nil))
	client.Whole(Query, Parse)
	server, _ := benchScanner(selectReply)
	server.Whole(ReadyForQuery)
	round := func() {
		relay(client, 4)
		relay(server, 4)
	}
	round()
	if n := testing.AllocsPerRun(100, round); n != 0 {
		t.Fatalf("%v allocations per round; want 0", n)
	}
}

func TestAppendHeader(t *testing.T) {
	tests := []struct {
		b    []byte
		typ  byte
		n    int
		want []byte
	}{
		{nil, Query, 9, []byte{'Q', 0, 0, 0, 13}},
		{[]byte("x"), Sync, 0, []byte{'x', 'S', 0, 0, 0, 4}},
		{nil, ReadyForQuery, 1, []byte{'Z', 0, 0, 0, 5}},
		{nil, CopyData, 1 << 20, []byte{'d', 0, 0x10, 0, 4}},
	}
	for _, tt := range tests {
		if got := AppendHeader(tt.b, tt.typ, tt.n); !bytes.Equal(got, tt.want) {
			t.Errorf("AppendHeader(%q, %q, %d) = %v; want %v", tt.b, tt.typ, tt.n, got, tt.want)
		}
	}
}

func TestCString(t *testing.T) {
	tests := []struct {
		in, s, rest string
		ok          bool
	}{
		{in: "abc\x00def", s: "abc", rest: "def", ok: true},
		{in: "abc\x00def\x00", s: "abc", rest: "def\x00", ok: true},
		{in: "\x00", s: "", rest: "", ok: true},
		{in: "abc", ok: false},
		{in: "", ok: false},
	}
	for _, tt := range tests {
		s, rest, ok := CString([]byte(tt.in))
		if string(s) != tt.s || string(rest) != tt.rest || ok != tt.ok {
			t.Errorf("CString(%q) = %q, %q, %v; want %q, %q, %v", tt.in, s, rest, ok, tt.s, tt.rest, tt.ok)
		}
	}
}

func TestStatement(t *testing.T) {
	tests := []struct {
		name string
		msg  []byte
		want string
	}{
		{"query", msg(Query, "SELECT 1\x00"), "SELECT 1"},
		{"query stops at its NUL", msg(Query, "SELECT 1\x00SET ROLE x\x00"), "SELECT 1"},
		{"query without NUL is taken whole", msg(Query, "SET ROLE x"), "SET ROLE x"},
		{"empty query", msg(Query, "\x00"), ""},
		{"unnamed parse", msg(Parse, "\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"), "SELECT $1"},
		{"named parse", msg(Parse, "s1\x00SET ROLE x\x00\x00\x00"), "SET ROLE x"},
		{"parse with unterminated name keeps everything", msg(Parse, "s1SET ROLE x"), "s1SET ROLE x"},
		{"parse with unterminated query", msg(Parse, "s1\x00SET ROLE x"), "SET ROLE x"},
		{"header only", msg(Query, ""), ""},
	}
	for _, tt := range tests {
		if got := Statement(tt.msg); string(got) != tt.want {
			t.Errorf("%s: Statement = %q; want %q", tt.name, got, tt.want)
		}
	}
}
