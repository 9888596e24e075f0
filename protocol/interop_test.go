package protocol

// Interop with wireguard-go, a WireGuard implementation nobody here wrote,
// over real UDP sockets on loopback. wireguard-go runs with an in-process
// channel TUN and a loopback-only Bind (wgtest), so nothing listens on a
// wildcard address and nothing leaves the host.

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/wgbore/wgbore/protocol/udpbind"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// wgPeerSide is a running wireguard-go device.
type wgPeerSide struct {
	dev       *device.Device
	tun       *tuntest.ChannelTUN
	key       PrivateKey
	port      uint16
	delivered chan []byte
}

func hexKey(k [32]byte) string { return hex.EncodeToString(k[:]) }

// startWireGuardGo brings up wireguard-go on loopback addr. peerEndpoint
// may be invalid, in which case it learns ours from our handshake.
func startWireGuardGo(t *testing.T, addr netip.Addr, ours PublicKey, psk PresharedKey, peerEndpoint netip.AddrPort, allowed ...string) *wgPeerSide {
	t.Helper()
	w := &wgPeerSide{tun: tuntest.NewChannelTUN(), key: mustKey(t), delivered: make(chan []byte, 4096)}
	bind := &wgtest.LoopbackBind{Addr: addr}
	w.dev = device.NewDevice(w.tun.TUN(), bind, device.NewLogger(device.LogLevelSilent, ""))
	cfg := fmt.Sprintf("private_key=%s\nlisten_port=0\nreplace_peers=true\npublic_key=%s\n", hexKey(w.key), hexKey(ours))
	if !psk.IsZero() {
		cfg += "preshared_key=" + hexKey(psk) + "\n"
	}
	if peerEndpoint.IsValid() {
		cfg += "endpoint=" + peerEndpoint.String() + "\n"
	}
	for _, a := range allowed {
		cfg += "allowed_ip=" + a + "\n"
	}
	if err := w.dev.IpcSet(cfg); err != nil {
		t.Fatalf("wireguard-go config: %v", err)
	}
	if err := w.dev.Up(); err != nil {
		t.Fatalf("wireguard-go up: %v", err)
	}
	w.port = bind.Port()
	done, stop := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case p := <-w.tun.Inbound:
				select {
				case w.delivered <- p:
				default: // the test stopped reading; drop like a full TUN
				}
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		w.dev.Close()
		close(stop)
		<-done
	})
	return w
}

func (w *wgPeerSide) send(pkt []byte) { w.tun.Outbound <- pkt }

func expectPacket(t *testing.T, ch <-chan []byte, want []byte, what string) {
	t.Helper()
	select {
	case got := <-ch:
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: delivered %d bytes differing from the %d sent", what, len(got), len(want))
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: packet of %d bytes not delivered within 10s", what, len(want))
	}
}

func expectSilence(t *testing.T, ch <-chan []byte, wait time.Duration, what string) {
	t.Helper()
	select {
	case got := <-ch:
		t.Fatalf("%s: unexpected delivery of %d bytes", what, len(got))
	case <-time.After(wait):
	}
}

// interopRekeyAfter stands in for RekeyAfterTime in the interop tests.
const interopRekeyAfter = 1500 * time.Millisecond

var (
	ourV4   = netip.MustParseAddr("10.0.0.1")
	theirV4 = netip.MustParseAddr("10.0.0.2")
	ourV6   = netip.MustParseAddr("fd00::1")
	theirV6 = netip.MustParseAddr("fd00::2")
)

type interopPair struct {
	our    *Engine
	sink   *sink
	wg     *wgPeerSide
	ourKey PrivateKey
}

// newInteropPair wires our engine to wireguard-go on loopback. When
// weInitiate, we know their endpoint and they learn ours; otherwise the
// reverse.
func newInteropPair(t *testing.T, loopback netip.Addr, weInitiate bool, ourPSK, theirPSK PresharedKey) *interopPair {
	t.Helper()
	return newInteropPairWith(t, loopback, weInitiate, ourPSK, theirPSK, nil)
}

