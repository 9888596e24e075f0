package netstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// TestOperations drives Ping, ListenPacket, Stats and HTTPClient against
// a wireguard-go peer with its own gVisor stack.
func TestOperations(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	n := openOurs(t, key, site)
	defer n.Close()

	t.Run("ping", func(t *testing.T) {
		for _, a := range []netip.Addr{peersite.TheirV4, peersite.TheirV6, peersite.OurV4, peersite.OurV6} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			rtt, err := n.Ping(ctx, a)
			cancel()
			if err != nil {
				t.Fatalf("ping %v: %v", a, err)
			}
			if rtt <= 0 {
				t.Fatalf("ping %v: rtt %v, want > 0", a, rtt)
			}
			t.Logf("ping %v: %v", a, rtt)
		}
	})

	t.Run("ping-concurrent", func(t *testing.T) {
		errs := make(chan error, 20)
		for i := range cap(errs) {
			a := peersite.TheirV4
			if i%2 == 1 {
				a = peersite.TheirV6
			}
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, err := n.Ping(ctx, a)
				errs <- err
			}()
		}
		for range cap(errs) {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("ping-no-peer", func(t *testing.T) {
		for _, a := range []netip.Addr{netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("fd00::3")} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			start := time.Now()
			_, err := n.Ping(ctx, a)
			cancel()
			var opErr *net.OpError
			if !errors.As(err, &opErr) || !errors.Is(err, syscall.EHOSTUNREACH) {
				t.Fatalf("ping %v: %v, want *net.OpError with EHOSTUNREACH", a, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("ping %v failed after %v, want at once", a, d)
			}
		}
	})

	t.Run("ping-cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		start := time.Now()
		_, err := n.Ping(ctx, peersite.TheirV4)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("ping with cancelled context: %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Fatalf("ping with cancelled context took %v", d)
		}
	})

	t.Run("ping-deadline", func(t *testing.T) {
		// A peer owns the address but nothing answers it: wireguard-go's
		// stack has no such address. The deadline must end the wait.
		if err := n.engine.SetPeer(protocol.PeerConfig{
			PublicKey:  site.PublicKey,
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(peersite.TheirV4, 32), netip.PrefixFrom(peersite.TheirV6, 128), netip.MustParsePrefix("10.9.9.9/32")},
		}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := n.Ping(ctx, netip.MustParseAddr("10.9.9.9"))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("ping of a silent address: %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("ping of a silent address returned after %v", d)
		}
	})

	t.Run("ping-leaves-nothing", func(t *testing.T) {
		// Every way out of Ping closes its ICMP endpoint: a long-running
		// health checker must not accumulate them.
		before := len(n.stack.RegisteredEndpoints())
		cancelled, cancel := context.WithCancel(context.Background())
		cancel()
		short, cancelShort := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancelShort()
		ok, cancelOK := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancelOK()
		n.Ping(cancelled, peersite.TheirV4)
		n.Ping(short, netip.MustParseAddr("10.9.9.9"))
		n.Ping(ok, peersite.TheirV6)
		n.Ping(ok, netip.MustParseAddr("10.0.0.3"))
		if after := len(n.stack.RegisteredEndpoints()); after != before {
			t.Fatalf("%d transport endpoints registered after four pings, %d before", after, before)
		}
	})

	t.Run("listen-packet", func(t *testing.T) {
		for _, c := range []struct {
			network string
			local   netip.AddrPort
		}{
			{"udp", netip.AddrPortFrom(peersite.OurV4, 5353)},
			{"udp6", netip.AddrPortFrom(peersite.OurV6, 5353)},
		} {
			pc, err := n.ListenPacket(c.network, c.local.String())
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			theirs, err := site.Net.DialUDPAddrPort(netip.AddrPort{}, c.local)
			if err != nil {
				t.Fatal(err)
			}
			defer theirs.Close()
			msg := []byte("datagram from the wireguard-go side")
			theirs.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := theirs.Write(msg); err != nil {
				t.Fatal(err)
			}

			pc.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 100)
			m, from, err := pc.ReadFrom(buf)
			if err != nil || !bytes.Equal(buf[:m], msg) {
				t.Fatalf("%s: read %q from %v: %v", c.network, buf[:m], from, err)
			}
			if got := from.(*net.UDPAddr).AddrPort(); got != theirs.LocalAddr().(*net.UDPAddr).AddrPort() {
				t.Fatalf("%s: datagram from %v, want %v", c.network, got, theirs.LocalAddr())
			}
			reply := []byte("reply from our side")
			if _, err := pc.WriteTo(reply, from); err != nil {
				t.Fatal(err)
			}
			m, err = theirs.Read(buf)
			if err != nil || !bytes.Equal(buf[:m], reply) {
				t.Fatalf("%s: reply %q: %v", c.network, buf[:m], err)
			}
		}
	})

	t.Run("listen-errors", func(t *testing.T) {
		for _, c := range []struct{ network, address string }{
			{"udp4", "[fd00::1]:53"},
			{"udp6", "10.0.0.1:53"},
			{"tcp", "10.0.0.1:53"},
			{"udp", "10.0.0.1"},
		} {
			pc, err := n.ListenPacket(c.network, c.address)
			var opErr *net.OpError
			if err == nil {
				pc.Close()
			}
			if !errors.As(err, &opErr) {
				t.Errorf("ListenPacket(%q, %q): %v, want *net.OpError", c.network, c.address, err)
			}
		}
	})

	t.Run("listen-udp-tcp", func(t *testing.T) {
		uc, err := n.ListenUDP("udp4", nil)
		if err != nil {
			t.Fatal(err)
		}
		if port := uc.LocalAddr().(*net.UDPAddr).Port; port == 0 {
			t.Errorf("ListenUDP with nil address: port 0")
		}
		uc.Close()
		l, err := n.ListenTCP("tcp", &net.TCPAddr{IP: peersite.OurV4.AsSlice(), Port: 8081})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}()
		c, err := site.Net.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(peersite.OurV4, 8081))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); err != nil || string(b) != "hi" {
			t.Fatalf("through ListenTCP: %q, %v", b, err)
		}
	})

	t.Run("tcp-info", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(peersite.TheirV4, 7).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		one := []byte{'x'}
		if _, err := c.Write(one); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			t.Fatal(err)
		}
		info := c.(*TCPConn).TCPInfo()
		if info.State != "ESTABLISHED" || info.RTT <= 0 || info.RTO <= 0 || info.CongestionWindow == 0 || info.Recovery != "" {
			t.Errorf("TCPInfo after an echo: %+v", info)
		}
	})

	t.Run("http-client", func(t *testing.T) {
		const size = 1 << 20
		fetchBytes(t, n.HTTPClient(), fmt.Sprintf("http://10.0.0.2/bytes/%d", size), size)
	})

	t.Run("stats", func(t *testing.T) {
		st := n.Stats()
		if len(st) != 1 {
			t.Fatalf("%d peers in Stats, want 1: %+v", len(st), st)
		}
		p := st[0]
		if p.PublicKey != site.PublicKey {
			t.Errorf("public key %v, want %v", p.PublicKey, site.PublicKey)
		}
		if p.LastHandshake.IsZero() || time.Since(p.LastHandshake) > time.Minute {
			t.Errorf("last handshake %v, want within the last minute", p.LastHandshake)
		}
		if p.RxBytes < 1<<20 || p.TxBytes == 0 {
			t.Errorf("rx %d, tx %d bytes after a 1 MiB download", p.RxBytes, p.TxBytes)
		}
		if want := netip.MustParseAddrPort(site.Endpoint()); p.Endpoint != want {
			t.Errorf("endpoint %v, want %v", p.Endpoint, want)
		}
	})
}
