// Package peersite runs a WireGuard peer for tests: a wireguard-go device
// on a loopback UDP socket, with wireguard-go's own gVisor netstack, serving
// HTTP, echo, discard, chargen-like source and DNS inside its tunnel. It is
// an implementation independent of ours, so a test that talks to it checks
// interoperability, not agreement of our code with itself.
//
// Inside the tunnel, the site is TheirV4 and TheirV6 and expects us at
// OurV4 and OurV6. On both of its addresses it serves:
//
//   - HTTP on port 80:
//     GET /bytes/N answers Body(N) with a Content-Length;
//     /sha256, with any method, reads the request body and answers
//     "<hex sha256> <length>";
//     /echo, with any method, answers "<METHOD> <request body>".
//   - TCP echo and UDP echo on port 7.
//   - TCP discard on port 9: it reads until EOF, then writes the number of
//     bytes it read in decimal and closes.
//   - TCP source on port 19: it reads an 8-byte big-endian length N, then
//     writes Body(N) and closes.
//
// On TheirV4 port 53 it answers DNS over UDP and TCP for Domain: see
// Records and DNS.
package peersite

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// Addresses inside the tunnel: ours (the side under test) and theirs (the
// site).
var (
	OurV4   = netip.MustParseAddr("10.0.0.1")
	TheirV4 = netip.MustParseAddr("10.0.0.2")
	OurV6   = netip.MustParseAddr("fd00::1")
	TheirV6 = netip.MustParseAddr("fd00::2")
)

// loopback is where the site's WireGuard UDP socket listens.
var loopback = netip.MustParseAddr("127.0.0.1")

// Site is a running wireguard-go peer and its servers.
type Site struct {
	// Net is the site's end of the tunnel, for a test to dial into ours
	// from the site or to add servers of its own there.
	Net    *netstack.Net
	Device *device.Device

	PrivateKey protocol.PrivateKey
	PublicKey  protocol.PublicKey
	// Port is the site's WireGuard UDP port on 127.0.0.1.
	Port uint16

	DNS *DNS

	// The servers' goroutines and what they block on. The device closes
	// only after every goroutine has returned: wireguard-go's
	// tun/netstack races (a send on a channel its Close closes) if its
	// stack is still writing a reply when the device goes away.
	wg       sync.WaitGroup
	mu       sync.Mutex
	open     map[io.Closer]struct{}
	closing  bool
	stopOnce sync.Once
}

// Options adjust a Site. The zero value is a site that waits for us to
// start the handshake.
type Options struct {
	// WithoutRACK turns RACK off in the site's TCP, for tests in which
	// the site sends through an outage (see withoutRACK).
	WithoutRACK bool
	// TCPProbe, if set, is called with the whole state of a site TCP
	// endpoint after each segment it receives, for traces of the site's
	// sender (see probeTCP).
	TCPProbe tcp.TCPProbeFunc
	// MTU of the site's tunnel; 0 means protocol.DefaultMTU.
	MTU int
	// Endpoint is our WireGuard UDP address ("127.0.0.1:port"), for a
	// site that must be able to send first. Empty means the site learns
	// it from our first handshake, as a server does.
	Endpoint string
	// AllowedIPs are what the site routes to us, and what it accepts from
	// us; empty means OurV4/32 and OurV6/128. With 0.0.0.0/0 and ::/0 a
	// site is a client of our server mode: its Net dials any address
	// through us. (Not the host's loopback: wireguard-go's netstack drops
	// replies from a loopback source. StartClient can.) For StartClient,
	// empty means 0.0.0.0/0 and ::/0.
	AllowedIPs []netip.Prefix
	// Port is the site's or client's UDP port on 127.0.0.1; 0 picks a
	// free one. A test that restarts a peer, as a real one restarts on
	// its ListenPort, gives the same port twice.
	Port uint16
	// PrivateKey is the site's or client's key; zero means a fresh one.
	// A test that must configure us before the peer starts (a client
	// sends its handshake at once) picks the key first.
	PrivateKey protocol.PrivateKey
}

