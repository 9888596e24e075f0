package netstack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/netstack/inbound"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// udpTaker is an interceptor that takes every UDP flow and hands its
// connection to the test.
type udpTaker struct {
	admitted atomic.Int32
	flows    chan net.Conn
}

func (u *udpTaker) AdmitFlow(f inbound.Flow) bool {
	if f.Network != "udp" {
		return false
	}
	u.admitted.Add(1)
	return true
}
func (u *udpTaker) HandleTCP(inbound.Flow, func() (net.Conn, error)) {}
func (u *udpTaker) HandleUDP(_ inbound.Flow, accept func() (net.Conn, error)) {
	if c, err := accept(); err == nil {
		u.flows <- c
	}
}
func (u *udpTaker) HandleEcho(inbound.EchoRequest) bool { return false }
func (u *udpTaker) Stop()                               {}
func (u *udpTaker) Close() error                        { return nil }

// flowSetup is our Net in server mode, with a udpTaker, and a
// wireguard-go client that routes everything to it.
type flowSetup struct {
	n      *Net
	taker  *udpTaker
	client *peersite.Client
}

func startFlowSetup(t testing.TB) *flowSetup {
	t.Helper()
	ours, _ := protocol.GeneratePrivateKey()
	clientKey, _ := protocol.GeneratePrivateKey()
	n, err := Open(context.Background(), Config{
		PrivateKey:  ours,
		Addresses:   []netip.Prefix{netip.PrefixFrom(peersite.OurV4, 32), netip.PrefixFrom(peersite.OurV6, 128)},
		ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Peers: []protocol.PeerConfig{{PublicKey: clientKey.PublicKey(),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(peersite.TheirV4, 32), netip.PrefixFrom(peersite.TheirV6, 128)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	s := &flowSetup{n: n, taker: &udpTaker{flows: make(chan net.Conn, 16)}}
	if err := n.Intercept(s.taker); err != nil {
		t.Fatal(err)
	}
	s.client = peersite.StartClient(t, ours.PublicKey(), peersite.Options{
		PrivateKey: clientKey,
		Endpoint:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.LocalPort()).String(),
	})
	return s
}

// dial connects the client to dst; datagrams from any other address or
// port do not reach the connection.
func (s *flowSetup) dial(t testing.TB, dst netip.AddrPort) net.Conn {
	t.Helper()
	c, err := s.client.DialContext(context.Background(), "udp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// emptyFlow opens an IPv4 flow and reads what it queued, so that the
// next Read waits.
func (s *flowSetup) emptyFlow(t testing.TB) net.Conn {
	fc := s.firstFlow(t, s.dial(t, flowDst4), []byte("x"))
	buf := make([]byte, 10)
	for {
		if _, wouldBlock, err := fc.(*flowConn).TryRead(buf); wouldBlock || err != nil {
			return fc
		}
	}
}

// firstFlow sends msg on c until the flow it opens is handed over (the
// first datagrams may be lost before the handshake), and returns the
// flow's connection.
func (s *flowSetup) firstFlow(t testing.TB, c net.Conn, msg []byte) net.Conn {
	t.Helper()
	for try := 0; try < 20; try++ {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		select {
		case fc := <-s.taker.flows:
			t.Cleanup(func() { fc.Close() })
			return fc
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Fatal("no flow was handed over")
	return nil
}

// readWithin reads one datagram from c, waiting at most d.
func readWithin(c net.Conn, buf []byte, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(buf)
	return buf[:n], err
}

var (
	flowDst4 = netip.MustParseAddrPort("198.51.100.7:5300")
	flowDst6 = netip.MustParseAddrPort("[2001:db8::7]:5300")
)

// TestUDPFlowLaterDatagrams: a flow's later datagrams reach the
// connection its first opened, in order, without asking the interceptor
// again.
func TestUDPFlowLaterDatagrams(t *testing.T) {
	s := startFlowSetup(t)
	c := s.dial(t, flowDst4)
	fc := s.firstFlow(t, c, []byte("first"))
	for _, m := range []string{"second", "third"} {
		if _, err := c.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	// Retries of the first datagram may come ahead of the others.
	buf := make([]byte, 100)
	var got []string
	for len(got) < 2 {
		b, err := readWithin(fc, buf, 5*time.Second)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		if string(b) != "first" {
			got = append(got, string(b))
		}
	}
	if got[0] != "second" || got[1] != "third" {
		t.Fatalf("the flow's connection read %q, want second, third", got)
	}
	if a := s.taker.admitted.Load(); a != 1 {
		t.Errorf("the interceptor was asked about %d flows, want 1", a)
	}
	select {
	case other := <-s.taker.flows:
		t.Errorf("a second flow %v was handed over", other.LocalAddr())
	default:
	}
}

// TestUDPFlowReplies: what the flow's connection writes reaches the
// peer from the address and port it wrote to (the client's connected
// socket takes nothing else), over IPv4 and IPv6, including a reply
// larger than the tunnel's MTU, which goes in fragments; and a datagram
// from the peer that came in fragments is read whole.
func TestUDPFlowReplies(t *testing.T) {
	s := startFlowSetup(t)
	for _, dst := range []netip.AddrPort{flowDst4, flowDst6} {
		t.Run(dst.Addr().String(), func(t *testing.T) {
			c := s.dial(t, dst)
			fc := s.firstFlow(t, c, []byte("ask"))
			if got := fc.LocalAddr().(*net.UDPAddr).AddrPort(); got != dst {
				t.Errorf("LocalAddr %v, want %v", got, dst)
			}
			if got, want := fc.RemoteAddr().(*net.UDPAddr).AddrPort(), c.LocalAddr().(*net.UDPAddr).AddrPort(); got != want {
				t.Errorf("RemoteAddr %v, want the client's %v", got, want)
			}
			buf := make([]byte, 10000)
			// A datagram larger than the MTU comes in fragments, which
			// the stack reassembles, and reads whole.
			big := peersite.Body(4000)
			if _, err := c.Write(big); err != nil {
				t.Fatal(err)
			}
			for {
				got, err := readWithin(fc, buf, 5*time.Second)
				if err != nil {
					t.Fatalf("a datagram of %d bytes from the peer: %v", len(big), err)
				}
				if string(got) != "ask" { // a retry of the first
					if !bytes.Equal(got, big) {
						t.Fatalf("a datagram of %d bytes from the peer came as %d bytes", len(big), len(got))
					}
					break
				}
			}
			for _, size := range []int{4, 1200, 4000} {
				reply := peersite.Body(size)
				if _, err := fc.Write(reply); err != nil {
					t.Fatal(err)
				}
				got, err := readWithin(c, buf, 5*time.Second)
				if err != nil {
					t.Fatalf("a reply of %d bytes: %v", size, err)
				}
				if !bytes.Equal(got, reply) {
					t.Fatalf("a reply of %d bytes came as %d bytes", size, len(got))
				}
			}
		})
	}
}

// queuedLen is how many datagrams and bytes fc holds unread.
func queuedLen(fc net.Conn) (n, size int) {
	c := fc.(*flowConn)
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue) - c.head, c.queued
}

// TestUDPFlowQueueBound: a flow nobody reads holds at most so many
// datagrams, and so many bytes; the rest are dropped and counted.
func TestUDPFlowQueueBound(t *testing.T) {
	s := startFlowSetup(t)
	stats := s.n.stack.Stats().UDP
	for _, tc := range []struct {
		name       string
		dst        netip.AddrPort
		size, sent int
	}{
		{"count", flowDst4, 1, flowQueueDatagrams + 50},
		{"bytes", netip.AddrPortFrom(flowDst4.Addr(), flowDst4.Port()+1), 1400, flowQueueBytes/1400 + 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := s.dial(t, tc.dst)
			msg := peersite.Body(tc.size)
			fc := s.firstFlow(t, c, msg)
			// Empty the queue of the first datagram and any retries.
			buf := make([]byte, 2000)
			for {
				if _, wouldBlock, err := fc.(*flowConn).TryRead(buf); wouldBlock || err != nil {
					break
				}
			}
			received0, dropped0 := stats.PacketsReceived.Value(), stats.ReceiveBufferErrors.Value()
			for range tc.sent {
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
			}
			arrived := func() uint64 {
				return stats.PacketsReceived.Value() - received0 + stats.ReceiveBufferErrors.Value() - dropped0
			}
			wgtest.WaitFor(t, 10*time.Second, "the datagrams to arrive", func() bool { return arrived() == uint64(tc.sent) })
			n, size := queuedLen(fc)
			dropped := stats.ReceiveBufferErrors.Value() - dropped0
			t.Logf("%d datagrams of %d bytes: %d queued (%d bytes), %d dropped", tc.sent, tc.size, n, size, dropped)
			if n > flowQueueDatagrams || size >= flowQueueBytes+tc.size {
				t.Errorf("%d datagrams (%d bytes) queued, over the bounds of %d datagrams and %d bytes", n, size, flowQueueDatagrams, flowQueueBytes)
			}
			if n != flowQueueDatagrams && size < flowQueueBytes {
				t.Errorf("%d datagrams (%d bytes) queued; the queue should be full", n, size)
			}
			if dropped != uint64(tc.sent-n) {
				t.Errorf("%d dropped, want the %d that did not fit", dropped, tc.sent-n)
			}
			read := 0
			for {
				k, wouldBlock, err := fc.(*flowConn).TryRead(buf)
				if wouldBlock || err != nil {
					break
				}
				if k != tc.size {
					t.Fatalf("read a datagram of %d bytes, want %d", k, tc.size)
				}
				read++
			}
			if read != n {
				t.Errorf("read %d datagrams of the %d queued", read, n)
			}
		})
	}
}

// TestUDPFlowClose: a closed flow's connection reads io.EOF, and is
// gone from the table, so the flow's next datagram is a new flow,
// which the interceptor is asked about and gets a connection of its own.
func TestUDPFlowClose(t *testing.T) {
	s := startFlowSetup(t)
	c := s.dial(t, flowDst6)
	fc := s.firstFlow(t, c, []byte("one"))
	fc.Close()
	if _, _, err := fc.(*flowConn).TryRead(make([]byte, 10)); err != io.EOF {
		t.Errorf("TryRead after Close: %v, want io.EOF", err)
	}
	admitted := s.taker.admitted.Load()
	if _, err := c.Write([]byte("two")); err != nil {
		t.Fatal(err)
	}
	var again net.Conn
	select {
	case again = <-s.taker.flows:
		defer again.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the datagram after Close did not open a new flow")
	}
	if again == fc {
		t.Fatal("the closed flow was handed over again")
	}
	if a := s.taker.admitted.Load(); a != admitted+1 {
		t.Errorf("the interceptor was asked about %d more flows, want 1", a-admitted)
	}
	got, err := readWithin(again, make([]byte, 10), 5*time.Second)
	if err != nil || string(got) != "two" {
		t.Fatalf("the new flow read %q, %v; want two", got, err)
	}
}

// TestUDPFlowNetClose: closing the Net ends the flows: a Read that waits
// returns, and the next reads fail.
func TestUDPFlowNetClose(t *testing.T) {
	s := startFlowSetup(t)
	fc := s.emptyFlow(t)
	buf := make([]byte, 10)
	done := make(chan error, 1)
	go func() {
		_, err := fc.Read(buf)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // the Read waits
	s.n.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a waiting Read returned no error when the Net closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting Read went on after the Net closed")
	}
	if _, err := fc.Read(buf); err == nil {
		t.Error("a Read after the Net closed returned no error")
	}
	if _, err := fc.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a Write after the Net closed: %v, want net.ErrClosed", err)
	}
}

// TestUDPFlowReadDeadline: a Read that waits returns at its deadline,
// and at a deadline set while it waits.
func TestUDPFlowReadDeadline(t *testing.T) {
	s := startFlowSetup(t)
	fc := s.emptyFlow(t)
	buf := make([]byte, 10)
	fc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := fc.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v", err)
	}
	fc.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := fc.Read(buf)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	fc.SetReadDeadline(time.Now())
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read woken by a deadline: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a deadline set while Read waited did not end it")
	}
}

// TestUDPFlowAllocs: queueing a datagram and reading it allocates
// nothing once the buffer pool is warm, and a reply no more than the
// stack does for any packet it sends.
func TestUDPFlowAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	s := startFlowSetup(t)
	c := s.dial(t, flowDst4)
	fc := s.firstFlow(t, c, []byte("x")).(*flowConn)
	buf := make([]byte, 2000)
	for {
		if _, wouldBlock, err := fc.TryRead(buf); wouldBlock || err != nil {
			break
		}
	}
	payload := peersite.Body(1200)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(payload)})
	defer pkt.DecRef()
	if a := testing.AllocsPerRun(1000, func() {
		fc.deliver(pkt)
		fc.TryRead(buf)
	}); a != 0 {
		t.Errorf("a datagram queued and read allocates %.1f times", a)
	}
	// gVisor's IP layer allocates for every packet it sends (its
	// queueing discipline's list, now and then an IP ID); a reply adds
	// nothing to that.
	if a := testing.AllocsPerRun(1000, func() { fc.Write(payload) }); a > 2 {
		t.Errorf("a reply allocates %.1f times", a)
	}
}

// TestUDPFlowFarDeadline: a deadline past what Unix nanoseconds hold is
// never, not one that wrapped into the past.
func TestUDPFlowFarDeadline(t *testing.T) {
	far := time.Now().Add(math.MaxInt64)
	if got := unixNano(far); got != math.MaxInt64 {
		t.Errorf("unixNano(%v) = %d, want math.MaxInt64", far, got)
	}
	if got := unixNano(time.Unix(0, 5)); got != 5 {
		t.Errorf("unixNano(5ns) = %d", got)
	}
	if got := unixNano(time.Time{}); got != 0 {
		t.Errorf("unixNano(zero) = %d, want 0 (no deadline)", got)
	}
}
