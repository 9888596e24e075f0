package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	wgnetstack "golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

// Tunnel addresses: the client is always clientAddr, the peer that serves
// echo, discard and source is always peerAddr.
var (
	clientAddr = netip.MustParseAddr("10.0.0.1")
	peerAddr   = netip.MustParseAddr("10.0.0.2")
	loopback   = netip.MustParseAddr("127.0.0.1")
	// firstEchoAt is where a client role proves its tunnel before it
	// reports ready: the peer's echo service.
	firstEchoAt = netip.AddrPortFrom(peerAddr, portEcho).String()
)

// setTunnel takes a client role's -tunnel flag, CLIENT,PEER,ECHO: its
// own tunnel address, the one it routes to its peer, and the address of
// the echo that proves the tunnel. Part S's clients need it, since
// there the peer is serve and the echo a service on the host.
func setTunnel(flag string) error {
	if flag == "" {
		return nil
	}
	parts := strings.Split(flag, ",")
	if len(parts) != 3 {
		return fmt.Errorf("-tunnel %q: want CLIENT,PEER,ECHO", flag)
	}
	c, err := netip.ParseAddr(parts[0])
	if err != nil {
		return fmt.Errorf("-tunnel: %w", err)
	}
	p, err := netip.ParseAddr(parts[1])
	if err != nil {
		return fmt.Errorf("-tunnel: %w", err)
	}
	if _, err := netip.ParseAddrPort(parts[2]); err != nil {
		return fmt.Errorf("-tunnel: %w", err)
	}
	clientAddr, peerAddr, firstEchoAt = c, p, parts[2]
	return nil
}

// Ports of the peer's services, as in netstack/peersite: echo(7) returns
// what it reads, over TCP and, datagram by datagram, over UDP; discard(9) reads to EOF and answers the count in
// decimal; source(19) reads an 8-byte big-endian N and sends N bytes.
const (
	portEcho    = 7
	portDiscard = 9
	portSource  = 19
)

// Keys reach a child through the environment rather than its command
// line, which any local user can read.
const (
	envKey  = "WGBENCH_PRIVATE_KEY"
	envPeer = "WGBENCH_PEER_PUBLIC_KEY"
)

// command is what the bench process asks a client process to do; reply
// is its answer. One JSON object a line each way.
type command struct {
	Op       string `json:"op"` // download, upload, echo, udpecho, connrate
	Addr     string `json:"addr"`
	Bytes    int64  `json:"bytes,omitempty"`
	Count    int    `json:"count,omitempty"`
	Parallel int    `json:"parallel,omitempty"`
	// Seconds, when set, makes echo run for that long instead of Count
	// round trips, and is how long drain reads.
	Seconds float64 `json:"seconds,omitempty"`
	// Start, when set, is when drain starts counting, so that drains in
	// several processes count over the same window.
	Start time.Time `json:"start,omitzero"`
	// First is the index of the first of Count churn clients to make,
	// which sets their tunnel addresses.
	First int `json:"first,omitempty"`
}

type reply struct {
	Err       string  `json:"err,omitempty"`
	Seconds   float64 `json:"seconds,omitempty"`
	P50us     float64 `json:"p50_us,omitempty"`
	P99us     float64 `json:"p99_us,omitempty"`
	ConnsPerS float64 `json:"conns_per_s,omitempty"`
	// Port is a peer's WireGuard UDP port; Ready a client's handshake.
	Port  uint16 `json:"port,omitempty"`
	Ready bool   `json:"ready,omitempty"`
	// Stalls are first echoes that got no answer and were retried: the
	// tunnel is up, so they are worth reporting as a fault.
	Stalls  int    `json:"stalls,omitempty"`
	Stalled string `json:"stalled,omitempty"`
	// Resent counts UDP echo datagrams sent again after a second
	// unanswered.
	Resent int `json:"resent,omitempty"`
	// Bytes is what drain read; Echoes and MaxGapUs are how many round
	// trips a paced echo made and the longest pause between two of
	// their answers, which ended at MaxGapEnd. The roles run on the
	// same machine, so their clocks agree.
	Bytes     int64     `json:"bytes,omitempty"`
	Echoes    int       `json:"echoes,omitempty"`
	MaxGapUs  float64   `json:"max_gap_us,omitempty"`
	MaxGapEnd time.Time `json:"max_gap_end,omitzero"`
	// Keys are the churn clients' public keys, in order.
	Keys []string `json:"keys,omitempty"`
}

