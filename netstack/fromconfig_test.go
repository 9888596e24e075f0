package netstack

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// TestOpenFile: a wg-quick file on disk is all a program needs to reach
// the wireguard-go peer, by name through the DNS the file names.
func TestOpenFile(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	dir := t.TempDir()
	// PostUp is for wg-quick alone; a file that has one still opens.
	conf := strings.Replace(site.WGQuick(key, ""), "\n[Peer]", "PostUp = iptables -A FORWARD -j ACCEPT\n\n[Peer]", 1)
	path := filepath.Join(dir, "wg0.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := OpenFile(context.Background(), path, WithListenAddrs(netip.MustParseAddr("127.0.0.1")))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	fetchBytes(t, n.HTTPClient(), "http://web/bytes/4096", 4096)

	// A broken file fails with file:line messages, and nothing is opened.
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte("[Interface]\nPrivateKey = nope\nAdress = 10.0.0.1\n"), 0o600)
	_, err = OpenFile(context.Background(), bad)
	var errs config.Errors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("want the two problems as config.Errors, got %v", err)
	}
	if err == nil || !strings.Contains(err.Error(), "bad.conf:2: PrivateKey") || !strings.Contains(err.Error(), `bad.conf:3: unknown key "Adress"`) {
		t.Fatalf("broken file: %v", err)
	}
}
