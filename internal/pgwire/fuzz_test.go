package pgwire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// fuzzConfig is a Scanner set-up drawn from the fuzz input's cfg.
type fuzzConfig struct {
	backend bool
	whole   int // 0: none asked for whole; 1 or 3: the direction's set; 2: all
	size    int // read buffer, at least bufio's minimum of 16
	max     int // SetMaxBody: the frontend always has one, the backend none
	faults  bool
	seed    uint64
}

// configOf decodes cfg: bit 0 backend, bits 1-2 whole, bits 3-10 the
// buffer size past 16, bits 11-12 the frontend's body limit, bit 13
// faults (read errors before some bytes), the rest a seed.
func configOf(cfg uint32) fuzzConfig {
	c := fuzzConfig{
		backend: cfg&1 != 0,
		whole:   int(cfg >> 1 & 3),
		size:    16 + int(cfg>>3&0xff),
		faults:  cfg>>13&1 != 0,
		seed:    uint64(cfg >> 14),
	}
	if !c.backend {
		c.max = [...]int{1 << 16, 32, 300, 4096}[cfg>>11&3]
	}
	return c
}

// wholeTypes is what the relay loops ask for whole: Query and Parse from
// the client (the policy reads them), ReadyForQuery, ParameterStatus and
// the COPY responses from the server (transaction mode reads them).
var wholeTypes = [2][]byte{{Query, Parse}, {ReadyForQuery, ParameterStatus, CopyInResponse, CopyBothResponse}}

func (c fuzzConfig) wantsWhole(typ byte) bool {
	switch c.whole {
	case 0:
		return false
	case 2:
		return true
	}
	i := 0
	if c.backend {
		i = 1
	}
	return bytes.IndexByte(wholeTypes[i], typ) >= 0
}

// How a reference framing of a stream ends.
const (
	endClean     = iota // after the last whole message
	endTruncated        // inside a header or a message
	endInvalid          // at a length word below 4 (as a signed Int32)
	endTooLarge         // at a body over the limit
)

// frameRef is the reference framer: the whole messages of stream, how
// the stream ends, and for a truncated message whose header is complete
// (partial), its bytes and declared size; for endTooLarge, the body size.
func frameRef(stream []byte, maxBody int) (msgs [][]byte, end int, partial []byte, size int) {
	for len(stream) > 0 {
		if len(stream) < HeaderSize {
			return msgs, endTruncated, nil, 0
		}
		n := int64(int32(binary.BigEndian.Uint32(stream[1:HeaderSize])))
		switch {
		case n < 4:
			return msgs, endInvalid, nil, 0
		case maxBody > 0 && n-4 > int64(maxBody):
			return msgs, endTooLarge, nil, int(n - 4)
		case n+1 > int64(len(stream)):
			return msgs, endTruncated, stream, int(n + 1)
		}
		msgs = append(msgs, stream[:n+1])
		stream = stream[n+1:]
	}
	return msgs, endClean, nil, 0
}

