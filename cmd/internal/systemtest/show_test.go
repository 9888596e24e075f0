package systemtest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/uapi"
)

// showPeerConf is the site's wg-quick file with a keepalive for the site
// and a second peer that never handshakes, so that show has every line
// and an order to get right.
func showPeerConf(site *peersite.Site, ours protocol.PrivateKey, other protocol.PublicKey) string {
	return site.WGQuick(ours, "") + "PersistentKeepalive = 25\n\n[Peer]\nPublicKey = " + other.String() + "\nAllowedIPs = 10.9.9.9/32\n"
}

func TestShowAgainstUp(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	otherKey, _ := protocol.GeneratePrivateKey()
	other := otherKey.PublicKey()
	conf := WriteFile(t, t.TempDir(), "wg0.conf", showPeerConf(site, ours, other))
	dir := ShortTempDir(t)
	startDaemon(t, conf, "-uapi-dir", dir)

	code, out, errOut := runWgbore(t, "show", "-uapi-dir", dir, "wg0")
	if code != exitOK {
		t.Fatalf("show: exit %d: %s", code, errOut)
	}
	want := []string{
		"interface: wg0",
		"  public key: " + ours.PublicKey().String(),
		"  private key: (hidden)",
		"  listening port: ",
		"",
		"peer: " + site.PublicKey.String(),
		"  endpoint: " + site.Endpoint(),
		"  allowed ips: 10.0.0.2/32, fd00::2/128",
		"  latest handshake: ",
		"  transfer: ",
		"  persistent keepalive: every 25 seconds",
		"",
		"peer: " + other.String(),
		"  allowed ips: 10.9.9.9/32",
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("show printed %d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) || (w == "" && lines[i] != "") {
			t.Errorf("line %d: %q, want it to start with %q", i+1, lines[i], w)
		}
	}
	if strings.Contains(out, ours.Base64()) {
		t.Fatal("show printed the private key")
	}

	// Without a name, the one tunnel in the directory is shown.
	if code, all, errOut := runWgbore(t, "show", "-uapi-dir", dir); code != exitOK || !strings.HasPrefix(all, "interface: wg0\n") {
		t.Fatalf("show without a name: exit %d:\n%s%s", code, all, errOut)
	}
	if code, names, _ := runWgbore(t, "show", "-uapi-dir", dir, "interfaces"); code != exitOK || names != "wg0\n" {
		t.Fatalf("show interfaces: exit %d: %q", code, names)
	}
	if code, eps, _ := runWgbore(t, "show", "-uapi-dir", dir, "wg0", "endpoints"); code != exitOK ||
		!strings.Contains(eps, site.PublicKey.String()+"\t"+site.Endpoint()+"\n") || !strings.Contains(eps, other.String()+"\t(none)\n") {
		t.Fatalf("show wg0 endpoints: exit %d:\n%s", code, eps)
	}
	if code, _, errOut := runWgbore(t, "show", "-uapi-dir", dir, "wg0", "private-key"); code != exitUsage {
		t.Fatalf("show wg0 private-key: exit %d, want %d: %s", code, exitUsage, errOut)
	}
}

// TestShowMatchesWG compares our show with the real wg's, line by line,
// on one socket in /var/run/wireguard, which a -uapi-group also makes
// 0660 and the group's. Only the handshake's age and the transfer
// figures, which move between the two runs, may differ.
func TestShowMatchesWG(t *testing.T) {
	wg := NeedTool(t, "wg")
	if err := os.MkdirAll(uapi.SocketDir, 0o755); err != nil || dirWritable(uapi.SocketDir) != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not writable, and CI runs as root: %v", uapi.SocketDir, err)
		}
		t.Skipf("%s is not writable (not root?): wg looks for sockets only there", uapi.SocketDir)
	}
	group, err := user.LookupGroup("daemon")
	if err != nil {
		t.Skip("no group daemon")
	}
	var suffix [4]byte
	rand.Read(suffix[:])
	name := "wgbt" + hex.EncodeToString(suffix[:])

	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	otherKey, _ := protocol.GeneratePrivateKey()
	conf := WriteFile(t, t.TempDir(), "wg0.conf", showPeerConf(site, ours, otherKey.PublicKey()))
	startDaemon(t, conf, "-interface-name", name, "-uapi-dir", uapi.SocketDir, "-uapi-group", "daemon")

	fi, err := os.Stat(filepath.Join(uapi.SocketDir, name+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	if _, gid := fileOwner(fi); fi.Mode().Perm() != 0o660 || group.Gid != strconv.Itoa(gid) {
		t.Fatalf("socket mode %v gid %d, want 0660 and daemon's %s", fi.Mode().Perm(), gid, group.Gid)
	}

	cmd := exec.Command(wg, "show", name)
	cmd.Env = append(os.Environ(), "WG_HIDE_KEYS=always", "WG_COLOR_MODE=never")
	theirs, err := cmd.Output()
	if err != nil {
		t.Fatalf("wg show %s: %v", name, err)
	}
	code, out, errOut := runWgbore(t, "show", name)
	if code != exitOK {
		t.Fatalf("wgbore show %s: exit %d: %s", name, code, errOut)
	}
	wgLines := strings.Split(string(theirs), "\n")
	ourLines := strings.Split(out, "\n")
	if len(wgLines) != len(ourLines) {
		t.Fatalf("wg show printed %d lines, we %d:\n%s---\n%s", len(wgLines), len(ourLines), theirs, out)
	}
	volatile := []string{"  latest handshake: ", "  transfer: "}
	for i := range wgLines {
		a, b := wgLines[i], ourLines[i]
		for _, v := range volatile {
			if strings.HasPrefix(a, v) && strings.HasPrefix(b, v) {
				a, b = v, v
			}
		}
		if a != b {
			t.Errorf("line %d: wg %q, ours %q", i+1, wgLines[i], ourLines[i])
		}
	}
	if t.Failed() {
		t.Logf("wg show:\n%s---\nwgbore show:\n%s", theirs, out)
	}
}
