//go:build linux

package systemtest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

var (
	kvmAccel = flag.String("kvm.accel", "",
		"TestKernelWireGuard's QEMU accelerator: kvm, tcg, or empty to try kvm and fall back to tcg when the guest does not boot under it")
	kvmMiB = flag.Int("kvm.mib", 64, "MiB each way in TestKernelWireGuard's transfers")
)

// The guest's side of the tunnel; kvmguest has the same addresses.
var (
	guestTunnelAddr  = netip.MustParseAddr("10.77.0.2")
	wgboreTunnelAddr = netip.MustParseAddr("10.77.0.1")
)

// guestKernel is a Debian kernel whose modules include wireguard.ko.
type guestKernel struct {
	release string
	vmlinuz string
	modules []string // absolute paths, in the order they must load
}

// needKernelWireGuard skips unless the machine can boot a guest with
// the kernel's WireGuard: /dev/kvm, QEMU and a Debian kernel image.
// .ci/run installs the packages; /dev/kvm is the machine's.
func needKernelWireGuard(t *testing.T) guestKernel {
	t.Helper()
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("skipped: no /dev/kvm")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("skipped: qemu-system-x86_64 is not installed (apt-get install --no-install-recommends qemu-system-x86 linux-image-amd64)")
	}
	k, err := findGuestKernel("/boot", "/lib/modules")
	if err != nil {
		t.Skipf("skipped: %v (apt-get install --no-install-recommends linux-image-amd64)", err)
	}
	return k
}

// findGuestKernel picks an installed kernel that ships wireguard.ko,
// preferring the newest that is not a real-time build, and lists the
// modules the guest loads: WireGuard and the virtio NIC, each after its
// dependencies.
func findGuestKernel(boot, modules string) (guestKernel, error) {
	entries, _ := os.ReadDir(modules)
	var releases []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(boot, "vmlinuz-"+e.Name())); err == nil {
			releases = append(releases, e.Name())
		}
	}
	slices.SortFunc(releases, func(a, b string) int {
		if ra, rb := strings.Contains(a, "-rt-"), strings.Contains(b, "-rt-"); ra != rb {
			if ra {
				return 1
			}
			return -1
		}
		return strings.Compare(b, a)
	})
	for _, release := range releases {
		dir := filepath.Join(modules, release)
		order, err := moduleLoadOrder(filepath.Join(dir, "modules.dep"), "wireguard", "virtio_pci", "virtio_net")
		if err != nil {
			continue
		}
		k := guestKernel{release: release, vmlinuz: filepath.Join(boot, "vmlinuz-"+release)}
		for _, m := range order {
			k.modules = append(k.modules, filepath.Join(dir, m))
		}
		return k, nil
	}
	return guestKernel{}, fmt.Errorf("no kernel under %s with wireguard and virtio_net modules and a %s/vmlinuz", modules, boot)
}

// moduleLoadOrder reads modules.dep, where each module lists everything
// it needs, and orders the named modules and their dependencies so each
// loads after what it needs (modprobe loads a line's list from its end).
func moduleLoadOrder(depFile string, names ...string) ([]string, error) {
	text, err := os.ReadFile(depFile)
	if err != nil {
		return nil, err
	}
	deps := make(map[string][]string)
	byName := make(map[string]string)
	for _, line := range strings.Split(string(text), "\n") {
		mod, list, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(list)
		base := filepath.Base(mod)
		byName[base[:strings.Index(base, ".ko")]] = mod
	}
	var order []string
	for _, name := range names {
		mod, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("%s: no module %s", depFile, name)
		}
		list := deps[mod]
		for i := len(list) - 1; i >= 0; i-- {
			if !slices.Contains(order, list[i]) {
				order = append(order, list[i])
			}
		}
		if !slices.Contains(order, mod) {
			order = append(order, mod)
		}
	}
	return order, nil
}

