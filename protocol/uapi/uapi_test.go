package uapi

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/udpbind"
)

type discardPackets struct{}

func (discardPackets) DeliverPackets([][]byte) {}

func newEngine(t *testing.T) *protocol.Engine {
	t.Helper()
	bind, err := udpbind.Listen(udpbind.Config{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	e, err := protocol.New(protocol.Config{PrivateKey: k, Bind: bind, Packets: discardPackets{}})
	if err != nil {
		bind.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// serve runs a Handler for dev on a fresh socket under t.TempDir and returns a
// connected client.
func serve(t *testing.T, dev Device) *client {
	t.Helper()
	return serveHandler(t, NewHandler(dev))
}

// serveHandler is serve for a Handler of the test's own.
func serveHandler(t *testing.T, h *Handler) *client {
	t.Helper()
	l, err := Listen(t.TempDir(), "wgt", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHandler(ctx, l, h, nil) }()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		c.Close()
	})
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// do sends one request and returns the reply's lines before errno, and
// errno.
func (c *client) do(req string) ([]string, int) {
	c.t.Helper()
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.c.Write([]byte(req)); err != nil {
		c.t.Fatal(err)
	}
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		if v, ok := strings.CutPrefix(line, "errno="); ok {
			var errno int
			fmt.Sscan(v, &errno)
			if blank, err := c.r.ReadString('\n'); err != nil || blank != "\n" {
				c.t.Fatalf("reply not ended by an empty line: %q %v", blank, err)
			}
			return lines, errno
		}
		lines = append(lines, line)
	}
}

func (c *client) set(lines ...string) int {
	c.t.Helper()
	_, errno := c.do("set=1\n" + strings.Join(lines, "\n") + "\n\n")
	return errno
}

func (c *client) mustSet(lines ...string) {
	c.t.Helper()
	if errno := c.set(lines...); errno != 0 {
		c.t.Fatalf("set %q: errno=%d", lines, errno)
	}
}

func (c *client) get() []string {
	c.t.Helper()
	lines, errno := c.do("get=1\n\n")
	if errno != 0 {
		c.t.Fatalf("get: errno=%d", errno)
	}
	return lines
}

func newPublic(t *testing.T) protocol.PublicKey {
	t.Helper()
	k, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func hexKey(k [protocol.KeySize]byte) string { return hex.EncodeToString(k[:]) }

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func mustPeer(t *testing.T, e *protocol.Engine, k protocol.PublicKey) protocol.PeerStatus {
	t.Helper()
	st, ok := e.Peer(k)
	if !ok {
		t.Fatalf("peer %s missing", k)
	}
	return st
}

func TestSetThenGet(t *testing.T) {
	e := newEngine(t)
	c := serve(t, e)
	priv, _ := protocol.GeneratePrivateKey()
	psk, _ := protocol.GeneratePresharedKey()
	peer := newPublic(t)

	c.mustSet(
		"private_key="+hexKey(priv),
		fmt.Sprintf("listen_port=%d", e.ListenPort()),
		"fwmark=0",
		"public_key="+hexKey(peer),
		"protocol_version=1",
		"preshared_key="+hexKey(psk),
		"endpoint=127.0.0.1:51820",
		"persistent_keepalive_interval=25",
		"allowed_ip=10.0.0.0/24",
		"allowed_ip=fd00::1/128",
	)
	if !e.PublicKey().Equal(priv.PublicKey()) {
		t.Fatal("private key not applied")
	}
	st := mustPeer(t, e, peer)
	if st.Endpoint != netip.MustParseAddrPort("127.0.0.1:51820") || st.PersistentKeepalive != 25*time.Second || !st.HasPresharedKey {
		t.Fatalf("peer status %+v", st)
	}
	if !slices.Equal(st.AllowedIPs, prefixes("10.0.0.0/24", "fd00::1/128")) {
		t.Fatalf("allowed IPs %v", st.AllowedIPs)
	}

	want := []string{
		"private_key=" + hexKey(priv),
		fmt.Sprintf("listen_port=%d", e.ListenPort()),
		"public_key=" + hexKey(peer),
		"preshared_key=" + hexKey(psk),
		"protocol_version=1",
		"endpoint=127.0.0.1:51820",
		"last_handshake_time_sec=0",
		"last_handshake_time_nsec=0",
		"tx_bytes=0",
		"rx_bytes=0",
		"persistent_keepalive_interval=25",
		"allowed_ip=10.0.0.0/24",
		"allowed_ip=fd00::1/128",
	}
	got := c.get()
	// Sending a keepalive may already have counted tx bytes.
	for i, l := range got {
		if strings.HasPrefix(l, "tx_bytes=") {
			got[i] = "tx_bytes=0"
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("get:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSetIsAllOrNothing(t *testing.T) {
	e := newEngine(t)
	c := serve(t, e)
	peer := newPublic(t)
	priv, _ := protocol.GeneratePrivateKey()
	before := e.PublicKey()
	for _, bad := range [][]string{
		{"public_key=" + hexKey(peer), "allowed_ip=10.0.0.0/33"},
		{"private_key=" + hexKey(priv), "public_key=" + hexKey(peer), "endpoint=nohost"},
		{"public_key=" + hexKey(peer), "protocol_version=2"},
		{"public_key=" + hexKey(peer), "listen_port=1"}, // a device key in a peer section
		{"public_key=" + hexKey(peer), "remove=false"},
		{"private_key=" + hexKey(priv), "fwmark=7"},
		{"private_key=" + hexKey(priv), "public_key=zz"},
		{"private_key=" + hexKey(priv), "bogus"},
	} {
		if errno := c.set(bad...); errno == 0 {
			t.Errorf("set %q: errno=0, want an error", bad)
		}
		if len(e.Peers()) != 0 || !e.PublicKey().Equal(before) {
			t.Fatalf("set %q was partly applied", bad)
		}
	}
	// The connection is still in step after the errors.
	c.mustSet("public_key="+hexKey(peer), "allowed_ip=10.0.0.0/24")
	mustPeer(t, e, peer)
	if _, errno := c.do("frobnicate=1\n\n"); errno != errnoInvalid {
		t.Fatalf("unknown operation: errno=%d", errno)
	}
	c.get()
}

func TestAllowedIPsAddUnlessReplaced(t *testing.T) {
	e := newEngine(t)
	c := serve(t, e)
	a, b := newPublic(t), newPublic(t)
	c.mustSet("public_key="+hexKey(a), "allowed_ip=10.0.0.0/24")
	c.mustSet("public_key="+hexKey(a), "allowed_ip=10.1.0.0/24")
	if got := mustPeer(t, e, a).AllowedIPs; !slices.Equal(got, prefixes("10.0.0.0/24", "10.1.0.0/24")) {
		t.Fatalf("after adding: %v", got)
	}
	c.mustSet("public_key="+hexKey(a), "replace_allowed_ips=true", "allowed_ip=10.2.0.0/24")
	if got := mustPeer(t, e, a).AllowedIPs; !slices.Equal(got, prefixes("10.2.0.0/24")) {
		t.Fatalf("after replacing: %v", got)
	}
	// A prefix moves to the peer that names it last.
	c.mustSet("public_key="+hexKey(b), "allowed_ip=10.2.0.0/24", "allowed_ip=10.3.0.0/24")
	if got := mustPeer(t, e, a).AllowedIPs; len(got) != 0 {
		t.Fatalf("a kept %v", got)
	}
	if got := mustPeer(t, e, b).AllowedIPs; !slices.Equal(got, prefixes("10.2.0.0/24", "10.3.0.0/24")) {
		t.Fatalf("b has %v", got)
	}
}

func TestRemoveUpdateOnlyReplacePeers(t *testing.T) {
	e := newEngine(t)
	c := serve(t, e)
	a, b, x := newPublic(t), newPublic(t), newPublic(t)
	psk, _ := protocol.GeneratePresharedKey()
	c.mustSet("public_key="+hexKey(a), "preshared_key="+hexKey(psk), "endpoint=127.0.0.1:9", "allowed_ip=10.0.0.0/24",
		"public_key="+hexKey(b), "allowed_ip=10.1.0.0/24")

	// update_only does not create, but updates.
	c.mustSet("public_key="+hexKey(x), "update_only=true", "allowed_ip=10.9.0.0/24")
	if _, ok := e.Peer(x); ok {
		t.Fatal("update_only created a peer")
	}
	c.mustSet("public_key="+hexKey(a), "update_only=true", "persistent_keepalive_interval=5")
	st := mustPeer(t, e, a)
	if st.PersistentKeepalive != 5*time.Second || !st.HasPresharedKey || st.Endpoint.Port() != 9 ||
		!slices.Equal(st.AllowedIPs, prefixes("10.0.0.0/24")) {
		t.Fatalf("update_only lost state: %+v", st)
	}
	if got, _ := e.PeerPresharedKey(a); !got.Equal(psk) {
		t.Fatal("preshared key changed")
	}

	c.mustSet("public_key="+hexKey(b), "remove=true")
	if _, ok := e.Peer(b); ok {
		t.Fatal("remove kept the peer")
	}

	// replace_peers: a is dropped, x is the only peer.
	c.mustSet("replace_peers=true", "public_key="+hexKey(x), "allowed_ip=10.5.0.0/16")
	if ps := e.Peers(); len(ps) != 1 || !ps[0].PublicKey.Equal(x) {
		t.Fatalf("after replace_peers: %+v", ps)
	}
}

func TestListenPortAndFwmark(t *testing.T) {
	e := newEngine(t)
	c := serve(t, e)
	port := e.ListenPort()
	if port == 0 {
		t.Fatal("ListenPort is 0 on a UDP bind")
	}
	c.mustSet(fmt.Sprintf("listen_port=%d", port), "fwmark=0")
	if errno := c.set(fmt.Sprintf("listen_port=%d", port+1)); errno != errnoNotSupported {
		t.Fatalf("other port: errno=%d", errno)
	}
	if errno := c.set("fwmark=1"); errno != errnoNotSupported {
		t.Fatalf("fwmark: errno=%d", errno)
	}
}

func TestListenReplacesOnlyStaleSockets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wgt.sock")

	// A stale socket: bound, then its owner gone without unlinking it.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	l, err := Listen(dir, "wgt", 0)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := Listen(dir, "wgt", 0); err == nil {
		t.Fatal("a live socket was replaced")
	}
	l.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left the socket: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Fatalf("left behind: %v", entries)
	}

	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(dir, "wgt", 0); err == nil {
		t.Fatal("a regular file was replaced")
	}
	if _, err := Listen(dir, "../x", 0); err == nil {
		t.Fatal("a name with a slash was accepted")
	}
}
