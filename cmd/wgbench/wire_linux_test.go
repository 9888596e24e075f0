package main

import (
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWireCapture captures a real exchange on the loopback interface:
// one side answers the other at once, the other waits before it sends
// again, and the split must show which waited. Datagrams between two
// other ports, sent meanwhile, must not be captured.
func TestWireCapture(t *testing.T) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b, x, y := listen(), listen(), listen(), listen()
	bPort := uint16(b.LocalAddr().(*net.UDPAddr).Port)
	c, err := startWire(bPort)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EAFNOSUPPORT) {
		t.Skipf("no packet socket for this run: %v", err)
	}
	if err != nil {
		t.Fatalf("startWire: %v", err)
	}
	t.Cleanup(func() { c.stop() })
	done := make(chan struct{})
	go func() { // b echoes at once
		defer close(done)
		buf := make([]byte, 16)
		for {
			n, from, err := b.ReadFromUDP(buf)
			if err != nil {
				return
			}
			b.WriteToUDP(buf[:n], from)
		}
	}()
	buf := make([]byte, 16)
	a.SetDeadline(time.Now().Add(5 * time.Second))
	for range 20 {
		if _, err := a.WriteToUDP([]byte{1}, b.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.ReadFromUDP(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := x.WriteToUDP([]byte{2}, y.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Millisecond)
	}
	pkts, err := c.stop()
	b.Close()
	<-done
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	for _, p := range pkts {
		if p.src != bPort && p.dst != bPort {
			t.Fatalf("captured a datagram from %d to %d: the filter lets other ports through", p.src, p.dst)
		}
	}
	client, peer := wireSplit(pkts, bPort)
	if len(client) < 15 || len(peer) < 15 {
		t.Fatalf("split %d client and %d peer answers out of %d datagrams, want about 20 each", len(client), len(peer), len(pkts))
	}
	if p50(client) < 3*time.Millisecond || p50(peer) >= 3*time.Millisecond {
		t.Fatalf("client side answered in %v and the peer in %v: the client side waited 3ms each time, the peer not at all", p50(client), p50(peer))
	}
}
