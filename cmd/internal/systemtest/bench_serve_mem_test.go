package systemtest

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/metricstest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// BenchmarkServeIdleFlowMemory measures the resident memory of a `wgbore
// serve` process per idle flow it relays: a wireguard-go peer opens n TCP
// flows to an echo service on the host's loopback (at the server's
// tunnel address), each moving one byte each way and then staying open,
// and then n UDP flows that each exchange one datagram. The growth of
// VmRSS over the figure before, divided by n, is the cost of one flow of
// each kind; UDP flows are measured while the TCP ones are still held.
//
// UDP flows are given an hour's idle timeout, so that they outlast the
// measurement. The figures are taken -flowmem.settle after the flows
// open. Goroutine
// stacks grown while a flow moved its first bytes shrink only at a
// garbage collection, which an idle process runs every two minutes, so a
// settle past that measures flows that have idled for a while.
//
// It starts a process of its own; b.N is not used, so run it once:
//
//	go test ./cmd/internal/systemtest -run '^$' -bench ServeIdleFlowMemory -benchtime 1x -flowmem.settle 130s
func BenchmarkServeIdleFlowMemory(b *testing.B) {
	raiseNoFile(b)
	for _, n := range []int{1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			tcpEcho, udpEcho := hostEcho(b)
			serverKey, _ := protocol.GeneratePrivateKey()
			clientKey, _ := protocol.GeneratePrivateKey()
			port := int(wgtest.FreeLoopbackUDPPort(b))
			conf := WriteFile(b, b.TempDir(), "server.conf", serveConf(serverKey, port, clientKey.PublicKey(),
				fmt.Sprintf("MaxFlowsPerPeer = %d\nUDPTimeout = 3600\n", 2*n+10)))
			d := startServeDaemon(b, conf, "-log-level", "info", "-metrics", "127.0.0.1:0")
			pid := d.cmd.Process.Pid
			h := metricstest.Remote("http://" + strings.TrimSuffix(d.addr(b, "metrics http://", 0), "/metrics"))
			runtimeFigures := func() (heap, stacks, goroutines float64) {
				fams, _ := metricstest.Parse(b, h)
				return metricstest.Value(b, fams, "go_memstats_heap_alloc_bytes"), metricstest.Value(b, fams, "go_memstats_stack_inuse_bytes"), metricstest.Value(b, fams, "go_goroutines")
			}
			client := peersite.StartClient(b, serverKey.PublicKey(), peersite.Options{
				PrivateKey: clientKey,
				Endpoint:   fmt.Sprintf("127.0.0.1:%d", port),
			})
			dial := func(network, hostAddr string) (net.Conn, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				return client.DialContext(ctx, network, atServer(hostAddr))
			}
			// The first flow makes the handshake; then the process settles.
			if c, err := dial("tcp", tcpEcho); err != nil {
				b.Fatal(err)
			} else {
				oneByteEcho(c)
				c.Close()
			}
			settled, idle := idleRSS(b, pid)
			heap0, stacks0, g0 := runtimeFigures()

			held := func(network, target string) int64 {
				conns, err := openFlows(n, func() (net.Conn, error) {
					c, err := dial(network, target)
					if err != nil {
						return nil, err
					}
					if err := oneByteEcho(c); err != nil {
						c.Close()
						return nil, err
					}
					return c, nil
				})
				b.Cleanup(func() { closeConns(conns) })
				if err != nil {
					b.Fatal(err)
				}
				time.Sleep(*flowMemSettle)
				return vmRSS(b, pid)
			}
			withTCP := held("tcp", tcpEcho)
			heap1, stacks1, g1 := runtimeFigures()
			withUDP := held("udp", udpEcho)
			heap2, stacks2, g2 := runtimeFigures()
			per := func(a, b float64) float64 { return (b - a) / float64(n) }
			b.Logf("per TCP flow: heap %.1f KiB, stacks %.1f KiB, %.1f goroutines", per(heap0, heap1)/1024, per(stacks0, stacks1)/1024, per(g0, g1))
			b.Logf("per UDP flow: heap %.1f KiB, stacks %.1f KiB, %.1f goroutines", per(heap1, heap2)/1024, per(stacks1, stacks2)/1024, per(g1, g2))
			b.ReportMetric(float64(settled)/1024, "settled-MiB")
			b.ReportMetric(float64(idle)/1024, "idle-MiB")
			b.ReportMetric(float64(withTCP-idle)/float64(n), "KiB/tcp-flow")
			b.ReportMetric(float64(withUDP-withTCP)/float64(n), "KiB/udp-flow")
		})
	}
}

var flowMemSettle = flag.Duration("flowmem.settle", 2*time.Second, "how long the serve flow memory benchmark lets held flows idle before it measures")

// oneByteEcho sends one byte on c and reads it back, retrying a lost UDP
// datagram.
func oneByteEcho(c net.Conn) error {
	one := []byte{'x'}
	for try := 0; ; try++ {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(one); err != nil {
			return err
		}
		_, err := io.ReadFull(c, one)
		if err == nil || try == 5 {
			c.SetDeadline(time.Time{})
			return err
		}
		if _, udp := c.(net.PacketConn); !udp {
			return err
		}
	}
}

// closeConns closes what openFlows opened; a failed open left a nil.
func closeConns(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// openFlows opens n connections with open, 32 at a time. On an error it
// returns the first one with the connections it opened.
func openFlows(n int, open func() (net.Conn, error)) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	next := make(chan int)
	for range 32 {
		wg.Go(func() {
			for i := range next {
				c, err := open()
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("connection %d: %w", i, err)
					}
					mu.Unlock()
					continue
				}
				conns[i] = c
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return conns, first
}
