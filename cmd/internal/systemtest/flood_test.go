package systemtest

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/blake2s"

	"github.com/wgbore/wgbore/cmd/internal/metricstest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

var floodTime = flag.Duration("flood", 2*time.Second,
	"how long each phase of TestSpoofedInitiationFlood lasts; at 20s or more (the issue's figure) its CPU and throughput targets are checked, not only reported")

// Issue 8's targets for a flood at the running binary, checked when
// -flood is 20s or longer: CPU is a share of one core, spent by wgbore
// on the flood beyond what it spends idle or on the transfer alone.
const (
	floodValidRate     = 5000  // spoofed initiations a second, with a valid MAC1
	floodInvalidRate   = 20000 // and with a wrong one
	floodValidMaxCPU   = 0.25
	floodInvalidMaxCPU = 0.10
	floodMaxSlowdown   = 0.05
)

// spoofer sends forged initiations at a WireGuard port from many loopback
// addresses (any 127.x.y.z is ours on loopback, so a per-source limiter
// is exercised without touching another network). It reads no replies
// while flooding, so that its own wake-ups do not weigh on the machine
// the flood is measured on; drain counts what came back afterwards.
type spoofer struct {
	conns   []*net.UDPConn
	target  netip.AddrPort
	mac1Key [blake2s.Size]byte
	sent    atomic.Int64
}

func newSpoofer(t *testing.T, target netip.AddrPort, victim protocol.PublicKey, addrs, portsPerAddr int) *spoofer {
	t.Helper()
	s := &spoofer{target: target, mac1Key: blake2s.Sum256(append([]byte("mac1----"), victim[:]...))}
	for i := range addrs {
		a := netip.AddrFrom4([4]byte{127, 60, byte(i / 250), byte(i%250 + 1)})
		for range portsPerAddr {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
			if err != nil {
				t.Fatalf("spoofer socket on %v: %v", a, err)
			}
			s.conns = append(s.conns, c)
		}
	}
	t.Cleanup(s.close)
	return s
}

// wrongMAC1Index is the sender index of every initiation forged with a
// wrong MAC1, so a cookie reply to one (whose receiver index echoes it)
// is told apart from a late reply to a valid-MAC1 initiation, whose
// indexes are random.
const wrongMAC1Index = 0xbad0bad0

// drain reads what has come back to every socket since the last drain:
// cookie replies, those of them answering a wrong-MAC1 initiation, and
// anything else.
func (s *spoofer) drain() (cookies, toWrongMAC1, other int) {
	buf := make([]byte, 2048)
	for _, c := range s.conns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		for {
			n, err := c.Read(buf)
			if err != nil {
				break
			}
			if n == protocol.MessageCookieReplySize && buf[0] == protocol.MessageCookieReplyType {
				cookies++
				if binary.LittleEndian.Uint32(buf[4:8]) == wrongMAC1Index {
					toWrongMAC1++
				}
			} else {
				other++
			}
		}
	}
	return cookies, toWrongMAC1, other
}

func (s *spoofer) close() {
	for _, c := range s.conns {
		c.Close()
	}
}

// forge writes an initiation of random content; with validMAC1 it carries
// the MAC1 anyone who knows the victim's public key can compute.
func (s *spoofer) forge(msg []byte, rng *rand.ChaCha8, validMAC1 bool) {
	rng.Read(msg)
	msg[0], msg[1], msg[2], msg[3] = protocol.MessageInitiationType, 0, 0, 0
	macAt := protocol.MessageInitiationSize - 32
	if validMAC1 {
		h, _ := blake2s.New128(s.mac1Key[:])
		h.Write(msg[:macAt])
		h.Sum(msg[:macAt])
	} else {
		binary.LittleEndian.PutUint32(msg[4:8], wrongMAC1Index)
	}
	clear(msg[macAt+16:]) // no MAC2: no cookie was ever asked for
}