// FuzzScanner checks both directions' configurations, under any cutting
// of the source into reads and read errors anywhere, with forward,
// discard and write decisions taken from the input: the destination
// receives exactly the source stream with the discarded messages removed
// and the written bytes at their places; Next returns the messages the
// reference framer finds, whole when asked for or when they fit the
// buffer; an invalid stream ends in the error the reference predicts,
// never a panic or hang; after a read error Next resumes, and
// AtBoundary() && Buffered() == 0 is true exactly when the source is at a
// message boundary with nothing buffered; Peek is true exactly when Next
// returns the following message whole without reading; with Buffers
// (whose Get fails at random, like a wake) every buffer lent is given
// back, one at a time, and without them the Scanner keeps none over
// MaxRetained.
//
// cfg picks the configuration (configOf), stream is the source, and
// decisions[i%len] decides message i: bits 0-1 the action (forward,
// discard, write then forward, discard then write), bit 2 a Flush after
// it, bit 3 on a read error in Forward or Discard leave it to Next to
// finish rather than call it again, bit 4 a Write after it, bit 5 Peek
// before Next, bit 6 no Forward call (the next Next forwards; a Write
// after then goes in front of the message).
func FuzzScanner(f *testing.F) {
	q := msg(Query, "SELECT 1\x00")
	z := msg(ReadyForQuery, "I")
	join := func(ms ...[]byte) []byte { return bytes.Join(ms, nil) }
	f.Add(uint32(0), []byte{0}, q)
	f.Add(uint32(2), []byte{0, 1, 2, 3}, join(q, msg(Parse, "\x00SELECT $1\x00\x00\x00"), msg(Bind, "\x00\x00\x00\x00\x00\x00\x00\x00"), msg(Sync, "")))
	f.Add(uint32(3), []byte{8, 12, 2, 0x20}, join(msg(DataRow, "\x00\x01\x00\x00\x00\x010"), msg(CommandComplete, "SELECT 1\x00"), z))
	f.Add(uint32(2|1<<13), []byte{3, 4, 0x48, 0x10}, join(q, msg(Query, strings.Repeat("x", 300)+"\x00"), q))
	f.Add(uint32(1<<3|1<<13|5<<14), []byte{0x10, 0x12, 0x09, 0x41}, join(msg(CopyData, strings.Repeat("d", 1000)), msg(CopyDone, ""), q))
	f.Add(uint32(3|1<<13), []byte{1, 0x19, 0x22}, join(msg(ParameterStatus, "a\x00"+strings.Repeat("b", 100)+"\x00"), msg(CopyInResponse, "\x00\x00\x00"), msg(DataRow, strings.Repeat("r", 90)), z))
	f.Add(uint32(5), []byte{0x40}, join(q, []byte{'Q', 0, 0, 0, 3}))
	f.Add(uint32(1), []byte{}, join(z, []byte{'Z', 0x80, 0, 0, 5}))
	f.Add(uint32(1<<11), []byte{}, join(q, msg(Query, strings.Repeat("y", 40))))
	f.Add(uint32(0), []byte{}, q[:7])
	f.Add(uint32(1|1<<13), []byte{0x61}, join(z, msg(DataRow, strings.Repeat("t", 60))[:40]))
	f.Fuzz(func(t *testing.T, cfg uint32, decisions, stream []byte) {
		checkScanner(t, configOf(cfg), decisions, stream)
	})
}

// injectedAfter is what the fuzz test writes after message i.
func injectedAfter(i int) []byte { return msg('~', strconv.Itoa(i)) }