type dialFunc func(ctx context.Context, addr string) (net.Conn, error)

func keysFromEnv() (protocol.PrivateKey, protocol.PublicKey, error) {
	key, err := protocol.ParsePrivateKey(os.Getenv(envKey))
	if err != nil {
		return key, protocol.PublicKey{}, fmt.Errorf("%s: %w", envKey, err)
	}
	peer, err := protocol.ParsePublicKey(os.Getenv(envPeer))
	if err != nil {
		return key, peer, fmt.Errorf("%s: %w", envPeer, err)
	}
	return key, peer, nil
}

// runRole is a child process's whole life. Every child exits when its
// stdin closes, so none outlives the bench process.
func runRole(role, endpoint, via string) error {
	out := json.NewEncoder(os.Stdout)
	switch role {
	case "wggo-peer", "wggo-peer-default", "wgbore-peer":
		key, peer, err := keysFromEnv()
		if err != nil {
			return err
		}
		var l listenFunc
		var lp listenPacketFunc
		var port uint16
		if role != "wgbore-peer" {
			dev, tnet, p, err := wggoDevice(peerAddr, key, peer, "", clientAddr, role == "wggo-peer-default")
			if err != nil {
				return err
			}
			defer closeDevice(dev)
			l = func(p uint16) (net.Listener, error) {
				return tnet.ListenTCPAddrPort(netip.AddrPortFrom(peerAddr, p))
			}
			lp = func(p uint16) (net.PacketConn, error) {
				return tnet.ListenUDPAddrPort(netip.AddrPortFrom(peerAddr, p))
			}
			port = p
		} else {
			n, err := wgboreNet(peerAddr, key, peer, "", clientAddr)
			if err != nil {
				return err
			}
			defer n.Close()
			l = func(p uint16) (net.Listener, error) {
				return n.Listen("tcp", netip.AddrPortFrom(peerAddr, p).String())
			}
			lp = func(p uint16) (net.PacketConn, error) {
				return n.ListenPacket("udp", netip.AddrPortFrom(peerAddr, p).String())
			}
			port = n.LocalPort()
		}
		if err := serveServices(l, lp); err != nil {
			return err
		}
		out.Encode(reply{Port: port})
		io.Copy(io.Discard, os.Stdin)
		return nil
	case "wggo-client", "wgbore-client", "proxy-client":
		var dial, dialUDP dialFunc
		switch role {
		case "wggo-client":
			key, peer, err := keysFromEnv()
			if err != nil {
				return err
			}
			dev, tnet, _, err := wggoDevice(clientAddr, key, peer, endpoint, peerAddr, false)
			if err != nil {
				return err
			}
			defer closeDevice(dev)
			dial = func(ctx context.Context, addr string) (net.Conn, error) {
				ap, err := netip.ParseAddrPort(addr)
				if err != nil {
					return nil, err
				}
				return tnet.DialContextTCPAddrPort(ctx, ap)
			}
			dialUDP = func(_ context.Context, addr string) (net.Conn, error) {
				ap, err := netip.ParseAddrPort(addr)
				if err != nil {
					return nil, err
				}
				return tnet.DialUDPAddrPort(netip.AddrPort{}, ap)
			}
		case "wgbore-client":
			key, peer, err := keysFromEnv()
			if err != nil {
				return err
			}
			n, err := wgboreNet(clientAddr, key, peer, endpoint, peerAddr)
			if err != nil {
				return err
			}
			defer n.Close()
			dial = func(ctx context.Context, addr string) (net.Conn, error) { return n.DialContext(ctx, "tcp", addr) }
			dialUDP = func(ctx context.Context, addr string) (net.Conn, error) { return n.DialContext(ctx, "udp", addr) }
		default:
			var err error
			if dial, dialUDP, err = proxyDialer(via); err != nil {
				return err
			}
		}
		stalls, last, err := firstEcho(dial)
		if err != nil {
			return err
		}
		r := reply{Ready: true, Stalls: stalls}
		if last != nil {
			r.Stalled = last.Error()
		}
		out.Encode(r)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			var c command
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				return err
			}
			if c.Op == "paced" {
				// A paced echo runs until the next line, which stops it.
				stop := make(chan struct{})
				done := make(chan reply, 1)
				go func() {
					r, err := pacedEcho(dial, c.Addr, stop)
					if err != nil {
						r.Err = err.Error()
					}
					done <- r
				}()
				sc.Scan()
				close(stop)
				r := <-done
				var next command
				if err := json.Unmarshal(sc.Bytes(), &next); err != nil || next.Op != "stop" {
					r.Err = fmt.Sprintf("a paced echo ends with a stop, not %q", sc.Bytes())
				}
				out.Encode(r)
				continue
			}
			r, err := runCommand(dial, dialUDP, c)
			if err != nil {
				r.Err = err.Error()
			}
			out.Encode(r)
		}
		return sc.Err()
	case "churn-clients":
		return runChurnClients(out)
	}
	return fmt.Errorf("unknown role %q", role)
}