// flood sends rate initiations a second for d, round robin over the
// sockets, in small bursts every two milliseconds.
func (s *spoofer) flood(d time.Duration, rate int, validMAC1 bool) {
	rng := rand.NewChaCha8([32]byte{byte(rate), 8})
	msg := make([]byte, protocol.MessageInitiationSize)
	dst := net.UDPAddrFromAddrPort(s.target)
	start := time.Now()
	next := 0
	for sent := 0; ; {
		el := time.Since(start)
		if el >= d {
			return
		}
		for due := int(el.Seconds() * float64(rate)); sent < due; sent++ {
			s.forge(msg, rng, validMAC1)
			c := s.conns[next%len(s.conns)]
			next++
			if _, err := c.WriteToUDP(msg, dst); err == nil {
				s.sent.Add(1)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// cpuOver is the share of one core pid spent while f ran.
func cpuOver(pid int, f func()) float64 {
	start, c0 := time.Now(), procCPU(pid)
	f()
	return (procCPU(pid) - c0).Seconds() / time.Since(start).Seconds()
}

// sourceThrough connects through the SOCKS5 proxy at socks to the
// site's source service and asks it for n bytes of peersite.Body.
func sourceThrough(ctx context.Context, socks string, n uint64) (net.Conn, error) {
	c, err := socksclient.Connect(ctx, socks, socksclient.Auth{}, netip.AddrPortFrom(peersite.TheirV4, 19))
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(binary.BigEndian.AppendUint64(nil, n)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// streamFor reads the site's source service through SOCKS5 for d and
// returns MB/s.
func streamFor(t *testing.T, socks string, d time.Duration) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := sourceThrough(ctx, socks, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	c.SetReadDeadline(start.Add(d))
	var n int64
	for {
		k, err := c.Read(buf)
		n += int64(k)
		if err != nil {
			break
		}
	}
	return float64(n) / 1e6 / time.Since(start).Seconds()
}

// fetchThrough checks that a request through the SOCKS5 proxy works now.
func fetchThrough(t *testing.T, socks string, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const size = 1 << 20
	c, err := sourceThrough(ctx, socks, size)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != string(peersite.Body(size)) {
		t.Fatalf("%s: %d bytes, err %v", what, len(got), err)
	}
}

// TestSpoofedInitiationFlood floods the running binary's WireGuard port
// with forged initiations from 1,000 loopback sources (250 addresses, 4
// ports each) while a wireguard-go peer uses the tunnel:
//   - with a valid MAC1, cookie replies engage, the established session
//     keeps carrying traffic, and the peer can still complete a fresh
//     handshake (it gets a cookie, then retries with MAC2);
//   - with a wrong MAC1 nothing is answered;
//   - RSS stays flat.
//
// It reports the share of a core wgbore spends on each flood and the
// throughput a transfer keeps during one; with -flood=20s it also holds
// them to the flood targets.
func TestSpoofedInitiationFlood(t *testing.T) {
	d := *floodTime
	checkTargets := d >= 20*time.Second
	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	conf := WriteFile(t, t.TempDir(), "wg0.conf", site.WGQuick(ours, "[Socks5]\nBindAddress = 127.0.0.1:0\n"))
	// Info, not debug: a debug line per rejected spoof would be what the
	// flood costs.
	dm := runDaemon(t, exec.Command(wgboreBinary(t), "up", "-c", conf, "-log-format", "json", "-log-level", "info", "-uapi-dir", ShortTempDir(t), "-metrics", "127.0.0.1:0"))
	metrics := metricstest.Remote("http://" + strings.TrimSuffix(dm.addr(t, "metrics http://", 0), "/metrics"))
	cookiesSent := func() float64 {
		fams, _ := metricstest.Parse(t, metrics)
		return metricstest.Value(t, fams, "wgbore_cookie_replies_sent_total")
	}
	pid := dm.cmd.Process.Pid
	socks := dm.addr(t, "socks5 ", 0)
	port, err := strconv.Atoi(fmt.Sprint(dm.summary["udp_port"]))
	if err != nil {
		t.Fatalf("no udp_port in the summary: %v", dm.summary)
	}
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	fetchThrough(t, socks, "before the flood")
	sp := newSpoofer(t, target, ours.PublicKey(), 250, 4)
	rssBefore := vmRSS(t, pid)

	idle := cpuOver(pid, func() { time.Sleep(d) })

	// A flood with a valid MAC1, and under it: the session in use, and
	// a fresh handshake from the peer.
	var valid float64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		valid = cpuOver(pid, func() { sp.flood(d, floodValidRate, true) })
	}()
	time.Sleep(d / 4)
	fetchThrough(t, socks, "the established session during the flood")
	wg.Wait()
	sentValid, cookies := sp.sent.Load(), cookiesSent()
	received, _, _ := sp.drain()
	if cookies == 0 || received == 0 {
		t.Fatalf("%d spoofed initiations with a valid MAC1: wgbore sent %v cookie replies, the spoofers received %d", sentValid, cookies, received)
	}

	rehandshake := rehandshakeDuringFlood(t, site, ours.PublicKey(), port, sp, socks)

	// Cookie replies to the last valid-MAC1 spoofs may still be on their
	// way (under load, the handshake queue can hold some for a while):
	// only a reply whose receiver index is a wrong-MAC1 initiation's
	// counts as an answer to one.
	sp.sent.Store(0)
	sp.drain()
	invalid := cpuOver(pid, func() { sp.flood(d, floodInvalidRate, false) })
	time.Sleep(500 * time.Millisecond)
	if c, wrong, o := sp.drain(); wrong+o != 0 {
		t.Fatalf("initiations with a wrong MAC1 were answered: %d cookie replies to them (%d in all, the rest late replies to valid ones) and %d other messages", wrong, c, o)
	}
	fetchThrough(t, socks, "after the floods")
	// Before the transfers, whose buffers are not the flood's doing.
	rssAfter := vmRSS(t, pid)

	base := streamFor(t, socks, d)
	var flooded float64
	wg.Add(1)
	go func() {
		defer wg.Done()
		sp.flood(d, floodValidRate, true)
	}()
	flooded = streamFor(t, socks, d)
	wg.Wait()

	validShare, invalidShare := valid-idle, invalid-idle
	slowdown := 1 - flooded/base
	t.Logf("valid MAC1, %d/s for %v: %d sent, %v cookie replies sent (%d still queued at the spoofers); wgbore used %.1f%% of a core (idle %.1f%%)", floodValidRate, d, sentValid, cookies, received, 100*valid, 100*idle)
	t.Logf("fresh handshake of the real peer during the flood: %v", rehandshake)
	t.Logf("wrong MAC1, %d/s for %v: wgbore used %.1f%% of a core", floodInvalidRate, d, 100*invalid)
	t.Logf("transfer: %.1f MB/s alone, %.1f MB/s during a valid-MAC1 flood (%.1f%% slower)", base, flooded, 100*slowdown)
	t.Logf("RSS: %d KiB before the floods, %d KiB after", rssBefore, rssAfter)
	if rssAfter > rssBefore+8<<10 {
		t.Errorf("RSS grew from %d to %d KiB during the floods", rssBefore, rssAfter)
	}
	if !checkTargets {
		return
	}
	if validShare > floodValidMaxCPU {
		t.Errorf("valid-MAC1 flood cost %.1f%% of a core, target %.0f%%", 100*validShare, 100*floodValidMaxCPU)
	}
	if invalidShare > floodInvalidMaxCPU {
		t.Errorf("wrong-MAC1 flood cost %.1f%% of a core, target %.0f%%", 100*invalidShare, 100*floodInvalidMaxCPU)
	}
	if slowdown > floodMaxSlowdown {
		t.Errorf("the transfer lost %.1f%% of its throughput to the flood, target %.0f%%", 100*slowdown, 100*floodMaxSlowdown)
	}
}

// rehandshakeDuringFlood makes the wireguard-go peer forget its session
// and start a fresh handshake to us while spoofs keep us under load: we
// answer with a cookie, its retry carries MAC2 and completes. It returns
// how long that took, and checks that the tunnel works afterwards.
func rehandshakeDuringFlood(t *testing.T, site *peersite.Site, ours protocol.PublicKey, port int, sp *spoofer, socks string) time.Duration {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				sp.flood(200*time.Millisecond, floodValidRate, true)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(200 * time.Millisecond)

	pub := hex.EncodeToString(ours[:])
	if err := site.Device.IpcSet("public_key=" + pub + "\nremove=true\n"); err != nil {
		t.Fatal(err)
	}
	err := site.Device.IpcSet(fmt.Sprintf("public_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=%s\nallowed_ip=%s\n",
		pub, port, netip.PrefixFrom(peersite.OurV4, 32), netip.PrefixFrom(peersite.OurV6, 128)))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// Anything the site sends us makes it initiate.
	c, err := site.Net.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(peersite.OurV4, 9))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := start.Add(30 * time.Second)
	for !siteHasHandshake(t, site, pub) {
		if time.Now().After(deadline) {
			t.Fatal("the peer's fresh handshake did not complete within 30s of the flood")
		}
		c.Write([]byte("x"))
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(start)
	fetchThrough(t, socks, "after the peer's fresh handshake, flood still on")
	return took
}

// siteHasHandshake reads the wireguard-go peer's last handshake time
// for us through its UAPI.
func siteHasHandshake(t *testing.T, site *peersite.Site, pub string) bool {
	t.Helper()
	get, err := site.Device.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	ours := false
	for _, line := range strings.Split(get, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "public_key":
			ours = v == pub
		case "last_handshake_time_sec":
			if ours && v != "0" {
				return true
			}
		}
	}
	return false
}
