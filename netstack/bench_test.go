package netstack

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/device"
	wgnetstack "golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// cpuTime is this process's user plus system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// startSinkSource runs, inside the peer site's tunnel, a TCP server on
// port 9000 that sends forever ("download") and one on 9001 that reads
// forever ("upload").
func startSinkSource(b *testing.B, site *peerSite) {
	block := make([]byte, 64<<10)
	for port, serve := range map[uint16]func(net.Conn){
		9000: func(c net.Conn) {
			for {
				if _, err := c.Write(block); err != nil {
					return
				}
			}
		},
		9001: func(c net.Conn) { io.Copy(io.Discard, c) },
	} {
		l, err := site.tnet.ListenTCPAddrPort(netip.AddrPortFrom(theirV4, port))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() { serve(c); c.Close() }()
			}
		}()
	}
}

// wireguardGoClient is the reference: wireguard-go's own tun/netstack as
// a client of the same peer site.
func wireguardGoClient(b *testing.B, key protocol.PrivateKey, site *peerSite) func(ctx context.Context, network, addr string) (net.Conn, error) {
	tun, tnet, err := wgnetstack.CreateNetTUN([]netip.Addr{ourV4}, nil, protocol.DefaultMTU)
	if err != nil {
		b.Fatal(err)
	}
	dev := device.NewDevice(tun, &wgtest.LoopbackBind{Addr: netip.MustParseAddr("127.0.0.1")}, device.NewLogger(device.LogLevelSilent, ""))
	peer := site.key.PublicKey()
	if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\npublic_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=10.0.0.2/32\n",
		hex.EncodeToString(key[:]), hex.EncodeToString(peer[:]), site.port)); err != nil {
		b.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(dev.Close)
	return tnet.DialContext
}

// BenchmarkTCPThroughput moves data through one TCP connection between a
// client and a wireguard-go peer that runs wireguard-go's own netstack, for
// two clients in the same run: our Net ("wgbore") and wireguard-go's
// tun/netstack ("wireguard-go", the reference). Everything runs in this
// process, so cpu-s/GB counts both ends: the peer's share is the same for
// both clients, and the difference between the two is the client's.
func BenchmarkTCPThroughput(b *testing.B) {
	for _, client := range []string{"wgbore", "wireguard-go"} {
		for _, dir := range []string{"download", "upload"} {
			b.Run(client+"/"+dir, func(b *testing.B) {
				key, _ := protocol.GeneratePrivateKey()
				site := startPeerSite(b, key.PublicKey())
				startSinkSource(b, site)
				var dial func(ctx context.Context, network, addr string) (net.Conn, error)
				if client == "wgbore" {
					n := openOurs(b, key, site)
					b.Cleanup(func() { n.Close() })
					dial = n.DialContext
				} else {
					dial = wireguardGoClient(b, key, site)
				}
				port := 9000
				if dir == "upload" {
					port = 9001
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				c, err := dial(ctx, "tcp", fmt.Sprintf("10.0.0.2:%d", port))
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				buf := make([]byte, 1<<20)
				// Warm up: let the window open before measuring.
				move := func() {
					if dir == "download" {
						if _, err := io.ReadFull(c, buf); err != nil {
							b.Fatal(err)
						}
					} else if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				for range 8 {
					move()
				}
				cpu0 := cpuTime()
				b.SetBytes(int64(len(buf)))
				b.ResetTimer()
				for range b.N {
					move()
				}
				b.StopTimer()
				gb := float64(b.N) * float64(len(buf)) / 1e9
				b.ReportMetric((cpuTime()-cpu0).Seconds()/gb, "cpu-s/GB")
			})
		}
	}
}