// wggoDevice is wireguard-go with its own tun/netstack at addr, with one
// peer routed at peerIP. Its UDP socket is a batchBind on 127.0.0.1, or,
// with defaultBind, wireguard-go's shipped conn.NewDefaultBind: it listens
// on every address and sends with UDP GSO, as wireguard-go does for its
// users, while its traffic here stays on 127.0.0.1 all the same. It
// returns the port the socket has.
func wggoDevice(addr netip.Addr, key protocol.PrivateKey, peer protocol.PublicKey, endpoint string, peerIP netip.Addr, defaultBind bool) (*device.Device, *wgnetstack.Net, uint16, error) {
	tun, tnet, err := wgnetstack.CreateNetTUN([]netip.Addr{addr}, nil, protocol.DefaultMTU)
	if err != nil {
		return nil, nil, 0, err
	}
	var bind conn.Bind = &batchBind{}
	if defaultBind {
		bind = conn.NewDefaultBind()
	}
	dev := device.NewDevice(tun, bind, device.NewLogger(device.LogLevelSilent, ""))
	uapi := fmt.Sprintf("private_key=%x\nlisten_port=0\npublic_key=%x\nallowed_ip=%s\n", key[:], peer[:], netip.PrefixFrom(peerIP, 32))
	if endpoint != "" {
		uapi += "endpoint=" + endpoint + "\n"
	}
	if err := dev.IpcSet(uapi); err != nil {
		dev.Close()
		return nil, nil, 0, err
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, nil, 0, err
	}
	port, err := listenPort(dev)
	if err != nil {
		closeDevice(dev)
		return nil, nil, 0, err
	}
	return dev, tnet, port, nil
}

// listenPort asks a device, through its UAPI, which port it listens on.
func listenPort(dev *device.Device) (uint16, error) {
	state, err := dev.IpcGet()
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(state) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			return uint16(p), err
		}
	}
	return 0, errors.New("wireguard-go reports no listen_port")
}

// closeDevice takes a wireguard-go device down before closing it: Close
// alone closes tun/netstack's TUN while a receiver may still be
// delivering into its stack, whose answer then goes to a closed channel.
func closeDevice(dev *device.Device) {
	dev.Down()
	dev.Close()
}

// wgboreNet is our netstack at addr, with one peer routed at peerIP.
func wgboreNet(addr netip.Addr, key protocol.PrivateKey, peer protocol.PublicKey, endpoint string, peerIP netip.Addr) (*netstack.Net, error) {
	return netstack.Open(context.Background(), netstack.Config{
		PrivateKey:  key,
		Addresses:   []netip.Prefix{netip.PrefixFrom(addr, 32)},
		ListenAddrs: []netip.Addr{loopback},
		Peers: []protocol.PeerConfig{{
			PublicKey:  peer,
			Endpoint:   endpoint,
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(peerIP, 32)},
		}},
	})
}

type listenFunc func(port uint16) (net.Listener, error)

type listenPacketFunc func(port uint16) (net.PacketConn, error)

// sourceBlock is what the source service repeats: one fixed block, so
// the peer spends no CPU making data up.
var sourceBlock = func() []byte {
	b := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}()