// newInteropPairWith is newInteropPair with a chance to change our
// engine's Config and our PeerConfig for wireguard-go.
func newInteropPairWith(t *testing.T, loopback netip.Addr, weInitiate bool, ourPSK, theirPSK PresharedKey, change func(*Config, *PeerConfig)) *interopPair {
	t.Helper()
	ip := &interopPair{sink: newSink(), ourKey: mustKey(t)}
	// Both ends run on real time here, since wireguard-go does. To see a
	// time-driven rekey without waiting two minutes, our engine's
	// RekeyAfterTime is shortened through the test-only Params knob.
	params := DefaultParams()
	params.RekeyAfterTime = interopRekeyAfter
	ub, err := udpbind.Listen(udpbind.Config{Addrs: []netip.Addr{loopback}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{PrivateKey: ip.ourKey, Bind: ub, Packets: ip.sink, Params: &params, Logger: testLogger(t)}
	pc := PeerConfig{PresharedKey: ourPSK,
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32"), netip.MustParsePrefix("fd00::2/128")}}
	if change != nil {
		change(&cfg, &pc)
	}
	ip.our, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ip.our.Close() })
	var theirEndpoint netip.AddrPort
	ourEndpoint := netip.AddrPortFrom(loopback, ub.Port())
	if weInitiate {
		ourEndpoint = netip.AddrPort{}
	}
	ip.wg = startWireGuardGo(t, loopback, ip.ourKey.PublicKey(), theirPSK, ourEndpoint, "10.0.0.1/32", "fd00::1/128")
	if weInitiate {
		theirEndpoint = netip.AddrPortFrom(loopback, ip.wg.port)
	}
	pc.PublicKey = ip.wg.key.PublicKey()
	if theirEndpoint.IsValid() {
		pc.Endpoint = theirEndpoint.String()
	}
	if err := ip.our.SetPeer(pc); err != nil {
		t.Fatal(err)
	}
	return ip
}

// exchange sends n packets each way, of varied sizes and both inner IP
// families, and checks each arrives byte-identical and in order.
func (ip *interopPair) exchange(t *testing.T, rng *rand.Rand, n int, weFirst bool) {
	t.Helper()
	for i := range n {
		src, dst := ourV4, theirV4
		if i%2 == 1 {
			src, dst = ourV6, theirV6
		}
		payload := make([]byte, rng.IntN(DefaultMTU-40+1))
		for j := range payload {
			payload[j] = byte(rng.Uint32())
		}
		ours := ipPacket(src, dst, payload)
		theirs := ipPacket(dst, src, payload[:len(payload)/2])
		if weFirst || i > 0 {
			ip.our.WritePackets([][]byte{ours})
			expectPacket(t, ip.wg.delivered, ours, "wgbore → wireguard-go")
			ip.wg.send(theirs)
			expectPacket(t, ip.sink.ch, theirs, "wireguard-go → wgbore")
		} else {
			ip.wg.send(theirs)
			expectPacket(t, ip.sink.ch, theirs, "wireguard-go → wgbore")
			ip.our.WritePackets([][]byte{ours})
			expectPacket(t, ip.wg.delivered, ours, "wgbore → wireguard-go")
		}
	}
}

func loopbacks(t *testing.T) map[string]netip.Addr {
	out := map[string]netip.Addr{"127.0.0.1": netip.MustParseAddr("127.0.0.1")}
	if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err == nil {
		c.Close()
		out["[::1]"] = netip.IPv6Loopback()
	} else {
		t.Logf("no IPv6 loopback on this host (%v): only 127.0.0.1 is tested", err)
	}
	return out
}

func TestInteropWireGuardGo(t *testing.T) {
	for name, lo := range loopbacks(t) {
		for _, weInitiate := range []bool{true, false} {
			for _, withPSK := range []bool{false, true} {
				role := "we-respond"
				if weInitiate {
					role = "we-initiate"
				}
				pskName := "no-psk"
				if withPSK {
					pskName = "psk"
				}
				t.Run(name+"/"+role+"/"+pskName, func(t *testing.T) {
					t.Parallel()
					var psk PresharedKey
					if withPSK {
						psk, _ = GeneratePresharedKey()
					}
					started := time.Now()
					ip := newInteropPair(t, lo, weInitiate, psk, psk)
					rng := rand.New(rand.NewPCG(1, 2))
					ip.exchange(t, rng, 50, weInitiate)

					st, _ := ip.our.Peer(ip.wg.key.PublicKey())
					if weInitiate != (st.HandshakeAttempts > 0) {
						t.Fatalf("weInitiate=%v but we sent %d initiations", weInitiate, st.HandshakeAttempts)
					}
					if st.HandshakesCompleted != 1 {
						t.Fatalf("%d handshakes completed, want 1", st.HandshakesCompleted)
					}

					// Force a rekey from the initiator's side while packets
					// keep flowing; not one may be lost.
					if weInitiate {
						time.Sleep(time.Until(started.Add(interopRekeyAfter + 100*time.Millisecond)))
					} else {
						// wireguard-go sends at most one initiation per
						// RekeyTimeout, counted in real time.
						time.Sleep(time.Until(started.Add(RekeyTimeout + 100*time.Millisecond)))
						if err := ip.wgPeer().SendHandshakeInitiation(false); err != nil {
							t.Fatal(err)
						}
					}
					ip.exchange(t, rng, 50, true)
					deadline := time.Now().Add(10 * time.Second)
					for {
						st, _ = ip.our.Peer(ip.wg.key.PublicKey())
						if st.HandshakesCompleted >= 2 {
							break
						}
						if time.Now().After(deadline) {
							t.Fatalf("no second handshake after forced rekey: %+v", st)
						}
						if !weInitiate {
							// Its first initiation may have left later than
							// started (a loaded machine): wireguard-go then
							// skipped the one above, and sends once its own
							// RekeyTimeout has passed.
							if err := ip.wgPeer().SendHandshakeInitiation(false); err != nil {
								t.Fatal(err)
							}
						}
						ip.exchange(t, rng, 1, true)
					}
					ip.exchange(t, rng, 20, true)
					if s := ip.our.Stats(); s.Dropped(DropAuthFailed)+s.Dropped(DropReplay)+s.Dropped(DropUnknownIndex)+s.Dropped(DropHandshakeFailed) != 0 {
						t.Fatalf("drops across the rekey: %v", s.Drops)
					}
				})
			}
		}
	}
}

func (ip *interopPair) wgPeer() *device.Peer {
	return ip.wg.dev.LookupPeer(device.NoisePublicKey(ip.ourKey.PublicKey()))
}

func TestInteropWireGuardGoWrongKeys(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	pskA, _ := GeneratePresharedKey()
	pskB, _ := GeneratePresharedKey()
	cases := []struct {
		name       string
		weInitiate bool
		ourPSK     PresharedKey
		theirPSK   PresharedKey
		wrongPeer  bool
	}{
		{"psk-mismatch/we-initiate", true, pskA, pskB, false},
		{"psk-mismatch/they-initiate", false, pskA, pskB, false},
		{"psk-only-on-our-side", true, pskA, PresharedKey{}, false},
		{"wrong-public-key/we-initiate", true, PresharedKey{}, PresharedKey{}, true},
		{"wrong-public-key/they-initiate", false, PresharedKey{}, PresharedKey{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ip := newInteropPair(t, lo, c.weInitiate, c.ourPSK, c.theirPSK)
			if c.wrongPeer {
				// We expect a peer that is not the one at the endpoint.
				ep := ""
				if st, ok := ip.our.Peer(ip.wg.key.PublicKey()); ok && st.Endpoint.IsValid() {
					ep = st.Endpoint.String()
				}
				ip.our.RemovePeer(ip.wg.key.PublicKey())
				impostor := mustKey(t).PublicKey()
				if err := ip.our.SetPeer(PeerConfig{PublicKey: impostor, Endpoint: ep,
					AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}}); err != nil {
					t.Fatal(err)
				}
			}
			pkt := ipPacket(ourV4, theirV4, []byte("must not arrive"))
			back := ipPacket(theirV4, ourV4, []byte("must not arrive either"))
			for range 3 {
				if c.weInitiate {
					ip.our.WritePackets([][]byte{pkt})
				} else {
					ip.wg.send(back)
				}
				time.Sleep(200 * time.Millisecond)
			}
			expectSilence(t, ip.wg.delivered, 500*time.Millisecond, "wireguard-go")
			expectSilence(t, ip.sink.ch, 10*time.Millisecond, "wgbore")
			for _, st := range ip.our.Peers() {
				if st.HandshakesCompleted != 0 {
					t.Fatalf("handshake completed with a wrong key: %+v", st)
				}
			}
			s := ip.our.Stats()
			if c.weInitiate && !c.wrongPeer && s.Dropped(DropHandshakeFailed) == 0 {
				t.Fatalf("response with mismatched PSK was not rejected as a failed handshake: %v", s.Drops)
			}
			// With mismatched PSKs their initiation is genuine (the PSK
			// enters only with the response), so we answer and they reject
			// the answer; with a wrong key we must reject the initiation.
			if !c.weInitiate && c.wrongPeer && s.Dropped(DropHandshakeFailed) == 0 {
				t.Fatalf("their initiation was not rejected: %v", s.Drops)
			}
		})
	}
}