// Start runs a site that accepts the peer ours. It stops when t's
// cleanups run, so a Net of ours opened after Start (whose cleanup runs
// first) is closed before the site goes away.
func Start(t testing.TB, ours protocol.PublicKey, opts Options) *Site {
	t.Helper()
	s := &Site{DNS: &DNS{}, open: map[io.Closer]struct{}{}}
	var err error
	s.PrivateKey = opts.PrivateKey
	if s.PrivateKey.IsZero() {
		if s.PrivateKey, err = protocol.GeneratePrivateKey(); err != nil {
			t.Fatal(err)
		}
	}
	s.PublicKey = s.PrivateKey.PublicKey()
	var bind *wgtest.LoopbackBind
	allowed := opts.AllowedIPs
	if len(allowed) == 0 {
		allowed = hostPrefixes(OurV4, OurV6)
	}
	s.Device, s.Net, bind = startDevice(t, []netip.Addr{TheirV4, TheirV6}, opts.MTU, s.PrivateKey, ours, opts.Endpoint, allowed, opts.Port, nil)
	if opts.WithoutRACK {
		withoutRACK(t, s.Net)
	}
	if opts.TCPProbe != nil {
		probeTCP(t, s.Net, opts.TCPProbe)
	}
	s.Port = bind.Port()
	t.Cleanup(s.stop)

	web := &http.Server{Handler: Handler(), ConnState: s.trackHTTP}
	s.track(web)
	for _, a := range []netip.Addr{TheirV4, TheirV6} {
		l, err := s.Net.ListenTCPAddrPort(netip.AddrPortFrom(a, 80))
		if err != nil {
			t.Fatal(err)
		}
		s.serve(func() { web.Serve(l) })
		s.serveTCP(t, a, 7, func(c net.Conn) { io.Copy(c, c) })
		s.serveUDP(t, a, 7, func(req []byte) []byte { return req })
		s.serveTCP(t, a, 9, discard)
		s.serveTCP(t, a, 19, source)
	}
	s.serveUDP(t, TheirV4, 53, s.DNS.answerUDP)
	s.serveTCP(t, TheirV4, 53, s.DNS.answerTCP)
	return s
}

// withoutRACK turns RACK loss detection off in the TCP of a wireguard-go
// netstack, which gives no other way to reach its gVisor stack. A site
// stands for the far network; gVisor's RACK, on by default, can crawl
// for minutes after a retransmission timeout (package netstack's
// documentation, "TCP through loss and outages"), and a blackout test
// whose site sends would then measure that crawl instead of us. Linux's
// TCP behind a real TUN (the namespace tests) is the real sender. Only
// tests that ask for it get it: with it, the recovery benchmark's
// reference upload over the lossy path, to a site without RACK, did not
// finish in 20 minutes (once; not investigated).
func withoutRACK(t testing.TB, n *netstack.Net) {
	t.Helper()
	opt := tcpip.TCPRecovery(0)
	if err := gvisorStack(t, n).SetTransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
		t.Fatalf("site TCP without RACK: %v", err)
	}
}

// gvisorStack is the gVisor stack inside a wireguard-go netstack, which
// keeps it in an unexported field.
func gvisorStack(t testing.TB, n *netstack.Net) *stack.Stack {
	t.Helper()
	f := reflect.ValueOf(n).Elem().FieldByName("stack")
	if f.Kind() != reflect.Pointer {
		t.Fatalf("wireguard-go's netstack has no stack field to reach (%v)", f.Kind())
	}
	return (*stack.Stack)(unsafe.Pointer(f.Pointer()))
}

// probeTCP installs probe in the TCP of a wireguard-go netstack: gVisor
// calls it with a copy of an endpoint's whole state (sender, receiver,
// RACK) after each segment the endpoint receives. gVisor takes a probe
// only when the stack is made, so it is set on the protocol by
// reflection; endpoints made afterwards get it.
func probeTCP(t testing.TB, n *netstack.Net, probe tcp.TCPProbeFunc) {
	t.Helper()
	p := reflect.ValueOf(gvisorStack(t, n).TransportProtocolInstance(tcp.ProtocolNumber))
	if p.Kind() != reflect.Pointer {
		t.Fatalf("gVisor's TCP protocol is a %v, not a pointer", p.Kind())
	}
	f := p.Elem().FieldByName("probe")
	if !f.IsValid() || f.Type() != reflect.TypeOf(probe) {
		t.Fatalf("gVisor's TCP protocol has no probe field of type %T", probe)
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.ValueOf(probe))
}

