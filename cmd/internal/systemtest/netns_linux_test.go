//go:build linux

package systemtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

var netnsRekey = flag.Bool("netns.rekey", false,
	"TestKernelTCPBehindWireGuardGo also waits for a real rekey (RekeyAfterTime, 120 s) with traffic flowing")

// netns is a network namespace this test made, deleted when it ends.
// Nothing is added to the host's own interfaces: all traffic stays on
// the namespace's loopback and its WireGuard interface.
type netns struct {
	name string
	fd   *os.File
}

// needNetnsTools skips unless the test can make namespaces and run
// wireguard-go with a real TUN: root, ip (iproute2), wireguard-go and wg.
// .ci/run installs them, so on CI this runs.
func needNetnsTools(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("skipped: network namespaces and TUN devices need root")
	}
	for _, tool := range []string{"ip", "wireguard-go", "wg"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s is not installed (apt-get install iproute2 wireguard-go wireguard-tools)", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipped: no /dev/net/tun: %v", err)
	}
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	name := fmt.Sprintf("wgb%d", rand.Uint32()%1e8)
	mustRun(t, "ip", "netns", "add", name)
	n := &netns{name: name}
	t.Cleanup(func() {
		if n.fd != nil {
			n.fd.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	mustRun(t, "ip", "-n", name, "link", "set", "lo", "up")
	fd, err := os.Open(filepath.Join("/var/run/netns", name))
	if err != nil {
		t.Fatal(err)
	}
	n.fd = fd
	return n
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// do runs f on an OS thread moved into the namespace: sockets f opens
// belong to it, and keep belonging to it when other threads use them.
// The thread is never unlocked, so it ends with the goroutine and no
// other goroutine ever runs inside the namespace by accident.
func (n *netns) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(n.fd.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// command runs name inside the namespace.
func (n *netns) command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// kernelSite is wireguard-go on a real TUN inside a namespace, with
// servers on its tunnel address that Linux's own TCP and UDP serve.
type kernelSite struct {
	ns     *netns
	iface  string
	key    protocol.PrivateKey
	port   int
	addr   netip.Addr // the site's tunnel address
	ours   netip.Addr // ours, routed through the interface
	closed sync.WaitGroup
}

// kernelSiteInNetns is the usual start of a test against Linux's TCP: a
// namespace of the test's own, the kernel site in it, and the key the
// site expects of our end.
func kernelSiteInNetns(t *testing.T) (*netns, *kernelSite, protocol.PrivateKey) {
	t.Helper()
	needNetnsTools(t)
	ns := newNetns(t)
	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return ns, startKernelSite(t, ns, ours.PublicKey()), ours
}

// startKernelSite brings wireguard-go up as iface in ns, configured with
// wg and ip, and serves on its tunnel address: TCP echo (7), peersite's
// HTTP server (80) and UDP echo (7).
func startKernelSite(t *testing.T, ns *netns, ours protocol.PublicKey) *kernelSite {
	t.Helper()
	s := &kernelSite{ns: ns, iface: ns.name, addr: netip.MustParseAddr("10.77.0.2"), ours: netip.MustParseAddr("10.77.0.1")}
	var err error
	if s.key, err = protocol.GeneratePrivateKey(); err != nil {
		t.Fatal(err)
	}
	wggo := ns.command("wireguard-go", "-f", s.iface)
	var log bytes.Buffer
	wggo.Stdout, wggo.Stderr = &log, &log
	if err := wggo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		wggo.Process.Signal(unix.SIGTERM)
		done := make(chan struct{})
		go func() { wggo.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			wggo.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join("/var/run/wireguard", s.iface+".sock")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("wireguard-go made no UAPI socket for %s: %s", s.iface, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(s.key.Base64()), 0o600); err != nil {
		t.Fatal(err)
	}
	s.port = freePortIn(t, ns)
	mustRun(t, "ip", "netns", "exec", ns.name, "wg", "set", s.iface, "private-key", keyFile, "listen-port", strconv.Itoa(s.port),
		"peer", ours.String(), "allowed-ips", netip.PrefixFrom(s.ours, 32).String())
	mustRun(t, "ip", "-n", ns.name, "addr", "add", "10.77.0.2/24", "dev", s.iface)
	mustRun(t, "ip", "-n", ns.name, "link", "set", s.iface, "up")

	err = ns.do(func() error {
		echo, err := net.Listen("tcp", netip.AddrPortFrom(s.addr, 7).String())
		if err != nil {
			return err
		}
		web, err := net.Listen("tcp", netip.AddrPortFrom(s.addr, 80).String())
		if err != nil {
			return err
		}
		udp, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.addr, 7)))
		if err != nil {
			return err
		}
		t.Cleanup(func() { echo.Close(); web.Close(); udp.Close(); s.closed.Wait() })
		s.serve(func() {
			for {
				c, err := echo.Accept()
				if err != nil {
					return
				}
				s.serve(func() { defer c.Close(); io.Copy(c, c) })
			}
		})
		srv := &http.Server{Handler: peersite.Handler(), ReadHeaderTimeout: 10 * time.Second}
		s.serve(func() { srv.Serve(web) })
		t.Cleanup(func() { srv.Close() })
		s.serve(func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := udp.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				udp.WriteToUDPAddrPort(buf[:n], from)
			}
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *kernelSite) serve(f func()) {
	s.closed.Add(1)
	go func() { defer s.closed.Done(); f() }()
}

// freePortIn finds a UDP port free on the namespace's loopback now.
func freePortIn(t *testing.T, ns *netns) int {
	t.Helper()
	var port int
	err := ns.do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		port = c.LocalAddr().(*net.UDPAddr).Port
		return c.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// dialIn opens a TCP connection from inside the namespace.
func (n *netns) dialIn(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// TestKernelTCPBehindWireGuardGo runs wgbore up inside a network
// namespace against Debian's wireguard-go on a real TUN, so the far end
// of every TCP connection is the Linux kernel's own stack: 256 MiB each
// way through SOCKS5 with sha256 checked, 1,000 short connections, and
// a UDP echo through a UDPProxyTunnel.
func TestKernelTCPBehindWireGuardGo(t *testing.T) {
	ns, site, ours := kernelSiteInNetns(t)
	conf := fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = %s/32

[Peer]
PublicKey = %s
Endpoint = 127.0.0.1:%d
AllowedIPs = %s/32

[Socks5]
BindAddress = 127.0.0.1:0

[UDPProxyTunnel]
BindAddress = 127.0.0.1:0
Target = %s:7
`, ours.Base64(), site.ours, site.key.PublicKey(), site.port, site.addr, site.addr)
	path := WriteFile(t, t.TempDir(), "wg0.conf", conf)
	d := runDaemon(t, ns.command(wgboreBinary(t), "up", "-c", path, "-log-format", "json", "-log-level", "info", "-uapi-dir", ShortTempDir(t)))
	if h := fmt.Sprint(d.summary["handshakes"]); h != "1/1" {
		t.Fatalf("summary says handshakes %s, want 1/1", h)
	}
	socks := d.addr(t, "socks5 ", 0)
	dialSOCKS := func(ctx context.Context, target netip.AddrPort) (net.Conn, error) {
		c, err := ns.dialIn(ctx, socks)
		if err != nil {
			return nil, err
		}
		if _, err := socksclient.ConnectOn(c, socksclient.Auth{}, target); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	client := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{Proxy: nil,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			return dialSOCKS(ctx, ap)
		}}}
	defer client.CloseIdleConnections()

	const size = 256 << 20
	t.Run("download", func(t *testing.T) {
		start := time.Now()
		res, err := client.Get(fmt.Sprintf("http://%s/bytes/%d", site.addr, size))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if err := peersite.CheckBody(res.Body, size); err != nil {
			t.Fatalf("download: %v", err)
		}
		t.Logf("256 MiB from Linux TCP, intact, %.1f MB/s", size/1e6/time.Since(start).Seconds())
	})
	t.Run("upload", func(t *testing.T) {
		start := time.Now()
		res, err := client.Post(fmt.Sprintf("http://%s/sha256", site.addr), "application/octet-stream", peersite.BodyReader(size))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		got, _ := io.ReadAll(res.Body)
		sum := sha256.New()
		io.Copy(sum, peersite.BodyReader(size))
		if want := fmt.Sprintf("%x %d", sum.Sum(nil), size); string(got) != want {
			t.Fatalf("upload: the server computed %q, want %q", got, want)
		}
		t.Logf("256 MiB to Linux TCP, intact, %.1f MB/s", size/1e6/time.Since(start).Seconds())
	})
	t.Run("1000 short connections", func(t *testing.T) {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 1000)
		sem := make(chan struct{}, 50)
		for i := range 1000 {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				c, err := dialSOCKS(ctx, netip.AddrPortFrom(site.addr, 7))
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				msg := []byte(fmt.Sprintf("connection %d", i))
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("echo %q: %v", got, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		t.Logf("1,000 connections, 50 at a time, each an echo, in %v", time.Since(start).Round(time.Millisecond))
	})
	t.Run("rekey with traffic flowing", func(t *testing.T) {
		if !*netnsRekey {
			t.Skip("skipped: a real rekey comes 120 s into the session and the protocol has no shorter test setting; run with -netns.rekey")
		}
		handshake := func() string {
			out := mustRun(t, "ip", "netns", "exec", ns.name, "wg", "show", site.iface, "latest-handshakes")
			return strings.TrimSpace(out)
		}
		first := handshake()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		c, err := dialSOCKS(ctx, netip.AddrPortFrom(site.addr, 7))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start, echoes := time.Now(), 0
		for handshake() == first {
			if time.Since(start) > 3*time.Minute {
				t.Fatalf("no new handshake in 3 minutes; wg show still says %q", first)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			msg := []byte(fmt.Sprintf("echo %d", echoes))
			got := make([]byte, len(msg))
			if _, err := c.Write(msg); err != nil {
				t.Fatalf("echo %d: %v", echoes, err)
			}
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echo %d: %q, %v", echoes, got, err)
			}
			echoes++
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("wg show's latest handshake moved from %q to %q after %v; %d echoes on one connection meanwhile, none lost", first, handshake(), time.Since(start).Round(time.Second), echoes)
	})
	t.Run("udp echo", func(t *testing.T) {
		udpAddr := d.addr(t, "udp ", 0)
		err := ns.do(func() error {
			c, err := net.Dial("udp", udpAddr)
			if err != nil {
				return err
			}
			defer c.Close()
			for i := range 5 {
				msg := []byte(fmt.Sprintf("datagram %d", i))
				c.Write(msg)
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				got := make([]byte, 100)
				n, err := c.Read(got)
				if err == nil && bytes.Equal(got[:n], msg) {
					return nil
				}
			}
			return fmt.Errorf("no UDP echo through %s", udpAddr)
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