// guestInitramfs builds kvmguest as a static /init and packs it with the
// kernel's modules into a gzip'd cpio archive. The archive is cached
// under the user's cache directory, named by the hash of its contents'
// inputs, so later runs only rebuild the (go-cached) binary.
func guestInitramfs(t *testing.T, k guestKernel) string {
	t.Helper()
	dir := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "init"), "./kvmguest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the guest's init: %v\n%s", err, out)
	}
	files := []cpioFile{{name: "modules", mode: unix.S_IFDIR | 0o755}}
	for i, m := range k.modules {
		files = append(files, cpioFile{name: fmt.Sprintf("modules/%02d-%s", i, filepath.Base(m)), mode: unix.S_IFREG | 0o644, path: m})
	}
	files = append(files, cpioFile{name: "init", mode: unix.S_IFREG | 0o755, path: filepath.Join(dir, "init")})
	key := sha256.New()
	for i := range files {
		if files[i].path != "" {
			b, err := os.ReadFile(files[i].path)
			if err != nil {
				t.Fatal(err)
			}
			files[i].data = b
		}
		fmt.Fprintf(key, "%s %o %d\n", files[i].name, files[i].mode, len(files[i].data))
		key.Write(files[i].data)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	cache = filepath.Join(cache, "wgbore-kvm")
	path := filepath.Join(cache, fmt.Sprintf("initramfs-%s-%x.cpio.gz", k.release, key.Sum(nil)[:8]))
	if _, err := os.Stat(path); err == nil {
		return path
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	z := gzip.NewWriter(&buf)
	if err := writeCPIO(z, files); err != nil {
		t.Fatal(err)
	}
	z.Close()
	tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return path
}

type cpioFile struct {
	name string
	mode uint32
	path string
	data []byte
}

// writeCPIO writes files in the "newc" format the kernel unpacks.
func writeCPIO(w io.Writer, files []cpioFile) error {
	pad := func(n int) []byte { return make([]byte, (4-n%4)%4) }
	entry := func(ino int, f cpioFile) error {
		nlink := 1
		if f.mode&unix.S_IFDIR != 0 {
			nlink = 2
		}
		hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, f.mode, 0, 0, nlink, 0, len(f.data), 0, 0, 0, 0, len(f.name)+1, 0)
		rec := append([]byte(hdr), f.name...)
		rec = append(rec, 0)
		rec = append(rec, pad(len(rec))...)
		rec = append(rec, f.data...)
		rec = append(rec, pad(len(f.data))...)
		_, err := w.Write(rec)
		return err
	}
	for i, f := range files {
		if err := entry(i+1, f); err != nil {
			return err
		}
	}
	return entry(0, cpioFile{name: "TRAILER!!!"})
}

// kvmGuest is a QEMU guest running kvmguest, driven over its serial
// console.
type kvmGuest struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	accel string
	lines chan string
	done  chan struct{}

	mu      sync.Mutex
	console []string // everything the console printed, for failures
}

// bootGuest starts the guest with its WireGuard port forwarded from
// hostPort on the host's loopback, and waits for it to say ready.
// User-mode networking maps 10.0.2.2 to the host's loopback, and the
// guest has no default route, so the guest reaches only loopback; it
// sends only to wgbore's port. (restrict=on would confine it further,
// but it also drops the guest's answers through the forwarded port.)
func bootGuest(t *testing.T, k guestKernel, initrd, accel string, hostPort int, conf string, wait time.Duration) (*kvmGuest, error) {
	cmd := exec.Command("qemu-system-x86_64",
		"-accel", accel, "-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", k.vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 wgguest="+conf,
		"-nic", fmt.Sprintf("user,model=virtio-net-pci,ipv6=off,hostfwd=udp:127.0.0.1:%d-:51820", hostPort))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	g := &kvmGuest{cmd: cmd, stdin: stdin, accel: accel, lines: make(chan string, 100), done: make(chan struct{})}
	go func() {
		defer close(g.done)
		defer close(g.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			g.mu.Lock()
			g.console = append(g.console, line)
			g.mu.Unlock()
			if strings.HasPrefix(line, "result ") || line == "ready" || strings.HasPrefix(line, "kvmguest: ") {
				g.lines <- line
			}
		}
		cmd.Wait()
	}()
	line, err := g.next(wait)
	if err != nil || line != "ready" {
		g.stop(t)
		return nil, fmt.Errorf("under %s, no ready from the guest in %v (%v %q); console:\n%s", accel, wait, err, line, g.output())
	}
	return g, nil
}

func (g *kvmGuest) next(wait time.Duration) (string, error) {
	select {
	case line, ok := <-g.lines:
		if !ok {
			return "", fmt.Errorf("qemu exited")
		}
		return line, nil
	case <-time.After(wait):
		return "", fmt.Errorf("timed out")
	}
}

func (g *kvmGuest) output() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.console, "\n")
}

// run sends one console command and returns its result line.
func (g *kvmGuest) run(t *testing.T, command string, wait time.Duration) string {
	t.Helper()
	if _, err := io.WriteString(g.stdin, command+"\n"); err != nil {
		t.Fatalf("guest console: %v", err)
	}
	line, err := g.next(wait)
	if err != nil {
		t.Fatalf("guest %q: %v; console:\n%s", command, err, g.output())
	}
	return strings.TrimPrefix(line, "result ")
}

