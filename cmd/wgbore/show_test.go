package main

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
	"time"

	"github.com/wgbore/wgbore/cmd/internal/systemtest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/uapi"
)

func TestShowFormatsAsWG(t *testing.T) {
	now := time.Unix(1_700_000_000, 900_000_000)
	for _, tc := range []struct {
		secs int64
		want string
	}{
		{0, "Now"},
		{1, "1 second ago"},
		{62, "1 minute, 2 seconds ago"},
		{3600, "1 hour ago"},
		{2*86400 + 3*3600 + 1, "2 days, 3 hours, 1 second ago"},
		{366 * 86400, "1 year, 1 day ago"},
		{-5, "(System clock wound backward; connection problems may ensue.)"},
	} {
		// Only whole seconds count, as wg compares time(NULL) with tv_sec.
		hs := time.Unix(now.Unix()-tc.secs, 999_999_999)
		if got := ago(hs, now); got != tc.want {
			t.Errorf("ago(%d s) = %q, want %q", tc.secs, got, tc.want)
		}
	}
	for _, tc := range []struct {
		b    uint64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.00 KiB"},
		{1264, "1.23 KiB"},
		{5 << 20, "5.00 MiB"},
		{3 << 30, "3.00 GiB"},
		{5 << 40, "5.00 TiB"},
	} {
		if got := humanBytes(tc.b); got != tc.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tc.b, got, tc.want)
		}
	}
	if got := prettyTime(25); got != "25 seconds" {
		t.Errorf("prettyTime(25) = %q", got)
	}
}

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
	conf := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", showPeerConf(site, ours, other))
	dir := systemtest.ShortTempDir(t)
	startDaemon(t, conf, "-uapi-dir", dir)

	code, out, errOut := runCLI(t, "", "show", "-uapi-dir", dir, "wg0")
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
	if code, all, errOut := runCLI(t, "", "show", "-uapi-dir", dir); code != exitOK || !strings.HasPrefix(all, "interface: wg0\n") {
		t.Fatalf("show without a name: exit %d:\n%s%s", code, all, errOut)
	}
	if code, names, _ := runCLI(t, "", "show", "-uapi-dir", dir, "interfaces"); code != exitOK || names != "wg0\n" {
		t.Fatalf("show interfaces: exit %d: %q", code, names)
	}
	if code, eps, _ := runCLI(t, "", "show", "-uapi-dir", dir, "wg0", "endpoints"); code != exitOK ||
		!strings.Contains(eps, site.PublicKey.String()+"\t"+site.Endpoint()+"\n") || !strings.Contains(eps, other.String()+"\t(none)\n") {
		t.Fatalf("show wg0 endpoints: exit %d:\n%s", code, eps)
	}
	if code, _, errOut := runCLI(t, "", "show", "-uapi-dir", dir, "wg0", "private-key"); code != exitUsage {
		t.Fatalf("show wg0 private-key: exit %d, want %d: %s", code, exitUsage, errOut)
	}
}

// TestShowMatchesWG compares our show with the real wg's, line by line,
// on one socket in /var/run/wireguard, which a -uapi-group also makes
// 0660 and the group's. Only the handshake's age and the transfer
// figures, which move between the two runs, may differ.
func TestShowMatchesWG(t *testing.T) {
	wg := systemtest.NeedTool(t, "wg")
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
	conf := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", showPeerConf(site, ours, otherKey.PublicKey()))
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
	code, out, errOut := runCLI(t, "", "show", name)
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

func TestShowWithoutSocket(t *testing.T) {
	dir := systemtest.ShortTempDir(t)
	code, out, errOut := runCLI(t, "", "show", "-uapi-dir", dir, "wg0")
	path := filepath.Join(dir, "wg0.sock")
	if code != exitFailure || out != "" || strings.Count(errOut, "\n") != 1 ||
		!strings.Contains(errOut, path) || !strings.Contains(errOut, "-uapi-dir") {
		t.Fatalf("show of a missing socket: exit %d, stdout %q, stderr %q; want exit 1 and one line naming %s and -uapi-dir", code, out, errOut, path)
	}
	code, _, errOut = runCLI(t, "", "show", "-uapi-dir", dir)
	if code != exitFailure || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, dir) {
		t.Fatalf("show of an empty directory: exit %d, stderr %q", code, errOut)
	}
	for _, args := range [][]string{
		{"show", "wg0", "-uapi-dir", dir},
		{"show", "-uapi-dir", dir, "wg0", "private-key"},
		{"show", "-uapi-dir", dir, filepath.Join(dir, "wg0")},
	} {
		if code, _, errOut := runCLI(t, "", args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d: %s", args, code, exitUsage, errOut)
		}
	}
}

func TestUnknownUAPIGroupIsUsageError(t *testing.T) {
	conf := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", "[Interface]\nPrivateKey = "+mustKey(t).Base64()+"\n")
	code, _, errOut := runCLI(t, "", "up", "-c", conf, "-uapi-dir", systemtest.ShortTempDir(t), "-uapi-group", "no-such-group-wgbore")
	if code != exitUsage || !strings.Contains(errOut, `no group "no-such-group-wgbore"`) {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 2 naming the group", code, errOut)
	}
}

func mustKey(t *testing.T) protocol.PrivateKey {
	t.Helper()
	k, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
