package systemtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/uapi"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

// reloadDownload is the transfer that must survive the reloads: large
// enough that it is still in flight, held back by TCP flow control
// while the test does not read, when the reloads happen.
const reloadDownload = 32 << 20

// TestReloadKeepsTransfers is the acceptance of reload: a download
// through an unchanged peer and an unchanged SOCKS5 listener survives a
// SIGHUP that adds a peer and an HTTP proxy and removes a forwarder, and
// a broken file is refused, by SIGHUP and by `wgbore reload`, while the
// old configuration keeps serving.
func TestReloadKeepsTransfers(t *testing.T) {
	NeedTool(t, "curl")
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	second, _ := protocol.GeneratePrivateKey()
	dir := t.TempDir()
	uapiDir := ShortTempDir(t)

	socksSection := "[Socks5]\nBindAddress = 127.0.0.1:0\n"
	forwarder := "[TCPClientTunnel]\nBindAddress = 127.0.0.1:0\nTarget = 10.0.0.2:7\n"
	conf := WriteFile(t, dir, "wg0.conf", site.WGQuick(ours, socksSection+"\n"+forwarder))
	d := startDaemon(t, conf, "-uapi-dir", uapiDir)
	socks := d.addr(t, "socks5 ", 0)
	fwd := d.addr(t, "tcp ", 0)

	// The download starts and is left half read.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dl, err := socksclient.Connect(ctx, socks, socksclient.Auth{}, netip.MustParseAddrPort("10.0.0.2:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	fmt.Fprintf(dl, "GET /bytes/%d HTTP/1.1\r\nHost: 10.0.0.2\r\nConnection: close\r\n\r\n", reloadDownload)
	br := bufio.NewReader(dl)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 1<<20)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	// An echo connection through the forwarder that the reload removes:
	// it must be let finish, not cut.
	echo, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	echoOnce(t, echo, "before")

	// Reload 1: a second peer and an HTTP proxy are added, the
	// forwarder is removed.
	added := site.WGQuick(ours, socksSection+"\n[http]\nBindAddress = 127.0.0.1:0\n") +
		"\n[Peer]\nPublicKey = " + second.PublicKey().String() + "\nAllowedIPs = 10.9.0.0/24\n"
	WriteFile(t, dir, "wg0.conf", added)
	hup(t, d)
	waitLogged(t, d, "reloaded", 1)
	for _, want := range []string{"reload: peer " + second.PublicKey().String() + " added", "reload: tcp " + fwd} {
		if !d.loggedPrefix(want) {
			t.Fatalf("reload did not log %q:\n%s", want, d.log())
		}
	}
	httpProxy := d.startedAddr(t, "reload: http ")
	if out := mustCurl(t, "--max-time", "10", "-x", "http://"+httpProxy, "http://10.0.0.2/echo"); out != "GET " {
		t.Fatalf("through the added HTTP proxy: %q", out)
	}
	if c, err := net.DialTimeout("tcp", fwd, 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("the removed forwarder %s still accepts", fwd)
	}
	echoOnce(t, echo, "after its section was removed")
	st := uapiState(t, uapiDir, "wg0")
	if len(st.Peers) != 2 {
		t.Fatalf("after adding a peer the engine has %d peers", len(st.Peers))
	}

	// Reload 2: a broken file, by SIGHUP and by the command. Nothing
	// changes.
	WriteFile(t, dir, "wg0.conf", added+"\n[Peer]\nPublicKey = not-a-key\n")
	hup(t, d)
	waitLogged(t, d, "reload rejected: still running the previous configuration", 1)
	if log := d.log(); !strings.Contains(log, "wg0.conf:") || !strings.Contains(log, "PublicKey") {
		t.Fatalf("the rejection does not point at the line:\n%s", log)
	}
	out, err := exec.Command(wgboreBinary(t), "reload", "-uapi-dir", uapiDir, "wg0").CombinedOutput()
	if code := exitCode(err); code != exitUsage || !strings.Contains(string(out), "wg0.conf:") {
		t.Fatalf("wgbore reload of a broken file: exit %d, want %d, with file:line:\n%s", code, exitUsage, out)
	}
	if out := mustCurl(t, "--max-time", "10", "--socks5-hostname", socks, "http://10.0.0.2/echo"); out != "GET " {
		t.Fatalf("SOCKS5 after the refused reload: %q", out)
	}
	if out := mustCurl(t, "--max-time", "10", "-x", "http://"+httpProxy, "http://10.0.0.2/echo"); out != "GET " {
		t.Fatalf("HTTP proxy after the refused reload: %q", out)
	}

	// Reload 3, by the command: the second peer goes again.
	WriteFile(t, dir, "wg0.conf", site.WGQuick(ours, socksSection+"\n[http]\nBindAddress = 127.0.0.1:0\n"))
	out, err = exec.Command(wgboreBinary(t), "reload", "-uapi-dir", uapiDir, "wg0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "peer "+second.PublicKey().String()+" removed") {
		t.Fatalf("wgbore reload: %v\n%s", err, out)
	}
	if st := uapiState(t, uapiDir, "wg0"); len(st.Peers) != 1 || !st.Peers[0].PublicKey.Equal(site.PublicKey) {
		t.Fatalf("after removing the second peer: %+v", st.Peers)
	}

	// The download, through all of it, completes intact.
	if err := peersite.CheckBody(io.MultiReader(strings.NewReader(string(first)), resp.Body), reloadDownload); err != nil {
		t.Fatalf("the download across the reloads: %v", err)
	}
	if d.logged("a listener failed: shutting down") {
		t.Fatalf("a reload failed the process:\n%s", d.log())
	}
}

// echoOnce writes a line to an echo connection and reads it back.
func echoOnce(t *testing.T, c net.Conn, when string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := "echo " + when + "\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("echo %s: %v", when, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo %s: %q %v", when, got, err)
	}
}

func hup(t *testing.T, d *daemon) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// waitLogged waits until msg has been logged n times.
func waitLogged(t *testing.T, d *daemon, msg string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for d.countLogged(msg) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%q not logged %d times:\n%s", msg, n, d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) countLogged(msg string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, l := range d.lines {
		if l["msg"] == msg {
			n++
		}
	}
	return n
}

func (d *daemon) loggedPrefix(prefix string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.lines {
		if m, _ := l["msg"].(string); strings.HasPrefix(m, prefix) {
			return true
		}
	}
	return false
}

// startedAddr returns the address of the listener a reload logged as
// "<prefix>ADDR started".
func (d *daemon) startedAddr(t *testing.T, prefix string) string {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.lines {
		m, _ := l["msg"].(string)
		if rest, ok := strings.CutPrefix(m, prefix); ok && strings.HasSuffix(rest, " started") {
			return strings.Fields(rest)[0]
		}
	}
	t.Fatalf("no %q…started in the log:\n%s", prefix, d.log())
	return ""
}

// uapiState reads a running tunnel's state over its UAPI socket.
func uapiState(t *testing.T, dir, name string) *uapi.DeviceState {
	t.Helper()
	c := dialUAPI(t, dir, name)
	defer c.Close()
	st, err := uapi.Get(c)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// dialUAPI connects to the UAPI socket of the tunnel name in dir, as wg
// does, with 10 s for the whole exchange.
func dialUAPI(t *testing.T, dir, name string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("unix", filepath.Join(dir, name+".sock"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}