func serveServices(listen listenFunc, listenPacket listenPacketFunc) error {
	handlers := map[uint16]func(net.Conn){
		// A small buffer: ten thousand idle echo connections are held
		// open in the memory measurement.
		portEcho: func(c net.Conn) { io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 2048)) },
		portDiscard: func(c net.Conn) {
			n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{c}, make([]byte, 256<<10))
			if err == nil {
				io.WriteString(c, strconv.FormatInt(n, 10))
			}
		},
		portSource: func(c net.Conn) {
			var n [8]byte
			if _, err := io.ReadFull(c, n[:]); err != nil {
				return
			}
			for left := int64(binary.BigEndian.Uint64(n[:])); left > 0; {
				k := min(left, int64(len(sourceBlock)))
				if _, err := c.Write(sourceBlock[:k]); err != nil {
					return
				}
				left -= k
			}
		},
	}
	for port, h := range handlers {
		l, err := listen(port)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					h(c)
				}()
			}
		}()
	}
	// UDP echo on the echo port: each datagram goes back to its sender.
	pc, err := listenPacket(portEcho)
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return nil
}

// firstEcho waits for the tunnel: the first dial carries the handshake,
// which is not what any measurement is about.
func firstEcho(dial dialFunc) (stalls int, stalled, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		var c net.Conn
		if c, err = dial(ctx, firstEchoAt); err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = echoOnce(c, make([]byte, 1))
			c.Close()
			if err == nil {
				return stalls, stalled, nil
			}
			stalls, stalled = stalls+1, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return stalls, stalled, fmt.Errorf("no echo through the tunnel after 60s: %v", err)
}

// udpEchoOnce sends the 1-byte datagram seq and waits for it to come
// back, sending it again after a second without an answer, up to three
// times; an answer to an earlier datagram is skipped. It returns the
// round trip of the try that was answered and how many tries it took.
func udpEchoOnce(c net.Conn, seq byte) (time.Duration, int, error) {
	b := []byte{seq}
	got := make([]byte, 16)
	for try := 1; try <= 3; try++ {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			return 0, try, err
		}
		c.SetReadDeadline(start.Add(time.Second))
		for {
			n, err := c.Read(got)
			// gonet's deadline error is a net.Error of its own, not
			// os.ErrDeadlineExceeded.
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				break
			}
			if err != nil {
				return 0, try, err
			}
			if n == 1 && got[0] == seq {
				return time.Since(start), try, nil
			}
		}
	}
	return 0, 3, fmt.Errorf("UDP echo: datagram %d unanswered three times", seq)
}

// isTimeout reports a read that ended at its deadline.
func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// pacedEcho echoes a byte every millisecond through one connection to
// addr until stop is closed, and reports how many answers came and the
// longest pause between two of them.
func pacedEcho(dial dialFunc, addr string, stop <-chan struct{}) (reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := dial(ctx, addr)
	if err != nil {
		return reply{}, err
	}
	defer conn.Close()
	one := []byte{'x'}
	var r reply
	var maxGap time.Duration
	last := time.Now()
	for {
		select {
		case <-stop:
			r.MaxGapUs = float64(maxGap) / 1e3
			return r, nil
		default:
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := echoOnce(conn, one); err != nil {
			return r, err
		}
		now := time.Now()
		if gap := now.Sub(last); gap > maxGap {
			maxGap, r.MaxGapEnd = gap, now
		}
		last = now
		r.Echoes++
		time.Sleep(time.Millisecond)
	}
}

func echoOnce(c net.Conn, one []byte) (time.Duration, error) {
	start := time.Now()
	if _, err := c.Write(one); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, one); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// stallTimeout fails a measurement whose connection makes no progress
// for this long, so that a stalled tunnel is reported instead of hanging
// the suite.
const stallTimeout = 30 * time.Second

// progressConn moves its deadline forward on every read and write: a
// deadline for the whole transfer would have to guess its speed.
type progressConn struct{ net.Conn }

func (c progressConn) Read(p []byte) (int, error) {
	c.Conn.SetDeadline(time.Now().Add(stallTimeout))
	return c.Conn.Read(p)
}

func (c progressConn) Write(p []byte) (int, error) {
	c.Conn.SetDeadline(time.Now().Add(stallTimeout))
	return c.Conn.Write(p)
}

func (c progressConn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("%T cannot half-close", c.Conn)
	}
	return cw.CloseWrite()
}

