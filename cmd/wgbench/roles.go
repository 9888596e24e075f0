package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
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

	"golang.zx2c4.com/wireguard/device"
	wgnetstack "golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/protocol"
)

// Tunnel addresses: the client is always clientAddr, the peer that serves
// echo, discard and source is always peerAddr.
var (
	clientAddr = netip.MustParseAddr("10.0.0.1")
	peerAddr   = netip.MustParseAddr("10.0.0.2")
	loopback   = netip.MustParseAddr("127.0.0.1")
)

// Ports of the peer's services, as in netstack/peersite: echo(7) returns
// what it reads; discard(9) reads to EOF and answers the count in
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
	Op       string `json:"op"` // download, upload, echo, connrate
	Addr     string `json:"addr"`
	Bytes    int64  `json:"bytes,omitempty"`
	Count    int    `json:"count,omitempty"`
	Parallel int    `json:"parallel,omitempty"`
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
	case "wggo-peer", "wgbore-peer":
		key, peer, err := keysFromEnv()
		if err != nil {
			return err
		}
		var l listenFunc
		var port uint16
		if role == "wggo-peer" {
			dev, tnet, bind, err := wggoDevice(peerAddr, key, peer, "", clientAddr)
			if err != nil {
				return err
			}
			defer closeDevice(dev)
			l = func(p uint16) (net.Listener, error) {
				return tnet.ListenTCPAddrPort(netip.AddrPortFrom(peerAddr, p))
			}
			port = bind.Port()
		} else {
			n, err := wgboreNet(peerAddr, key, peer, "", clientAddr)
			if err != nil {
				return err
			}
			defer n.Close()
			l = func(p uint16) (net.Listener, error) {
				return n.Listen("tcp", netip.AddrPortFrom(peerAddr, p).String())
			}
			port = n.LocalPort()
		}
		if err := serveServices(l); err != nil {
			return err
		}
		out.Encode(reply{Port: port})
		io.Copy(io.Discard, os.Stdin)
		return nil
	case "wggo-client", "wgbore-client", "proxy-client":
		var dial dialFunc
		switch role {
		case "wggo-client":
			key, peer, err := keysFromEnv()
			if err != nil {
				return err
			}
			dev, tnet, _, err := wggoDevice(clientAddr, key, peer, endpoint, peerAddr)
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
		default:
			var err error
			if dial, err = proxyDialer(via); err != nil {
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
			r, err := runCommand(dial, c)
			if err != nil {
				r.Err = err.Error()
			}
			out.Encode(r)
		}
		return sc.Err()
	}
	return fmt.Errorf("unknown role %q", role)
}

// wggoDevice is wireguard-go with its own tun/netstack at addr, with one
// peer routed at peerIP, on a batchBind.
func wggoDevice(addr netip.Addr, key protocol.PrivateKey, peer protocol.PublicKey, endpoint string, peerIP netip.Addr) (*device.Device, *wgnetstack.Net, *batchBind, error) {
	tun, tnet, err := wgnetstack.CreateNetTUN([]netip.Addr{addr}, nil, protocol.DefaultMTU)
	if err != nil {
		return nil, nil, nil, err
	}
	bind := &batchBind{}
	dev := device.NewDevice(tun, bind, device.NewLogger(device.LogLevelSilent, ""))
	uapi := fmt.Sprintf("private_key=%x\nlisten_port=0\npublic_key=%x\nallowed_ip=%s\n", key[:], peer[:], netip.PrefixFrom(peerIP, 32))
	if endpoint != "" {
		uapi += "endpoint=" + endpoint + "\n"
	}
	if err := dev.IpcSet(uapi); err != nil {
		dev.Close()
		return nil, nil, nil, err
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, nil, nil, err
	}
	return dev, tnet, bind, nil
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

func serveServices(listen listenFunc) error {
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
	return nil
}

// firstEcho waits for the tunnel: the first dial carries the handshake,
// which is not what any measurement is about.
func firstEcho(dial dialFunc) (stalls int, stalled, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		var c net.Conn
		if c, err = dial(ctx, netip.AddrPortFrom(peerAddr, portEcho).String()); err == nil {
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

func runCommand(dial dialFunc, c command) (reply, error) {
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
		for range c.Count {
			d, err := echoOnce(conn, one)
			if err != nil {
				return reply{}, err
			}
			rtts = append(rtts, d)
		}
		slices.Sort(rtts)
		return reply{
			P50us: float64(percentile(rtts, 50)) / 1e3,
			P99us: float64(percentile(rtts, 99)) / 1e3,
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
// socks5://HOST:PORT or http://HOST:PORT.
func proxyDialer(via string) (dialFunc, error) {
	scheme, addr, ok := strings.Cut(via, "://")
	if !ok {
		return nil, fmt.Errorf("-via %q: want socks5://HOST:PORT or http://HOST:PORT", via)
	}
	switch scheme {
	case "socks5":
		return func(ctx context.Context, target string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(target)
			if err != nil {
				return nil, err
			}
			return socksConnect(ctx, addr, ap)
		}, nil
	case "http":
		return func(ctx context.Context, target string) (net.Conn, error) { return httpConnect(ctx, addr, target) }, nil
	}
	return nil, fmt.Errorf("-via %q: unknown scheme", via)
}

// socksConnect opens a SOCKS5 CONNECT tunnel without authentication and
// returns the plain TCP conn, so an upload can half-close it.
func socksConnect(ctx context.Context, proxyAddr string, target netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	req := []byte{5, 1, 0, 5, 1, 0, 1}
	req = append(req, target.Addr().AsSlice()...)
	req = binary.BigEndian.AppendUint16(req, target.Port())
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	// Method choice (2 bytes), then a reply with an IPv4 or IPv6 BND.ADDR.
	head := make([]byte, 2+4)
	if _, err := io.ReadFull(c, head); err != nil || head[1] != 0 || head[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("SOCKS5 CONNECT %v refused: % x %v", target, head, err)
	}
	rest := 4 + 2
	if head[5] == 4 {
		rest = 16 + 2
	}
	if _, err := io.ReadFull(c, make([]byte, rest)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
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
