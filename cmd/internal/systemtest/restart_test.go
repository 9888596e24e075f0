package systemtest

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// peerRestartBound is what bounds reconnection after the peer restarts
// and forgets our session: we keep sending on it, unanswered, until
// KeepaliveTimeout + RekeyTimeout after the first unanswered packet, then
// handshake afresh. Anything later than that plus a handshake and the
// first connection's own round trips is a stall of ours.
const peerRestartBound = protocol.KeepaliveTimeout + protocol.RekeyTimeout + 500*time.Millisecond

// TestPeerRestart restarts the wireguard-go peer, with the same keys on
// the same port, under a running binary whose session it has forgotten.
// New SOCKS5 connections through the binary, tried every 250 ms, must
// work again within peerRestartBound (15.5 s) of the restart, without
// restarting wgbore.
func TestPeerRestart(t *testing.T) {
	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	peerKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	port := int(wgtest.FreeLoopbackUDPPort(t))
	opts := peersite.Options{PrivateKey: peerKey, Port: uint16(port)}
	site := peersite.Start(t, ours.PublicKey(), opts)
	conf := WriteFile(t, t.TempDir(), "wg0.conf", site.WGQuick(ours, "[Socks5]\nBindAddress = 127.0.0.1:0\n"))
	d := startDaemon(t, conf)
	socks := d.addr(t, "socks5 ", 0)
	fetchThrough(t, socks, "before the restart")

	site.Stop()
	restarted := time.Now()
	site = peersite.Start(t, ours.PublicKey(), opts)
	if int(site.Port) != port {
		t.Fatalf("the restarted peer listens on %d, not %d", site.Port, port)
	}

	// Each try is a new connection with a short timeout, as a user's
	// next request would be, started every 250 ms whether or not the
	// last has given up: an old SYN's backed-off retransmissions are not
	// what is measured, and neither is how long a try waits.
	echo := netip.AddrPortFrom(peersite.TheirV4, 7)
	worked := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	defer wg.Wait()
	tries := 0
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		tries++
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c, how, _ := socksHoldWithin(socks, echo, 2*time.Second); how == socksHeld {
				c.Close()
				once.Do(func() { close(worked) })
			}
		}()
		select {
		case <-worked:
			break wait
		case <-tick.C:
		}
		if since := time.Since(restarted); since > 2*peerRestartBound {
			t.Fatalf("no new connection %v after the peer restarted (%d tries)", since, tries)
		}
	}
	took := time.Since(restarted)
	t.Logf("a new connection worked %v after the peer restarted (%d tries); bound %v", took.Round(10*time.Millisecond), tries, peerRestartBound)
	if took > peerRestartBound+500*time.Millisecond {
		t.Errorf("reconnection took %v, beyond KeepaliveTimeout + RekeyTimeout + a handshake (%v)", took, peerRestartBound)
	}
	fetchThrough(t, socks, "after the restart")
}
