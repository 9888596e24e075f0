package systemtest

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// TestPortableUDP runs `wgbore up` built with -tags portableudp, so that
// its host sockets take the path of Windows, macOS and the BSDs (one
// datagram per system call through the net package), against a
// wireguard-go peer, and moves 64 MiB each way through curl: down
// through the SOCKS5 proxy, up through the HTTP proxy, both checked byte
// for byte.
func TestPortableUDP(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds a second binary and moves 128 MiB")
	}
	NeedTool(t, "curl")
	conf := proxiedSite(t)
	cmd := exec.Command(wgboreBinaryTagged(t, "portableudp"), "up", "-c", conf, "-log-format", "json", "-log-level", "debug", "-uapi-dir", ShortTempDir(t))
	cmd.Stdout = io.Discard
	d := runDaemon(t, cmd)
	if !strings.Contains(d.log(), `"path":"portable"`) {
		t.Fatalf("the binary built with portableudp did not log the portable path:\n%s", d.log())
	}

	curlBothWays(t, d, 64<<20)
}

// proxiedSite starts a wireguard-go peer site and writes a config for
// it with a SOCKS5 and an HTTP proxy on loopback; it returns the file.
func proxiedSite(t *testing.T) string {
	t.Helper()
	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	return WriteFile(t, t.TempDir(), "wg0.conf", site.WGQuick(ours, "[Socks5]\nBindAddress = 127.0.0.1:0\n\n[http]\nBindAddress = 127.0.0.1:0\n"))
}

// curlBothWays moves size bytes each way through d with curl: down from
// the peer site through d's first SOCKS5 proxy, compared byte for byte,
// and up through its first HTTP proxy, checked by the site's sha256.
func curlBothWays(t *testing.T, d *daemon, size int) {
	t.Helper()
	out := mustCurl(t, "--socks5-hostname", d.addr(t, "socks5 ", 0), fmt.Sprintf("http://10.0.0.2/bytes/%d", size))
	if !bytes.Equal([]byte(out), peersite.Body(size)) {
		t.Fatalf("download: %d bytes that differ from the site's %d", len(out), size)
	}
	body := make([]byte, size)
	rand.Read(body)
	f := WriteFile(t, t.TempDir(), "body", string(body))
	want := fmt.Sprintf("%s %d", sha256Hex(body), len(body))
	if got := mustCurl(t, "-x", "http://"+d.addr(t, "http ", 0), "--data-binary", "@"+f, "http://10.0.0.2/sha256"); got != want {
		t.Fatalf("upload: the site saw %q, want %q", got, want)
	}
}