func runCommand(dial, dialUDP dialFunc, c command) (reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	raw := dial
	dial = func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := raw(ctx, addr)
		if err != nil {
			return nil, err
		}
		return progressConn{conn}, nil
	}
	switch c.Op {
	case "download", "upload":
		conn, err := dial(ctx, c.Addr)
		if err != nil {
			return reply{}, err
		}
		defer conn.Close()
		start := time.Now()
		if c.Op == "download" {
			if _, err := conn.Write(binary.BigEndian.AppendUint64(nil, uint64(c.Bytes))); err != nil {
				return reply{}, err
			}
			got, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{conn}, make([]byte, 256<<10))
			if err != nil || got != c.Bytes {
				return reply{}, fmt.Errorf("downloaded %d of %d bytes: %v", got, c.Bytes, err)
			}
		} else {
			for left := c.Bytes; left > 0; {
				k := min(left, int64(len(sourceBlock)))
				if _, err := conn.Write(sourceBlock[:k]); err != nil {
					return reply{}, err
				}
				left -= k
			}
			if err := conn.(progressConn).CloseWrite(); err != nil {
				return reply{}, err
			}
			count, err := io.ReadAll(conn)
			if err != nil || string(count) != strconv.FormatInt(c.Bytes, 10) {
				return reply{}, fmt.Errorf("the sink counted %q bytes, want %d: %v", count, c.Bytes, err)
			}
		}
		return reply{Seconds: time.Since(start).Seconds()}, nil
	case "echo":
		conn, err := dial(ctx, c.Addr)
		if err != nil {
			return reply{}, err
		}
		defer conn.Close()
		one := []byte{'x'}
		rtts := make([]time.Duration, 0, c.Count)
		end := time.Now().Add(time.Duration(c.Seconds * float64(time.Second)))
		for i := 0; c.Seconds > 0 && time.Now().Before(end) || c.Seconds == 0 && i < c.Count; i++ {
			d, err := echoOnce(conn, one)
			if err != nil {
				return reply{}, err
			}
			rtts = append(rtts, d)
		}
		if len(rtts) == 0 {
			return reply{}, errors.New("no round trip")
		}
		slices.Sort(rtts)
		return reply{
			P50us: float64(percentile(rtts, 50)) / 1e3,
			P99us: float64(percentile(rtts, 99)) / 1e3,
		}, nil
	case "drain":
		// Read from a service that sends until its reader goes, for
		// c.Seconds from c.Start; what came before Start is not counted.
		conn, err := raw(ctx, c.Addr)
		if err != nil {
			return reply{}, err
		}
		defer conn.Close()
		start := c.Start
		if start.IsZero() {
			start = time.Now()
		}
		buf := make([]byte, 256<<10)
		conn.SetReadDeadline(start)
		if _, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{conn}, buf); !isTimeout(err) {
			return reply{}, fmt.Errorf("before the window: %v", err)
		}
		conn.SetReadDeadline(start.Add(time.Duration(c.Seconds * float64(time.Second))))
		got, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{conn}, buf)
		if !isTimeout(err) {
			return reply{}, fmt.Errorf("drained %d bytes, then: %v", got, err)
		}
		return reply{Bytes: got}, nil
	case "udpecho":
		if dialUDP == nil {
			return reply{}, errors.New("no UDP through this client")
		}
		conn, err := dialUDP(ctx, c.Addr)
		if err != nil {
			return reply{}, err
		}
		defer conn.Close()
		rtts := make([]time.Duration, 0, c.Count)
		resent := 0
		for i := range c.Count {
			d, tries, err := udpEchoOnce(conn, byte(i))
			if err != nil {
				return reply{}, err
			}
			resent += tries - 1
			rtts = append(rtts, d)
		}
		slices.Sort(rtts)
		return reply{
			P50us:  float64(percentile(rtts, 50)) / 1e3,
			P99us:  float64(percentile(rtts, 99)) / 1e3,
			Resent: resent,
		}, nil
	case "connrate":
		var next atomic.Int64
		var wg sync.WaitGroup
		var mu sync.Mutex
		var first error
		start := time.Now()
		for range max(c.Parallel, 1) {
			wg.Go(func() {
				one := make([]byte, 1)
				for next.Add(1) <= int64(c.Count) {
					err := func() error {
						conn, err := dial(ctx, c.Addr)
						if err != nil {
							return err
						}
						defer conn.Close()
						_, err = echoOnce(conn, one)
						return err
					}()
					if err != nil {
						mu.Lock()
						if first == nil {
							first = err
						}
						mu.Unlock()
						return
					}
				}
			})
		}
		wg.Wait()
		if first != nil {
			return reply{}, first
		}
		return reply{ConnsPerS: float64(c.Count) / time.Since(start).Seconds()}, nil
	}
	return reply{}, fmt.Errorf("unknown op %q", c.Op)
}

