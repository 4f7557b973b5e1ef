package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/pool"
)

// TestPeerKeysCarryThePeerID: with a peer id every key handed out names
// it, its pid is positive as an int32, and the rest stays random: over
// many keys every random bit of the pid and secret takes both values.
func TestPeerKeysCarryThePeerID(t *testing.T) {
	for _, id := range []int{1, 2, 77, MaxPeerID} {
		k := newCancelKeys(id)
		p := newPeering(id, map[int]string{id: "127.0.0.1:1"})
		var ones, zeros uint64
		for range 200 {
			pid, secret := k.add(pool.Target{}, "acme", nil)
			if got := peerOfPID(pid); got != id {
				t.Fatalf("peer %d: pid %#x names peer %d", id, pid, got)
			}
			if int32(pid) <= 0 {
				t.Fatalf("peer %d: pid %d is not positive", id, int32(pid))
			}
			if p.elsewhere(pid) {
				t.Fatalf("peer %d: its own key %#x would be forwarded", id, pid)
			}
			r := uint64(pid&(1<<pidRandomBits-1))<<32 | uint64(secret[0])<<24 | uint64(secret[1])<<16 | uint64(secret[2])<<8 | uint64(secret[3])
			ones |= r
			zeros |= ^r
		}
		const random = 1<<(pidRandomBits+32) - 1
		if ones&random != random || zeros&random != random {
			t.Errorf("peer %d: random bits stuck: ones %#x zeros %#x", id, ones&random, zeros&random)
		}
	}
}

// TestPeeringForwardsOnlyOtherPeersKeys: without a peer id nothing is
// forwarded; with one, keys naming another id (or no peer at all: the top
// bit of a key from an instance without peering) are.
func TestPeeringForwardsOnlyOtherPeersKeys(t *testing.T) {
	var none *peering
	if none.elsewhere(peerKeyPID(2, 5)) {
		t.Error("without peering a key was taken for another peer's")
	}
	p := newPeering(1, map[int]string{2: "127.0.0.1:1"})
	for _, c := range []struct {
		pid  uint32
		want bool
	}{
		{peerKeyPID(1, 12345), false},
		{peerKeyPID(2, 12345), true},
		{peerKeyPID(3, 12345), true},
		{0x80000001, true},
	} {
		if got := p.elsewhere(c.pid); got != c.want {
			t.Errorf("pid %#x: elsewhere %v; want %v", c.pid, got, c.want)
		}
	}
}

// TestConfigRejectsBadPeers: ids out of range, peers without an id of
// our own and addresses without a port are configuration errors.
func TestConfigRejectsBadPeers(t *testing.T) {
	for _, c := range []Config{
		{PeerID: -1},
		{PeerID: MaxPeerID + 1},
		{Peers: map[int]string{2: "127.0.0.1:6432"}},
		{PeerID: 1, Peers: map[int]string{0: "127.0.0.1:6432"}},
		{PeerID: 1, Peers: map[int]string{2: "no-port"}},
	} {
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("PeerID %d, Peers %v: accepted", c.PeerID, c.Peers)
		}
	}
	if _, err := (Config{PeerID: 1, Peers: map[int]string{1: "a:1", 2: "b:2"}}).withDefaults(); err != nil {
		t.Errorf("a valid peering: %v", err)
	}
}

// TestPeerForwardsAreCapped: a peer that holds every forwarded request
// open gets maxPeerForwards of them and no more: the next is dropped at
// once, without a connection. Each arrives as the client sent it.
func TestPeerForwardsAreCapped(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 2*maxPeerForwards)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	p := newPeering(1, map[int]string{2: l.Addr().String()})
	pid, secret := peerKeyPID(2, 12345), []byte{1, 2, 3, 4}
	forward := func() { p.forward(context.Background(), pid, secret, 10*time.Second, zap.NewNop()) }
	var wg sync.WaitGroup
	for range maxPeerForwards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			forward()
		}()
	}
	var held []net.Conn
	for range maxPeerForwards {
		select {
		case c := <-accepted:
			held = append(held, c)
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d forwards reached the peer", len(held), maxPeerForwards)
		}
	}
	start := time.Now()
	forward()
	if took := time.Since(start); took > time.Second {
		t.Errorf("a forward over the cap took %s; want it dropped at once", took)
	}
	select {
	case <-accepted:
		t.Error("a forward over the cap reached the peer")
	case <-time.After(200 * time.Millisecond):
	}
	want := binary.BigEndian.AppendUint32([]byte{0, 0, 0, 16, 4, 210, 22, 46}, pid)
	want = append(want, secret...)
	for _, c := range held {
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
			t.Errorf("peer read % x (%v); want % x", got, err, want)
		}
		c.Close()
	}
	wg.Wait()
}
