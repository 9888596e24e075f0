package systemtest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/uapi"
)

// TestWGToolAgainstUp: the real wg tool sees and changes a running
// `wgbore up` through its UAPI socket, and the changes show in traffic
// through the tunnel. wg finds sockets only in /var/run/wireguard, so the
// test needs to write there (CI runs as root).
func TestWGToolAgainstUp(t *testing.T) {
	wg := NeedTool(t, "wg")
	NeedTool(t, "curl")
	if err := os.MkdirAll(uapi.SocketDir, 0o755); err != nil || dirWritable(uapi.SocketDir) != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not writable, and CI runs as root: %v", uapi.SocketDir, err)
		}
		t.Skipf("%s is not writable (not root?): wg looks for sockets only there", uapi.SocketDir)
	}
	var suffix [4]byte
	rand.Read(suffix[:])
	name := "wgbt" + hex.EncodeToString(suffix[:])

	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	conf := WriteFile(t, t.TempDir(), "wg0.conf", site.WGQuick(ours, "[Socks5]\nBindAddress = 127.0.0.1:0\n"))
	d := startDaemon(t, conf, "-interface-name", name, "-uapi-dir", uapi.SocketDir)
	socks := d.addr(t, "socks5 ", 0)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(wg, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("wg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	fetch := func() (string, int) {
		out, _, code := curlRun(t, "--max-time", "5", "--socks5-hostname", socks, "http://10.0.0.2/echo")
		return out, code
	}

	if out, code := fetch(); code != 0 || out != "GET " {
		t.Fatalf("before any change: %q, curl exit %d", out, code)
	}
	show := run("show", name)
	for _, want := range []string{"peer: " + site.PublicKey.String(), "endpoint: " + site.Endpoint(), "latest handshake:", "transfer:", "allowed ips: 10.0.0.2/32, fd00::2/128"} {
		if !strings.Contains(show, want) {
			t.Fatalf("wg show %s lacks %q:\n%s", name, want, show)
		}
	}

	// Routing only IPv6 to the peer takes 10.0.0.2 out of the tunnel.
	run("set", name, "peer", site.PublicKey.String(), "allowed-ips", "fd00::2/128")
	if out, code := fetch(); code == 0 {
		t.Fatalf("after wg set allowed-ips fd00::2/128, 10.0.0.2 still answered %q", out)
	}
	run("set", name, "peer", site.PublicKey.String(), "allowed-ips", "10.0.0.2/32,fd00::2/128")
	if out, code := fetch(); code != 0 || out != "GET " {
		t.Fatalf("after restoring allowed-ips: %q, curl exit %d", out, code)
	}

	// showconf round-trips through setconf, and remove removes.
	conf1 := run("showconf", name)
	f := WriteFile(t, t.TempDir(), "shown.conf", conf1)
	run("setconf", name, f)
	if conf2 := run("showconf", name); conf2 != conf1 {
		t.Fatalf("showconf after setconf differs:\n%s\n---\n%s", conf1, conf2)
	}
	run("set", name, "peer", site.PublicKey.String(), "remove")
	if strings.Contains(run("show", name), "peer:") {
		t.Fatal("wg show still lists the removed peer")
	}
	if out, code := fetch(); code == 0 {
		t.Fatalf("after wg set remove, 10.0.0.2 still answered %q", out)
	}
}

// dirWritable reports whether dir accepts a new file.
func dirWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".wgbore-probe-")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}
