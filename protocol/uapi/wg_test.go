package uapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

// TestWgTool drives a real Engine with the real `wg` binary. `wg` only
// looks in SocketDir, so the test needs to write there (root in CI).
func TestWgTool(t *testing.T) {
	wg, err := exec.LookPath("wg")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("wg (wireguard-tools) is not installed, and CI must run this test")
		}
		t.Skip("wg (wireguard-tools) is not installed")
	}
	_, statErr := os.Stat(SocketDir)
	createdDir := errors.Is(statErr, fs.ErrNotExist)
	var rnd [4]byte
	rand.Read(rnd[:])
	// At most 15 characters: wg treats the name as a network interface's.
	name := "wgbt" + hex.EncodeToString(rnd[:])
	l, err := Listen(SocketDir, name, 0)
	if err != nil {
		t.Skipf("cannot create a socket in %s, where wg looks (run as root): %v", SocketDir, err)
	}
	t.Cleanup(func() {
		l.Close()
		if createdDir {
			os.Remove(SocketDir) // only if still empty
		}
	})

	e := newEngine(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, e, nil) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, wg, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("wg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	// A second engine on loopback is the peer, so `wg show` has a real
	// handshake and transfer figures to print.
	other := newEngine(t)
	peer := other.PublicKey()
	psk, _ := protocol.GeneratePresharedKey()
	endpoint := "127.0.0.1:" + strconv.Itoa(int(other.ListenPort()))
	// Keepalive comes after the handshake: set at once, it would start
	// a second initiation racing the one Handshake sends.
	cfg := protocol.PeerConfig{
		PublicKey:    peer,
		PresharedKey: psk,
		Endpoint:     endpoint,
		AllowedIPs:   prefixes("10.8.0.0/24"),
	}
	if err := e.SetPeer(cfg); err != nil {
		t.Fatal(err)
	}
	if err := other.SetPeer(protocol.PeerConfig{
		PublicKey:    e.PublicKey(),
		PresharedKey: psk,
		Endpoint:     "127.0.0.1:" + strconv.Itoa(int(e.ListenPort())),
	}); err != nil {
		t.Fatal(err)
	}
	e.Handshake(peer)
	for deadline := time.Now().Add(10 * time.Second); mustPeer(t, e, peer).LastHandshake.IsZero(); {
		if time.Now().After(deadline) {
			t.Fatal("no handshake with the loopback peer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cfg.PersistentKeepalive = 30 * time.Second
	if err := e.SetPeer(cfg); err != nil {
		t.Fatal(err)
	}

	show := run("show", name)
	for _, want := range []string{
		"interface: " + name,
		"public key: " + e.PublicKey().String(),
		"peer: " + peer.String(),
		"endpoint: " + endpoint,
		"allowed ips: 10.8.0.0/24",
		"latest handshake: ",
		"transfer: ",
		"persistent keepalive: every 30 seconds",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("wg show lacks %q:\n%s", want, show)
		}
	}
	if strings.Contains(show, psk.Base64()) {
		t.Error("wg show printed the preshared key")
	}

	run("set", name, "peer", peer.String(), "allowed-ips", "10.9.0.0/24")
	if got := mustPeer(t, e, peer).AllowedIPs; !slices.Equal(got, prefixes("10.9.0.0/24")) {
		t.Fatalf("after wg set allowed-ips: %v", got)
	}

	conf := run("showconf", name)
	parsed := parseShowconf(t, conf)
	want := map[string]string{
		"Interface.ListenPort":     strconv.Itoa(int(e.ListenPort())),
		"Interface.PrivateKey":     e.PrivateKey().Base64(),
		"Peer.PublicKey":           peer.String(),
		"Peer.PresharedKey":        psk.Base64(),
		"Peer.AllowedIPs":          "10.9.0.0/24",
		"Peer.Endpoint":            endpoint,
		"Peer.PersistentKeepalive": "30",
	}
	for k, v := range want {
		if parsed[k] != v {
			t.Errorf("showconf %s = %q, want %q\n%s", k, parsed[k], v, conf)
		}
	}

	// showconf round-trips: setting it back changes nothing.
	before := mustPeer(t, e, peer)
	file := filepath.Join(t.TempDir(), "wg.conf")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	run("setconf", name, file)
	after := mustPeer(t, e, peer)
	if !slices.Equal(after.AllowedIPs, before.AllowedIPs) || after.Endpoint != before.Endpoint ||
		after.PersistentKeepalive != before.PersistentKeepalive || len(e.Peers()) != 1 {
		t.Fatalf("setconf of showconf changed the peer: %+v -> %+v", before, after)
	}
	if got := run("showconf", name); got != conf {
		t.Fatalf("showconf after setconf:\n%s\nwas:\n%s", got, conf)
	}

	run("set", name, "peer", peer.String(), "remove")
	if _, ok := e.Peer(peer); ok {
		t.Fatal("wg set peer remove kept the peer")
	}
	if show := run("show", name); strings.Contains(show, "peer:") {
		t.Fatalf("wg show after remove:\n%s", show)
	}
}

// parseShowconf reads wg-quick-style output into Section.Key → value.
func parseShowconf(t *testing.T, conf string) map[string]string {
	t.Helper()
	out := map[string]string{}
	section := ""
	for _, line := range strings.Split(conf, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("showconf line %q", line)
			}
			out[section+"."+strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}