// proxyDialer connects through `wgbore up`'s proxies: via is
// socks5://HOST:PORT or http://HOST:PORT. Datagrams go through SOCKS5's
// UDP ASSOCIATE; an HTTP proxy has none, and dialUDP is nil.
func proxyDialer(via string) (dial, dialUDP dialFunc, err error) {
	scheme, addr, ok := strings.Cut(via, "://")
	if !ok {
		return nil, nil, fmt.Errorf("-via %q: want socks5://HOST:PORT or http://HOST:PORT", via)
	}
	switch scheme {
	case "socks5":
		dial = func(ctx context.Context, target string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(target)
			if err != nil {
				return nil, err
			}
			return socksclient.Connect(ctx, addr, socksclient.Auth{}, ap)
		}
		dialUDP = func(ctx context.Context, target string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(target)
			if err != nil {
				return nil, err
			}
			return socksAssociate(ctx, addr, ap)
		}
		return dial, dialUDP, nil
	case "http":
		return func(ctx context.Context, target string) (net.Conn, error) { return httpConnect(ctx, addr, target) }, nil, nil
	}
	return nil, nil, fmt.Errorf("-via %q: unknown scheme", via)
}

// socksAssociate opens a SOCKS5 UDP association without authentication
// and returns it as a datagram conn to target: each Write is one
// datagram, sent with the SOCKS5 UDP header in front (RFC 1928, section
// 7); each Read is one answer, its header stripped.
func socksAssociate(ctx context.Context, proxyAddr string, target netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	ctl, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	// The handshake is bounded as the dial is; the association then
	// lasts as long as this connection.
	if deadline, ok := ctx.Deadline(); ok {
		ctl.SetDeadline(deadline)
	}
	// The client's address is left unspecified: the relay takes it from
	// the first datagram.
	relay, err := socksclient.Associate(ctl, socksclient.Auth{}, netip.AddrPort{})
	if err != nil {
		ctl.Close()
		return nil, err
	}
	ctl.SetDeadline(time.Time{})
	uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(socksclient.RelayAddr(ctl, relay)))
	if err != nil {
		ctl.Close()
		return nil, err
	}
	return &socksUDPConn{UDPConn: uc, ctl: ctl, target: target, buf: make([]byte, 64<<10)}, nil
}

// socksUDPConn is a SOCKS5 UDP association to one target. It is used by
// one goroutine at a time.
type socksUDPConn struct {
	*net.UDPConn
	ctl    net.Conn // the association lasts as long as this connection
	target netip.AddrPort
	buf    []byte
}

func (c *socksUDPConn) Write(b []byte) (int, error) {
	if _, err := c.UDPConn.Write(socksclient.AppendDatagram(c.buf[:0], c.target, b)); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (c *socksUDPConn) Read(b []byte) (int, error) {
	n, err := c.UDPConn.Read(c.buf)
	if err != nil {
		return 0, err
	}
	_, payload, err := socksclient.ParseDatagram(c.buf[:n])
	if err != nil {
		return 0, err
	}
	return copy(b, payload), nil
}

func (c *socksUDPConn) Close() error {
	c.ctl.Close()
	return c.UDPConn.Close()
}

// proxyUser and proxyPass log in to the bench's HTTP proxy.
const proxyUser, proxyPass = "bench", "bench"

// httpConnect opens a CONNECT tunnel through an HTTP proxy.
func httpConnect(ctx context.Context, proxyAddr, target string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	auth := base64.StdEncoding.EncodeToString([]byte(proxyUser + ":" + proxyPass))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", target, target, auth)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %s", target, res.Status)
	}
	if br.Buffered() == 0 {
		return c, nil
	}
	return &bufferedConn{TCPConn: c.(*net.TCPConn), r: br}, nil
}

// bufferedConn reads first what the response parser buffered.
type bufferedConn struct {
	*net.TCPConn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