func checkScanner(t *testing.T, c fuzzConfig, decisions, stream []byte) {
	msgs, end, partial, partialSize := frameRef(stream, c.max)
	// Next returns a truncated last message only when it streams.
	returnsPartial := partial != nil && partialSize > c.size && !c.wantsWhole(partial[0])
	if partial != nil && c.max == 0 && partialSize > c.size && !returnsPartial && partialSize > 1<<20 {
		// Unbounded, a message asked for whole is allocated at the
		// size it declares, up to 2 GiB: not what a fuzz run should do.
		t.Skip("a message asked for whole over 1 MiB without a limit")
	}
	boundaries := map[int]bool{0: true}
	off := 0
	for _, m := range msgs {
		off += len(m)
		boundaries[off] = true
	}

	rng := rand.New(rand.NewPCG(c.seed, uint64(len(stream))))
	src := &chunkReader{b: stream, next: func() int { return 1 + rng.IntN(2*c.size) }}
	if c.faults {
		for off := range len(stream) + 1 {
			if rng.IntN(4) == 0 {
				src.stops = append(src.stops, off)
			}
		}
	}
	br := bufio.NewReaderSize(src, c.size)
	if rng.IntN(2) == 0 {
		br.Peek(rng.IntN(c.size)) // bytes already buffered at Reset
	}
	var w *recorder
	sc := new(Scanner)
	if rng.IntN(8) == 0 {
		sc.Reset(br, nil) // consumes, as transaction mode reads its client
	} else {
		w = &recorder{}
		sc.Reset(br, w)
	}
	sc.SetMaxBody(c.max)
	switch c.whole {
	case 1, 3:
		sc.Whole(wholeTypes[btoi(c.backend)]...)
	case 2:
		sc.WholeAll()
	}
	var l *lender
	if rng.IntN(2) == 0 {
		// A Get that fails is retried like a wake.
		l = &lender{fail: func() bool { return rng.IntN(4) == 0 }}
		sc.SetBuffers(l)
	}

	clean := func() bool { return sc.AtBoundary() && sc.Buffered() == 0 }
	woken := func() {
		if got, want := clean(), boundaries[src.pos] && br.Buffered() == 0; got != want {
			t.Fatalf("woken at offset %d with %d buffered: AtBoundary() %v, Buffered() %d; want clean %v", src.pos, br.Buffered(), sc.AtBoundary(), sc.Buffered(), want)
		}
	}
	decision := func(i int) byte {
		if len(decisions) == 0 {
			return 0
		}
		return decisions[i%len(decisions)]
	}
	// want is what the destination must get, built from the reference
	// messages and what was done with them.
	var want []byte
	var err error
	for i := 0; ; i++ {
		if i > len(stream) {
			t.Fatalf("%d messages out of %d bytes", i, len(stream))
		}
		d := decision(i)
		peekType, peekOK := sc.Peek()
		calls := src.calls
		var m Message
		err = retry(func() (err error) { m, err = sc.Next(); return err }, woken)
		if d&32 != 0 {
			got := err == nil && m.Whole && src.calls == calls
			if got != peekOK || peekOK && m.Type != peekType {
				t.Fatalf("Peek() = %q, %v before message %d; Next = %q (whole %v), %v after %d reads", peekType, peekOK, i, m.Type, m.Whole, err, src.calls-calls)
			}
		}
		if err != nil {
			break
		}
		var ref []byte
		switch {
		case i < len(msgs):
			ref = msgs[i]
		case i == len(msgs) && returnsPartial:
			ref = partial
		default:
			t.Fatalf("Next returned message %d %q; the reference framer finds %d", i, m.Bytes, len(msgs))
		}
		size := int(binary.BigEndian.Uint32(ref[1:HeaderSize])) + 1
		if m.Type != ref[0] || m.Len != size-HeaderSize || !bytes.HasPrefix(ref, m.Bytes) || len(m.Bytes) < HeaderSize {
			t.Fatalf("message %d = %q (type %q, Len %d); want %q", i, m.Bytes, m.Type, m.Len, ref[:min(len(ref), 64)])
		}
		if m.Whole != (len(m.Bytes) == size) || !m.Whole && (size <= c.size || c.wantsWhole(m.Type)) {
			t.Fatalf("message %d (%q, %d bytes, buffer %d): whole %v with %d bytes", i, m.Type, size, c.size, m.Whole, len(m.Bytes))
		}

		// Carry out the decision; pre is written in front of the
		// message, post after it.
		var pre, post []byte
		kept, interrupted := true, false
		decide := func(op func() error) {
			err = op()
			if errors.Is(err, errWake) {
				woken()
				if d&8 != 0 {
					err, interrupted = nil, true // Next finishes it
					return
				}
				err = retry(op, woken)
			}
		}
		write := func(b []byte, before bool) {
			if err = sc.Write(b); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if before {
				pre = append(pre, b...)
			} else {
				post = append(post, b...)
			}
		}
		implicit := d&64 != 0
		switch action(d & 3) {
		case forward, injectBefore:
			if action(d&3) == injectBefore {
				write(injected(i), true)
			}
			if !implicit {
				decide(sc.Forward)
			}
		case discard, replace:
			kept, implicit = false, false
			decide(sc.Discard)
			if action(d&3) == replace && err == nil && !interrupted {
				write(injected(i), false)
			}
		}
		if err == nil && !interrupted && d&16 != 0 {
			write(injectedAfter(i), implicit) // undecided: in front
		}
		if err == nil && d&4 != 0 {
			if err = sc.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
		}
		want = append(want, pre...)
		if kept {
			want = append(want, ref...)
		}
		want = append(want, post...)
		if err != nil {
			break
		}
	}
	if ferr := sc.Flush(); ferr != nil {
		t.Fatalf("final Flush: %v", ferr)
	}

	if w != nil && !bytes.Equal(w.Bytes(), want) {
		t.Fatalf("destination got\n%q\nwant\n%q", w.Bytes(), want)
	}
	switch end {
	case endClean:
		if err != io.EOF || !clean() {
			t.Fatalf("ended with %v, clean %v; want io.EOF at a boundary", err, clean())
		}
	case endTruncated:
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) || clean() {
			t.Fatalf("truncated stream ended with %v, clean %v; want EOF, not clean", err, clean())
		}
	case endInvalid:
		if !errors.Is(err, ErrInvalidLength) {
			t.Fatalf("ended with %v; want ErrInvalidLength", err)
		}
	case endTooLarge:
		var tooLarge *TooLargeError
		if !errors.As(err, &tooLarge) || tooLarge.Size != partialSize || tooLarge.Max != c.max {
			t.Fatalf("ended with %v; want a TooLargeError of %d over %d", err, partialSize, c.max)
		}
	}
	sc.Release()
	if l != nil {
		l.check(t)
	} else if cap(sc.big) > MaxRetained {
		t.Fatalf("the Scanner keeps a buffer of %d bytes; want at most %d", cap(sc.big), MaxRetained)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
