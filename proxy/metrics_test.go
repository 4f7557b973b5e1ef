package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMeteredConnCountsBothWaysAndStaysTLS: a metered client connection
// counts what is read and written, and the console still sees a TLS
// client through it.
func TestMeteredConnCountsBothWaysAndStaysTLS(t *testing.T) {
	proxySide, clientSide := net.Pipe()
	defer clientSide.Close()
	times := unregisteredTimes("acme")
	m := &meteredConn{Conn: proxySide, received: times.tally(countReceived), sent: times.tally(countSent)}
	go func() {
		clientSide.Write([]byte("hello"))
		io.ReadFull(clientSide, make([]byte, 3))
	}()
	if _, err := io.ReadFull(m, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	series := times.series.Load()
	if in, out := testutil.ToFloat64(series.counters[countReceived]), testutil.ToFloat64(series.counters[countSent]); in != 5 || out != 3 {
		t.Fatalf("counted %v bytes in and %v out; want 5 and 3", in, out)
	}
	m.Conn = tls.Server(proxySide, &tls.Config{})
	if cl := clientOf(m, "alice", "acme", time.Now(), 1); !cl.TLS {
		t.Fatal("a metered TLS client is listed without TLS")
	}
}
