package pgwire

import (
	"bufio"
	"bytes"
	"testing"
)

// loopReader yields b over and over, one copy of b per read when the
// reader's buffer has room: a peer that answers each round trip in one
// write.
type loopReader struct {
	b   []byte
	off int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.off:])
	r.off = (r.off + n) % len(r.b)
	return n, nil
}

// countWriter counts the writes it is given.
type countWriter struct{ bytes, writes int }

func (w *countWriter) Write(p []byte) (int, error) {
	w.bytes += len(p)
	w.writes++
	return len(p), nil
}

// One exchange of pgbench -S -M simple: the client's Query and the
// server's reply.
var (
	selectQuery = msg(Query, "SELECT abalance FROM pgbench_accounts WHERE aid = 48217;\x00")
	selectReply = bytes.Join([][]byte{
		msg(RowDescription, "\x00\x01abalance\x00\x00\x00\x40\x03\x00\x03\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"),
		msg(DataRow, "\x00\x01\x00\x00\x00\x04-217"),
		msg(CommandComplete, "SELECT 1\x00"),
		msg(ReadyForQuery, "I"),
	}, nil)
)

// benchScanner returns a Scanner with an 8 KiB read buffer, as the relay
// loops use, over a source that repeats exchange.
func benchScanner(exchange []byte) (*Scanner, *countWriter) {
	w := &countWriter{}
	sc := new(Scanner)
	sc.Reset(bufio.NewReaderSize(&loopReader{b: exchange}, 8<<10), w)
	return sc, w
}

// relay forwards n messages as the relay loops do, looking at what they
// look at: the statement of a Query or Parse, the status of a
// ReadyForQuery.
func relay(sc *Scanner, n int) (seen int) {
	for range n {
		m, err := sc.Next()
		if err != nil {
			panic(err)
		}
		switch m.Type {
		case Query, Parse:
			seen += len(Statement(m.Bytes))
		case ReadyForQuery:
			seen += int(m.Body()[0])
		}
	}
	return seen
}

// BenchmarkScannerForward relays pgbench -S exchanges through Scanners
// configured as the relay loops configure them (client: Query and Parse
// whole, a body limit; server: ReadyForQuery, ParameterStatus,
// CopyInResponse and CopyBothResponse whole). One op is one exchange:
// each direction's messages arrive in one read and must leave in one
// write (writes/op counts the writes of both directions).
//
//	go test -run XXX -bench ScannerForward -benchmem -count 3 ./internal/pgwire
//
// On the shared 2-core box (AMD EPYC, Go 1.26.8, linux/amd64, load
// average ~3 from other work), the three runs:
//
//	client-query   40.5 / 40.5 / 40.8 ns/op  ~1530 MB/s  1 writes/op  0 B/op  0 allocs/op
//	server-reply   85.5 / 88.7 / 83.8 ns/op   ~800 MB/s  1 writes/op  0 B/op  0 allocs/op
//	exchange      127.3 / 132.4 / 130.2 ns/op ~1000 MB/s  2 writes/op  0 B/op  0 allocs/op
//
// client-query is one Query (its statement looked at), server-reply four
// messages (RowDescription, DataRow, CommandComplete, ReadyForQuery, its
// status read): ~20 ns a message, ~0.13 µs per transaction for both
// directions.
func BenchmarkScannerForward(b *testing.B) {
	client := func() *Scanner {
		sc, _ := benchScanner(selectQuery)
		sc.Whole(Query, Parse)
		sc.SetMaxBody(64 << 20)
		return sc
	}
	server := func() *Scanner {
		sc, _ := benchScanner(selectReply)
		sc.Whole(ReadyForQuery, ParameterStatus, CopyInResponse, CopyBothResponse)
		return sc
	}
	b.Run("client-query", func(b *testing.B) {
		c := client()
		runBench(b, len(selectQuery), func() { relay(c, 1) }, c)
	})
	b.Run("server-reply", func(b *testing.B) {
		s := server()
		runBench(b, len(selectReply), func() { relay(s, 4) }, s)
	})
	b.Run("exchange", func(b *testing.B) {
		c, s := client(), server()
		runBench(b, len(selectQuery)+len(selectReply), func() { relay(c, 1); relay(s, 4) }, c, s)
	})
}

// runBench runs op b.N times and reports the writes the Scanners made per
// op.
func runBench(b *testing.B, size int, op func(), scs ...*Scanner) {
	b.SetBytes(int64(size))
	b.ReportAllocs()
	op()
	writes := func() (n int) {
		for _, sc := range scs {
			n += sc.w.(*countWriter).writes
		}
		return n
	}
	before := writes()
	b.ResetTimer()
	for b.Loop() {
		op()
	}
	b.ReportMetric(float64(writes()-before)/float64(b.N), "writes/op")
}