// TestInteropHandshakeBeforeTraffic: Handshake alone, with no packet
// queued, completes a session with wireguard-go, and a data packet sent
// afterwards needs no second handshake.
func TestInteropHandshakeBeforeTraffic(t *testing.T) {
	ip := newInteropPair(t, netip.MustParseAddr("127.0.0.1"), true, PresharedKey{}, PresharedKey{})
	them := ip.wg.key.PublicKey()
	if ip.our.Handshake(mustKey(t).PublicKey()) {
		t.Fatal("Handshake with an unknown peer reported true")
	}
	if !ip.our.Handshake(them) {
		t.Fatal("Handshake with a configured peer reported false")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := ip.our.Peer(them)
		if !st.LastHandshake.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no handshake after 10s: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	ip.exchange(t, rand.New(rand.NewPCG(3, 4)), 4, true)
	if st, _ := ip.our.Peer(them); st.HandshakesCompleted != 1 || st.HandshakeAttempts != 1 {
		t.Fatalf("%d initiations, %d handshakes; want exactly 1 of each", st.HandshakeAttempts, st.HandshakesCompleted)
	}
}

// TestMartianSourcesFromWireGuardGo: a wireguard-go peer whose AllowedIPs
// on our side are 0.0.0.0/0 and ::/0, as a client's usually are, sends
// hand-made packets whose sources would pass for this host itself or for
// no host at all. Each is dropped and counted as martian_source; a packet
// from the peer's own address still arrives.
func TestMartianSourcesFromWireGuardGo(t *testing.T) {
	ip := newInteropPairWith(t, netip.MustParseAddr("127.0.0.1"), true, PresharedKey{}, PresharedKey{}, func(c *Config, pc *PeerConfig) {
		c.LocalAddresses = []netip.Addr{ourV4, ourV6}
		pc.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	})
	honest4 := ipPacket(theirV4, ourV4, []byte("from the peer"))
	ip.our.WritePackets([][]byte{ipPacket(ourV4, theirV4, []byte("hello"))})
	expectPacket(t, ip.wg.delivered, ipPacket(ourV4, theirV4, []byte("hello")), "wgbore → wireguard-go")

	martians := []string{"127.0.0.1", "127.1.2.3", "0.0.0.0", "224.0.0.1", "255.255.255.255", "10.0.0.1",
		"::1", "::", "ff02::1", "fd00::1", "::ffff:127.0.0.1"}
	for _, m := range martians {
		src := netip.MustParseAddr(m)
		dst := ourV4
		if src.Is6() {
			dst = ourV6
		}
		ip.wg.send(ipPacket(src, dst, []byte("spoofed from "+m)))
	}
	ip.wg.send(honest4)
	expectPacket(t, ip.sink.ch, honest4, "wireguard-go → wgbore, after the martians")
	expectSilence(t, ip.sink.ch, 100*time.Millisecond, "martian sources")
	if got := ip.our.Stats().Dropped(DropMartianSource); got != uint64(len(martians)) {
		t.Fatalf("martian_source drops = %d, want %d", got, len(martians))
	}
}

// TestIdlePeersHoldNoGoroutine: a peer's in-order loops run only while
// it has batches queued. A thousand configured peers add no goroutine,
// and after bulk traffic with a wireguard-go peer both loops have ended.
func TestIdlePeersHoldNoGoroutine(t *testing.T) {
	ip := newInteropPair(t, netip.MustParseAddr("127.0.0.1"), true, PresharedKey{}, PresharedKey{})
	before := runtime.NumGoroutine()
	for i := range 1000 {
		k, _ := GeneratePrivateKey()
		a := netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})
		if err := ip.our.SetPeer(PeerConfig{PublicKey: k.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(a, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	if after := runtime.NumGoroutine(); after > before+4 {
		t.Fatalf("1000 idle peers added %d goroutines", after-before)
	}
	// Batches large enough to go through the workers and the loops.
	rng := rand.New(rand.NewPCG(3, 4))
	ip.exchange(t, rng, 500, true)
	p := ip.our.lookupPeer(ip.wg.key.PublicKey())
	wgtest.WaitFor(t, 5*time.Second, "the peer's loops to end once idle", func() bool {
		return !p.txRunning.Load() && !p.rxRunning.Load()
	})
}