// startDevice brings up a wireguard-go device on a loopback socket, with
// a netstack at addrs and one peer allowed to send from allowed.
func startDevice(t testing.TB, addrs []netip.Addr, mtu int, key protocol.PrivateKey, peer protocol.PublicKey, endpoint string, allowed []netip.Prefix, port uint16, listen func(netip.AddrPort) (*net.UDPConn, error)) (*device.Device, *netstack.Net, *wgtest.LoopbackBind) {
	t.Helper()
	if mtu == 0 {
		mtu = protocol.DefaultMTU
	}
	tun, tnet, err := netstack.CreateNetTUN(addrs, nil, mtu)
	if err != nil {
		t.Fatal(err)
	}
	dev, bind := upDevice(t, tun, key, peer, endpoint, allowed, port, listen)
	return dev, tnet, bind
}

// hostPrefixes turns addresses into single-address prefixes.
func hostPrefixes(addrs ...netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range addrs {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

// WireGuardGoClient runs our side of the tunnel with wireguard-go instead
// of the code under test: a device at OurV4 and OurV6 whose one peer is
// the site. It is the yardstick for benchmarks and lets the site be
// tested on its own. It closes when t's cleanups run, before the site.
func (s *Site) WireGuardGoClient(t testing.TB, ours protocol.PrivateKey) *netstack.Net {
	t.Helper()
	return s.WireGuardGoClientVia(t, ours, s.Endpoint())
}

// Endpoint is the site's WireGuard UDP address, "127.0.0.1:port".
func (s *Site) Endpoint() string {
	return netip.AddrPortFrom(loopback, s.Port).String()
}

// WGQuick returns a wg-quick file for our side: our key and addresses,
// the site's DNS server with Domain as search domain, and the site as the
// one peer. extra is appended as is, after a blank line, for sections
// such as wireproxy's [Socks5].
func (s *Site) WGQuick(ours protocol.PrivateKey, extra string) string {
	conf := fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = %s, %s
DNS = %s, %s

[Peer]
PublicKey = %s
Endpoint = %s
AllowedIPs = %s, %s
`, ours.Base64(), netip.PrefixFrom(OurV4, 32), netip.PrefixFrom(OurV6, 128), TheirV4, Domain,
		s.PublicKey, s.Endpoint(), netip.PrefixFrom(TheirV4, 32), netip.PrefixFrom(TheirV6, 128))
	if extra != "" {
		conf += "\n" + extra
	}
	return conf
}

// serve runs f as one of the site's server goroutines.
func (s *Site) serve(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// track registers a listener or connection to be closed when the site
// stops, or closes it now if the site is already stopping.
func (s *Site) track(c io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		c.Close()
		return
	}
	s.open[c] = struct{}{}
}

// untrack forgets a connection its server has closed.
func (s *Site) untrack(c io.Closer) {
	s.mu.Lock()
	delete(s.open, c)
	s.mu.Unlock()
}

// trackHTTP counts net/http's connection goroutines among the site's
// own: a connection is new in Serve's goroutine, before its own starts,
// and closed as the last thing that goroutine does.
func (s *Site) trackHTTP(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		s.wg.Add(1)
		s.track(c)
	case http.StateClosed, http.StateHijacked:
		s.untrack(c)
		s.wg.Done()
	}
}

// Stop takes the site down now, as a peer that crashes or restarts goes
// away; the test's cleanup then finds nothing left to do.
func (s *Site) Stop() { s.stop() }

// stop closes every listener and connection, waits for every server
// goroutine, and only then closes the device. A second call does nothing
// more.
func (s *Site) stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		for c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
		closeDevice(s.Device, s.Net)
	})
}

// closeDevice takes a wireguard-go device and its tun/netstack down
// without a send on a closed channel. Close alone closes the TUN first
// and stops the peers after: a receiver still delivering a packet into
// tun/netstack's stack then makes it answer (a reset, say) into the
// TUN's closed channel, and the send panics. Down stops the peers and
// waits for their receivers. The stack can still write by itself, from
// its own goroutines (a closing endpoint answers the segments queued for
// it with resets, a timer fires), and tun/netstack's Close closes the
// channel without waiting for them. So its link endpoint is closed first,
// which makes every later write fail before it notifies the TUN, and the
// notifications already under way are given a moment to finish.
func closeDevice(dev *device.Device, tnet *netstack.Net) {
	dev.Down()
	if ep := linkEndpointOf(tnet); ep != nil {
		ep.Close()
		time.Sleep(20 * time.Millisecond)
	}
	dev.Close()
}

// linkEndpointOf reaches tun/netstack's link endpoint, which it does not
// export; nil if its layout has changed.
func linkEndpointOf(tnet *netstack.Net) *channel.Endpoint {
	f := reflect.ValueOf(tnet).Elem().FieldByName("ep")
	if !f.IsValid() || f.Type() != reflect.TypeOf((*channel.Endpoint)(nil)) {
		return nil
	}
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(*channel.Endpoint)
}

// serveTCP accepts connections on a:port and runs handle for each,
// closing the connection when handle returns.
func (s *Site) serveTCP(t testing.TB, a netip.Addr, port uint16, handle func(net.Conn)) {
	t.Helper()
	l, err := s.Net.ListenTCPAddrPort(netip.AddrPortFrom(a, port))
	if err != nil {
		t.Fatal(err)
	}
	s.track(l)
	s.serve(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.track(c)
			s.serve(func() {
				defer s.untrack(c)
				defer c.Close()
				handle(c)
			})
		}
	})
}

// serveUDP answers each datagram to a:port with what answer returns for
// it, if anything.
func (s *Site) serveUDP(t testing.TB, a netip.Addr, port uint16, answer func(req []byte) []byte) {
	t.Helper()
	uc, err := s.Net.ListenUDPAddrPort(netip.AddrPortFrom(a, port))
	if err != nil {
		t.Fatal(err)
	}
	s.track(uc)
	s.serve(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := answer(buf[:n]); resp != nil {
				uc.WriteTo(resp, from)
			}
		}
	})
}

// discard reads to EOF and then reports how much it read, so an upload
// can be both timed and checked for loss.
func discard(c net.Conn) {
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return
	}
	io.WriteString(c, strconv.FormatInt(n, 10))
}

// source sends as many bytes of Body as asked for: a download with
// neither HTTP nor its framing in the way.
func source(c net.Conn) {
	var n [8]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return
	}
	io.Copy(c, newBodyReader(binary.BigEndian.Uint64(n[:])))
}

// Handler is the site's web server, for a test that serves it on a
// listener of its own: GET /bytes/N answers Body(N), /sha256 answers the
// request body's digest and length, /echo the method and the body.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes/{n}", serveBytes)
	mux.HandleFunc("/sha256", serveSHA256)
	mux.HandleFunc("/echo", serveEcho)
	return mux
}

func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseUint(r.PathValue("n"), 10, 63)
	if err != nil {
		http.Error(w, "want /bytes/N with N a byte count", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Length", strconv.FormatUint(n, 10))
	io.Copy(w, newBodyReader(n))
}

func serveSHA256(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "%x %d", h.Sum(nil), n)
}

func serveEcho(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "%s %s", r.Method, body)
}

// WireGuardGoClientVia is WireGuardGoClient with the site reached at
// endpoint instead of its own address: through a relay, say.
func (s *Site) WireGuardGoClientVia(t testing.TB, ours protocol.PrivateKey, endpoint string) *netstack.Net {
	t.Helper()
	return WireGuardGoStack(t, ours, []netip.Addr{OurV4, OurV6}, s.PublicKey, endpoint, hostPrefixes(TheirV4, TheirV6), nil)
}

// WireGuardGoStack runs wireguard-go on its own gVisor stack (its
// tun/netstack) at addrs, with one peer at endpoint allowed to send from
// allowed: the reference client against any peer, a Site or not. listen,
// if not nil, opens its UDP socket (see wgtest.LoopbackBind.Listen). It
// closes when t's cleanups run.
func WireGuardGoStack(t testing.TB, key protocol.PrivateKey, addrs []netip.Addr, peer protocol.PublicKey, endpoint string, allowed []netip.Prefix, listen func(netip.AddrPort) (*net.UDPConn, error)) *netstack.Net {
	t.Helper()
	dev, tnet, _ := startDevice(t, addrs, 0, key, peer, endpoint, allowed, 0, listen)
	t.Cleanup(func() { closeDevice(dev, tnet) })
	return tnet
}
