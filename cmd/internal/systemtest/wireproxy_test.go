package systemtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// wireproxyStyle follows the layout of wireproxy's README sample, comments
// and all, with every section wireproxy knows, filled with this test's
// keys and addresses. Like the sample, its [Peer] has no AllowedIPs.
const wireproxyStyle = `# The [Interface] and [Peer] configurations follow the same semantics and meaning
# of a wg-quick configuration.
[Interface]
Address = 10.0.0.1/32 # The subnet should be /32 and /128 for IPv4 and v6 respectively
# MTU = 1420 (optional)
PrivateKey = %s
DNS = 10.0.0.2

[Peer]
PublicKey = %s
Endpoint = %s
# PersistentKeepalive = 25 (optional)

# TCPClientTunnel is a tunnel listening on your machine
[TCPClientTunnel]
BindAddress = 127.0.0.1:0
Target = site.tunnel.test:7

# TCPServerTunnel is a tunnel listening on wireguard
[TCPServerTunnel]
ListenPort = 3422
Target = %s

# STDIOTunnel connects stdin and stdout to the target, for ssh's ProxyCommand
[STDIOTunnel]
Target = 10.0.0.2:7

[Socks5]
BindAddress = 127.0.0.1:0
#Username = ...
#Password = ...

[http]
BindAddress = 127.0.0.1:0

[UDPProxyTunnel]
BindAddress = 127.0.0.1:0
Target = 10.0.0.2:7
InactivityTimeout = 30 # If its set to 0, it will never timeout

[Resolve]
ResolveStrategy = auto
`

// TestWireproxyConfig runs a wireproxy-style file unchanged, including
// its STDIOTunnel: the process's stdin and stdout become the tunnel, as
// under ssh -o ProxyCommand, and it exits when stdin ends.
func TestWireproxyConfig(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	tcpEcho, _ := hostEcho(t)
	dir := t.TempDir()
	conf := WriteFile(t, dir, "wireproxy.conf", fmt.Sprintf(wireproxyStyle, ours.Base64(), site.PublicKey, site.Endpoint(), tcpEcho))

	cmd := exec.Command(wgboreBinary(t), "up", "-c", conf, "-log-format", "json", "-uapi-dir", ShortTempDir(t))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	d := runDaemon(t, cmd)

	// The STDIO tunnel echoes through the peer.
	out := bufio.NewReader(stdout)
	for _, line := range []string{"SSH-2.0-hello\n", "second line\n"} {
		io.WriteString(stdin, line)
		got, err := out.ReadString('\n')
		if err != nil || got != line {
			t.Fatalf("stdio tunnel: got %q, %v; want %q", got, err, line)
		}
	}
	// The other sections work alongside it.
	if body := mustCurl(t, "--socks5-hostname", d.addr(t, "socks5 ", 0), "http://site.tunnel.test/bytes/100"); body != string(peersite.Body(100)) {
		t.Fatalf("socks5: got %q", body)
	}
	if body := mustCurl(t, "-x", "http://"+d.addr(t, "http ", 0), "http://10.0.0.2/echo"); body != "GET " {
		t.Fatalf("http: got %q", body)
	}
	EchoThrough(t, func() (net.Conn, error) { return net.Dial("tcp", d.addr(t, "tcp ", 0)) }, 64<<10)
	udpEchoThrough(t, func() (net.Conn, error) { return net.Dial("udp", d.addr(t, "udp ", 0)) })

	// End of stdin ends the session and, as with ssh's ProxyCommand,
	// the process.
	stdin.Close()
	if rest, _ := io.ReadAll(out); len(rest) != 0 {
		t.Fatalf("stdout after EOF: %q", rest)
	}
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("still running after stdin closed; log:\n%s", d.log())
	}
	if d.code != exitOK {
		t.Fatalf("exit %d; log:\n%s", d.code, d.log())
	}
	if log := d.log(); !strings.Contains(log, "has no AllowedIPs") {
		t.Fatalf("no warning about the defaulted AllowedIPs; log:\n%s", log)
	}
}