// show returns the guest kernel's view of its peer: the latest
// handshake (Unix seconds) and bytes received.
func (g *kvmGuest) show(t *testing.T) (handshake, rx int64) {
	t.Helper()
	line := g.run(t, "show", 30*time.Second)
	if _, err := fmt.Sscanf(line, "handshake %d rx %d", &handshake, &rx); err != nil {
		t.Fatalf("guest show: %q", line)
	}
	return handshake, rx
}

// stop asks the guest to power off, and kills QEMU if it has not.
func (g *kvmGuest) stop(t *testing.T) {
	io.WriteString(g.stdin, "poweroff\n")
	g.stdin.Close()
	select {
	case <-g.done:
	case <-time.After(10 * time.Second):
		g.cmd.Process.Kill()
		<-g.done
	}
}

func keyHex(k []byte) string { return hex.EncodeToString(k) }

// TestKernelWireGuard proves wgbore against the Linux kernel's own
// WireGuard module, in a QEMU guest booted from Debian's kernel: the
// guest initiating to wgbore (wgbore responding, then relaying through a
// [TCPServerTunnel]), wgbore initiating to the guest, 64 MiB each way in
// both, a preshared key throughout, and a wrong one refused.
func TestKernelWireGuard(t *testing.T) {
	k := needKernelWireGuard(t)
	initrd := guestInitramfs(t, k)

	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	guestKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	var psk, wrongPSK protocol.PresharedKey
	rand.Read(psk[:])
	rand.Read(wrongPSK[:])
	guestPublic := guestKey.PublicKey()
	ourPublic := ours.PublicKey()
	// wgbore always listens on wgborePort, which the guest knows as
	// 10.0.2.2 (the host's loopback, to QEMU's user-mode network), and
	// reaches the guest's 51820 through the forwarded fwdPort.
	wgborePort, fwdPort := int(wgtest.FreeLoopbackUDPPort(t)), int(wgtest.FreeLoopbackUDPPort(t))
	conf := strings.Join([]string{keyHex(guestKey[:]), keyHex(ourPublic[:]), keyHex(psk[:]), fmt.Sprintf("10.0.2.2:%d", wgborePort)}, ",")

	var guest *kvmGuest
	switch *kvmAccel {
	case "":
		// KVM on some hosts (nested, under another hypervisor) hangs
		// the guest kernel early; the software emulator always works.
		guest, err = bootGuest(t, k, initrd, "kvm", fwdPort, conf, 10*time.Second)
		if err != nil {
			t.Logf("KVM did not boot the guest, so it runs under TCG (software emulation): %v", err)
			guest, err = bootGuest(t, k, initrd, "tcg", fwdPort, conf, 3*time.Minute)
		}
	default:
		guest, err = bootGuest(t, k, initrd, *kvmAccel, fwdPort, conf, 3*time.Minute)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { guest.stop(t) })
	t.Logf("guest kernel %s with its wireguard module, under %s", k.release, guest.accel)

	size := *kvmMiB << 20
	wait := 10 * time.Minute
	interfaceConf := fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = %s/32
ListenPort = %d
`, ours.Base64(), wgboreTunnelAddr, wgborePort)

	t.Run("guest initiates, wgbore responds", func(t *testing.T) {
		echoAddr, _ := hostEcho(t)
		// No Endpoint: wgbore can only answer.
		path := WriteFile(t, t.TempDir(), "wg0.conf", interfaceConf+fmt.Sprintf(`
[Peer]
PublicKey = %s
PresharedKey = %s
AllowedIPs = %s/32

[TCPServerTunnel]
ListenPort = 8080
Target = %s
`, guestPublic, psk.Base64(), guestTunnelAddr, echoAddr))
		d := startDaemon(t, path)
		before, _ := guest.show(t)
		res := guest.run(t, fmt.Sprintf("dial %s:8080 %d", wgboreTunnelAddr, size), wait)
		if !strings.HasPrefix(res, "ok ") {
			t.Fatalf("the guest's echo through wgbore's server tunnel: %s\nwgbore log:\n%s", res, d.log())
		}
		after, _ := guest.show(t)
		if after == before {
			t.Fatalf("the guest's latest handshake did not move (%d)", after)
		}
		if !d.logged("answered handshake initiation") {
			t.Fatalf("wgbore did not log answering the guest's initiation:\n%s", d.log())
		}
		t.Logf("the guest's kernel initiated; through wgbore's [TCPServerTunnel] to a host echo server: %s", res)
	})

	t.Run("wgbore initiates", func(t *testing.T) {
		path := WriteFile(t, t.TempDir(), "wg0.conf", interfaceConf+fmt.Sprintf(`
[Peer]
PublicKey = %s
PresharedKey = %s
Endpoint = 127.0.0.1:%d
AllowedIPs = %s/32

[Socks5]
BindAddress = 127.0.0.1:0

[UDPProxyTunnel]
BindAddress = 127.0.0.1:0
Target = %s:7
`, guestPublic, psk.Base64(), fwdPort, guestTunnelAddr, guestTunnelAddr))
		d := startDaemon(t, path)
		if h := fmt.Sprint(d.summary["handshakes"]); h != "1/1" {
			t.Fatalf("summary says handshakes %s, want 1/1; log:\n%s", h, d.log())
		}
		socks := d.addr(t, "socks5 ", 0)
		client := &http.Client{Timeout: wait, Transport: &http.Transport{Proxy: nil,
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return socksclient.Connect(ctx, socks, socksclient.Auth{}, netip.MustParseAddrPort(addr))
			}}}
		defer client.CloseIdleConnections()
		get := func(url string) []byte {
			t.Helper()
			res, err := client.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}

		start := time.Now()
		res, err := client.Get(fmt.Sprintf("http://%s/bytes/%d", guestTunnelAddr, size))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.New()
		n, err := io.Copy(sum, res.Body)
		res.Body.Close()
		if err != nil || n != int64(size) {
			t.Fatalf("download: %d of %d bytes: %v", n, size, err)
		}
		down := time.Since(start)
		if want := string(get(fmt.Sprintf("http://%s/bytes/%d?sum", guestTunnelAddr, size))); fmt.Sprintf("%x", sum.Sum(nil)) != want {
			t.Fatalf("download: sha256 %x, the guest sent %s", sum.Sum(nil), want)
		}

		start = time.Now()
		res, err = client.Post(fmt.Sprintf("http://%s/sha256", guestTunnelAddr), "application/octet-stream", peersite.BodyReader(int64(size)))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(res.Body)
		res.Body.Close()
		up := time.Since(start)
		sum.Reset()
		io.Copy(sum, peersite.BodyReader(int64(size)))
		if want := fmt.Sprintf("%x %d", sum.Sum(nil), size); string(got) != want {
			t.Fatalf("upload: the guest computed %q, want %q", got, want)
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		EchoThrough(t, func() (net.Conn, error) {
			return socksclient.Connect(ctx, socks, socksclient.Auth{}, netip.AddrPortFrom(guestTunnelAddr, 7))
		}, 1<<20)
		udpEchoThrough(t, func() (net.Conn, error) { return net.Dial("udp", d.addr(t, "udp ", 0)) })
		t.Logf("wgbore initiated; %d MiB from the guest's HTTP server in %v (%.1f MB/s) and to it in %v (%.1f MB/s), sha256 intact; TCP and UDP echo",
			size>>20, down.Round(time.Millisecond), float64(size)/1e6/down.Seconds(), up.Round(time.Millisecond), float64(size)/1e6/up.Seconds())
	})

	t.Run("a wrong preshared key fails the handshake", func(t *testing.T) {
		handshakeBefore, rxBefore := guest.show(t)
		path := WriteFile(t, t.TempDir(), "wg0.conf", interfaceConf+fmt.Sprintf(`
[Peer]
PublicKey = %s
PresharedKey = %s
Endpoint = 127.0.0.1:%d
AllowedIPs = %s/32
`, guestPublic, wrongPSK.Base64(), fwdPort, guestTunnelAddr))
		d := startDaemon(t, path, "-handshake-wait", "3s")
		if h := fmt.Sprint(d.summary["handshakes"]); h != "0/1" {
			t.Fatalf("summary says handshakes %s with the wrong preshared key, want 0/1; log:\n%s", h, d.log())
		}
		if !d.logged("rejected handshake response") {
			t.Fatalf("wgbore did not log rejecting the guest's response:\n%s", d.log())
		}
		handshakeAfter, rxAfter := guest.show(t)
		if rxAfter == rxBefore {
			t.Fatalf("the guest received nothing (rx %d): the initiation never reached it, so this proves nothing about the key", rxAfter)
		}
		if handshakeAfter != handshakeBefore {
			t.Fatalf("the guest's latest handshake moved (%d to %d) with a wrong preshared key", handshakeBefore, handshakeAfter)
		}
		t.Logf("wrong preshared key: the guest answered (its rx grew by %d bytes) and wgbore rejected the response; no handshake on either side", rxAfter-rxBefore)
	})
}
