package wgquick_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/netstack/wgquick"
	"github.com/wgbore/wgbore/protocol"
)

// TestOpen: a wg-quick file on disk is all a program needs to reach the
// wireguard-go peer, by name through the DNS the file names.
func TestOpen(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	dir := t.TempDir()
	// PostUp is for wg-quick alone; a file that has one still opens.
	conf := strings.Replace(site.WGQuick(key, ""), "\n[Peer]", "PostUp = iptables -A FORWARD -j ACCEPT\n\n[Peer]", 1)
	path := filepath.Join(dir, "wg0.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := wgquick.Open(context.Background(), path, wgquick.WithListenAddrs(netip.MustParseAddr("127.0.0.1")))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	resp, err := n.HTTPClient().Get("http://web/bytes/4096")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := peersite.CheckBody(resp.Body, 4096); err != nil {
		t.Fatal(err)
	}

	// A broken file fails with file:line messages, and nothing is opened.
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte("[Interface]\nPrivateKey = nope\nAdress = 10.0.0.1\n"), 0o600)
	_, err = wgquick.Open(context.Background(), bad)
	var errs config.Errors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("want the two problems as config.Errors, got %v", err)
	}
	if err == nil || !strings.Contains(err.Error(), "bad.conf:2: PrivateKey") || !strings.Contains(err.Error(), `bad.conf:3: unknown key "Adress"`) {
		t.Fatalf("broken file: %v", err)
	}
}

// TestTunnel: every key of [Interface] and [Peer] that the engine or the
// stack uses arrives, and nothing is shared with the file's Config.
func TestTunnel(t *testing.T) {
	priv, _ := protocol.GeneratePrivateKey()
	peer, _ := protocol.GeneratePrivateKey()
	psk, _ := protocol.GeneratePresharedKey()
	c := &config.Config{
		Interface: config.Interface{
			PrivateKey: priv,
			Addresses:  []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24"), netip.MustParsePrefix("fd00::2/64")},
			DNS:        []netip.Addr{netip.MustParseAddr("10.0.0.1")},
			DNSSearch:  []string{"corp.example"},
			MTU:        1380,
			ListenPort: 51821,
		},
		Resolve: config.Resolve{Strategy: config.ResolveIPv4},
		Peers: []config.Peer{{
			PublicKey:           peer.PublicKey(),
			PresharedKey:        psk,
			Endpoint:            "vpn.example.com:51820",
			AllowedIPs:          []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::/0")},
			PersistentKeepalive: 25 * time.Second,
		}},
	}
	got := wgquick.Tunnel(c)
	if got.PrivateKey != priv || got.MTU != 1380 || got.ListenPort != 51821 || got.Prefer != netstack.PreferIPv4 ||
		!reflect.DeepEqual(got.Addresses, c.Interface.Addresses) || !reflect.DeepEqual(got.DNS, c.Interface.DNS) ||
		!reflect.DeepEqual(got.DNSSearch, c.Interface.DNSSearch) {
		t.Errorf("Tunnel = %+v, want the [Interface] of %+v", got, c.Interface)
	}
	want := protocol.PeerConfig{
		PublicKey:           peer.PublicKey(),
		PresharedKey:        psk,
		Endpoint:            "vpn.example.com:51820",
		AllowedIPs:          c.Peers[0].AllowedIPs,
		PersistentKeepalive: 25 * time.Second,
	}
	if len(got.Peers) != 1 || !reflect.DeepEqual(got.Peers[0], want) {
		t.Errorf("Tunnel's peers = %+v, want [%+v]", got.Peers, want)
	}
	got.Addresses[0] = netip.MustParsePrefix("1.1.1.1/32")
	got.Peers[0].AllowedIPs[0] = netip.MustParsePrefix("1.1.1.1/32")
	if c.Interface.Addresses[0].String() != "10.0.0.2/24" || c.Peers[0].AllowedIPs[0].String() != "10.0.0.0/8" {
		t.Error("Tunnel shares a slice with the file's Config")
	}
}

// TestPeersOfAParsedFile: every peer the parser produces reaches the
// engine with its key, preshared key, endpoint (a name stays a name, for
// the engine to resolve), AllowedIPs and keepalive.
func TestPeersOfAParsedFile(t *testing.T) {
	priv, _ := protocol.GeneratePrivateKey()
	a, _ := protocol.GeneratePrivateKey()
	b, _ := protocol.GeneratePrivateKey()
	psk, _ := protocol.GeneratePresharedKey()
	text := "[Interface]\nPrivateKey = " + priv.Base64() + "\nAddress = 10.0.0.2/32\n\n" +
		"[Peer]\nPublicKey = " + a.PublicKey().String() + "\nPresharedKey = " + psk.Base64() +
		"\nEndpoint = vpn.example.com:51820\nAllowedIPs = 10.0.0.0/8, ::/0\nPersistentKeepalive = 25\n\n" +
		"[Peer]\nPublicKey = " + b.PublicKey().String() + "\nEndpoint = 127.0.0.1:51821\nAllowedIPs = 192.168.7.0/24\n"
	c, err := config.Parse("wg0.conf", []byte(text), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []protocol.PeerConfig{
		{PublicKey: a.PublicKey(), PresharedKey: psk, Endpoint: "vpn.example.com:51820",
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::/0")}, PersistentKeepalive: 25 * time.Second},
		{PublicKey: b.PublicKey(), Endpoint: "127.0.0.1:51821", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("192.168.7.0/24")}},
	}
	if len(c.Peers) != len(want) {
		t.Fatalf("parsed %d peers, want %d", len(c.Peers), len(want))
	}
	for i, p := range c.Peers {
		if got := wgquick.Peer(p); !reflect.DeepEqual(got, want[i]) {
			t.Errorf("peer %d: %+v, want %+v", i, got, want[i])
		}
	}
}
