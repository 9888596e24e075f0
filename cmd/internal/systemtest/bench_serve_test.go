package systemtest

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// BenchmarkServe measures a tunnel whose both ends are ours, the up and
// serve binaries, against one whose both ends are wireguard-go (each with
// its own gVisor netstack, in this process), in the same run. Ours
// carries a TCP stream from a local port (up's TCPClientTunnel) through
// serve's egress to a host service on 127.0.0.1; wireguard-go's carries
// it to a service inside the server's netstack, since wireguard-go has no
// egress of its own. Besides MB/s it reports the CPU seconds per GB of
// every process involved: the benchmark itself plus, for ours, the two
// daemons.
//
//	go test ./cmd/internal/systemtest -run '^$' -bench Serve -benchtime 200x
func BenchmarkServe(b *testing.B) {
	sinkAddr, sourceAddr := sinkAndSource(b, func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") })

	serverKey, _ := protocol.GeneratePrivateKey()
	clientKey, _ := protocol.GeneratePrivateKey()
	port := int(wgtest.FreeLoopbackUDPPort(b))
	dir := b.TempDir()
	serverConf := WriteFile(b, dir, "server.conf", serveConf(serverKey, port, clientKey.PublicKey(), ""))
	clientConf := WriteFile(b, dir, "client.conf", fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = 10.0.0.2/32

[Peer]
PublicKey = %s
Endpoint = 127.0.0.1:%d
AllowedIPs = 0.0.0.0/0

[TCPClientTunnel]
BindAddress = 127.0.0.1:0
Target = %s

[TCPClientTunnel]
BindAddress = 127.0.0.1:0
Target = %s
`, clientKey.Base64(), serverKey.PublicKey(), port, atServer(sinkAddr), atServer(sourceAddr)))
	server := startServeDaemon(b, serverConf, "-log-level", "info")
	client := startDaemon(b, clientConf, "-log-level", "info")
	toSink, toSource := client.addr(b, "tcp ", 0), client.addr(b, "tcp ", 1)
	ourPIDs := []int{server.cmd.Process.Pid, client.cmd.Process.Pid}

	site := peersite.Start(b, clientKey.PublicKey(), peersite.Options{})
	wggo := site.WireGuardGoClient(b, clientKey)
	// The same sink and source, inside the wireguard-go server's netstack.
	wgPort := uint16(9000)
	wgSink, wgSource := sinkAndSource(b, func() (net.Listener, error) {
		wgPort++
		return site.Net.ListenTCPAddrPort(netip.AddrPortFrom(peersite.TheirV4, wgPort))
	})

	paths := []struct {
		name         string
		pids         []int
		sink, source func(ctx context.Context) (net.Conn, error)
	}{
		{"wgbore", ourPIDs,
			func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", toSink) },
			func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", toSource) }},
		{"wireguard-go", nil,
			func(ctx context.Context) (net.Conn, error) { return wggo.DialContext(ctx, "tcp", wgSink) },
			func(ctx context.Context) (net.Conn, error) { return wggo.DialContext(ctx, "tcp", wgSource) }},
	}
	const chunk = 1 << 20
	for _, p := range paths {
		b.Run("download/"+p.name, func(b *testing.B) {
			c := benchConn(b, p.source)
			defer c.Close()
			b.SetBytes(chunk)
			cpu := startCPU(b, p.pids)
			b.ResetTimer()
			var n [8]byte
			binary.BigEndian.PutUint64(n[:], uint64(b.N)*chunk)
			c.Write(n[:])
			got, err := io.Copy(io.Discard, c)
			b.StopTimer()
			if err != nil || got != int64(b.N)*chunk {
				b.Fatalf("downloaded %d of %d bytes: %v", got, int64(b.N)*chunk, err)
			}
			cpu.report(b, got)
		})
		b.Run("upload/"+p.name, func(b *testing.B) {
			c := benchConn(b, p.sink)
			defer c.Close()
			buf := peersite.Body(chunk)
			b.SetBytes(chunk)
			cpu := startCPU(b, p.pids)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			c.(interface{ CloseWrite() error }).CloseWrite()
			count, err := io.ReadAll(c)
			b.StopTimer()
			if err != nil || string(count) != strconv.Itoa(b.N*chunk) {
				b.Fatalf("the sink counted %q bytes, want %d: %v", count, b.N*chunk, err)
			}
			cpu.report(b, int64(b.N)*chunk)
		})
	}
}

func benchConn(b *testing.B, dial func(context.Context) (net.Conn, error)) net.Conn {
	b.Helper()
	return benchDial(b, func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx) }, "")
}

// sinkAndSource runs a discard and a source service on listeners from
// listen: the sink counts what it reads until EOF and answers the count;
// the source sends as many bytes of one fixed block as the 8-byte length
// it is asked for, so neither side spends CPU making data up.
func sinkAndSource(b *testing.B, listen func() (net.Listener, error)) (sink, source string) {
	b.Helper()
	serve := func(handle func(net.Conn)) string {
		l, err := listen()
		if err != nil {
			b.Fatal(err)
		}
		serveConns(b, l, handle)
		return l.Addr().String()
	}
	sink = serve(func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		io.WriteString(c, strconv.FormatInt(n, 10))
	})
	block := peersite.Body(1 << 20)
	source = serve(func(c net.Conn) {
		var n [8]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		for left := int64(binary.BigEndian.Uint64(n[:])); left > 0; {
			k := min(left, int64(len(block)))
			if _, err := c.Write(block[:k]); err != nil {
				return
			}
			left -= k
		}
	})
	return sink, source
}

// cpuMeter adds up the CPU time of this process and of other processes
// by PID, from getrusage and /proc.
type cpuMeter struct {
	pids  []int
	start time.Duration
}

func startCPU(b *testing.B, pids []int) *cpuMeter {
	m := &cpuMeter{pids: pids}
	m.start = m.now(b)
	return m
}

func (m *cpuMeter) now(b *testing.B) time.Duration {
	total := selfCPU(b)
	for _, pid := range m.pids {
		total += procCPU(pid)
	}
	return total
}

func (m *cpuMeter) report(b *testing.B, bytes int64) {
	used := m.now(b) - m.start
	b.ReportMetric(used.Seconds()/(float64(bytes)/1e9), "cpu-s/GB")
}

// procCPU reads a process's user and system time from /proc/PID/stat, in
// clock ticks of 1/100 s (USER_HZ on Linux).
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14 and stime 15.
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// serveConf is a serve file for one client at 10.0.0.2, the server being
// 10.0.0.1/24 on port, whose [Egress] allows the host's loopback (at
// 10.0.0.1) and adds the lines of egress.
func serveConf(serverKey protocol.PrivateKey, port int, client protocol.PublicKey, egress string) string {
	return fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = 10.0.0.1/24
ListenPort = %d

[Peer]
PublicKey = %s
AllowedIPs = 10.0.0.2/32

[Egress]
Allow = 127.0.0.1/32
%s`, serverKey.Base64(), port, client, egress)
}

// atServer is the host loopback address a spelled as the client reaches
// it: the server's tunnel address, which serve maps to its loopback.
func atServer(a string) string {
	_, port, _ := net.SplitHostPort(a)
	return net.JoinHostPort("10.0.0.1", port)
}
