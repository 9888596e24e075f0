package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/cmd/internal/systemtest"
	"github.com/wgbore/wgbore/protocol"
)

// runCLI runs the command in-process with the given stdin and returns
// its exit code, stdout and stderr.
func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut strings.Builder
	e := &env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut, signals: make(chan os.Signal)}
	code := run(context.Background(), e, args)
	return code, out.String(), errOut.String()
}

func wgTool(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(systemtest.NeedTool(t, "wg"), args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("wg %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

func TestKeyCommandsMatchWG(t *testing.T) {
	for _, gen := range []string{"genkey", "genpsk"} {
		code, ours, _ := runCLI(t, "", gen)
		if code != exitOK {
			t.Fatalf("%s: exit %d", gen, code)
		}
		theirs := wgTool(t, "", gen)
		if len(ours) != len(theirs) || len(ours) != 45 || !strings.HasSuffix(ours, "=\n") {
			t.Fatalf("%s: ours %q, wg's %q: want the same form, 44 base64 characters and a newline", gen, ours, theirs)
		}
		if ours == theirs {
			t.Fatalf("%s gave the same key as wg: not random", gen)
		}
	}

	// Our public key of our private key, and of wg's, equals wg's.
	_, ourPriv, _ := runCLI(t, "", "genkey")
	wgPriv := wgTool(t, "", "genkey")
	for _, priv := range []string{ourPriv, wgPriv} {
		code, ours, errOut := runCLI(t, priv, "pubkey")
		if code != exitOK {
			t.Fatalf("pubkey: exit %d: %s", code, errOut)
		}
		if theirs := wgTool(t, priv, "pubkey"); ours != theirs {
			t.Fatalf("pubkey: ours %q, wg's %q", ours, theirs)
		}
	}
}

func TestPubkeyRejectsBadInput(t *testing.T) {
	secretish := "not-a-key-but-maybe-a-secret-value-0123456789"
	for _, in := range []string{"", "abc\n", secretish, strings.Repeat("A", 5000)} {
		code, out, errOut := runCLI(t, in, "pubkey")
		if code != exitUsage || out != "" {
			t.Fatalf("pubkey %q: exit %d, stdout %q; want exit 2 and nothing on stdout", in[:min(len(in), 20)], code, out)
		}
		if strings.Contains(errOut, secretish) || !strings.Contains(errOut, "private key") {
			t.Fatalf("pubkey: stderr %q should explain without echoing the input", errOut)
		}
	}
}

func TestUsageAndExitCodes(t *testing.T) {
	tests := []struct {
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{nil, exitUsage, "", "Commands:"},
		{[]string{"-h"}, exitOK, "Examples:", ""},
		{[]string{"frobnicate"}, exitUsage, "", `unknown command "frobnicate"`},
		{[]string{"up", "-h"}, exitOK, "Examples:", ""},
		{[]string{"up", "-h"}, exitOK, "-log-format", ""},
		{[]string{"check", "-h"}, exitOK, "Examples:", ""},
		{[]string{"genkey", "-h"}, exitOK, "Example:", ""},
		{[]string{"pubkey", "-h"}, exitOK, "Example:", ""},
		{[]string{"genpsk", "-h"}, exitOK, "Example:", ""},
		{[]string{"version", "-h"}, exitOK, "Example:", ""},
		{[]string{"up"}, exitUsage, "", "-c FILE is required"},
		{[]string{"check"}, exitUsage, "", "-c FILE is required"},
		{[]string{"up", "-bogus"}, exitUsage, "", "flag provided but not defined"},
		{[]string{"up", "-c", "x.conf", "-log-level", "loud"}, exitUsage, "", "want debug, info, warn or error"},
		{[]string{"up", "-c", "x.conf", "-log-format", "xml"}, exitUsage, "", "want text or json"},
		{[]string{"genkey", "extra"}, exitUsage, "", `unexpected argument "extra"`},
		{[]string{"version"}, exitOK, "wgbore ", ""},
		{[]string{"--version"}, exitOK, "wgbore ", ""},
	}
	for _, tt := range tests {
		code, out, errOut := runCLI(t, "", tt.args...)
		if code != tt.code || !strings.Contains(out, tt.inStdout) || !strings.Contains(errOut, tt.inStderr) {
			t.Errorf("wgbore %s: exit %d, stdout %q, stderr %q; want exit %d, stdout containing %q, stderr containing %q",
				strings.Join(tt.args, " "), code, out, errOut, tt.code, tt.inStdout, tt.inStderr)
		}
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	priv, _ := protocol.GeneratePrivateKey()
	peer, _ := protocol.GeneratePrivateKey()
	good := "[Interface]\nPrivateKey = " + priv.Base64() + "\nAddress = 10.0.0.1/32\n\n" +
		"[Peer]\nPublicKey = " + peer.PublicKey().String() + "\nEndpoint = 127.0.0.1:51820\nAllowedIPs = 10.0.0.0/24\n\n" +
		"[Socks5]\nBindAddress = 127.0.0.1:1080\n"
	code, out, errOut := runCLI(t, "", "check", "-c", systemtest.WriteFile(t, dir, "good.conf", good))
	if code != exitOK || !strings.Contains(out, "OK: 1 peer(s), 1 listener(s)") {
		t.Fatalf("check good.conf: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	bad := "[Interface]\nPrivateKey = " + priv.Base64() + "\nAddress = 10.0.0.300/32\nMTU = 9\n\n" +
		"[Peer]\nPublicKey = nope\nAllowedIPs = 10.0.0.0/24\n"
	badPath := systemtest.WriteFile(t, dir, "bad.conf", bad)
	code, out, errOut = runCLI(t, "", "check", "-c", badPath)
	if code != exitUsage || out != "" {
		t.Fatalf("check bad.conf: exit %d, stdout %q; want 2 and nothing on stdout", code, out)
	}
	for _, want := range []string{badPath + ":3: Address:", badPath + ":4: MTU:", badPath + ":7: PublicKey:"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("check bad.conf: stderr lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, priv.Base64()) {
		t.Fatal("check printed the private key")
	}

	// Problems only a run would meet are found by check too.
	tlsMissing := good + "[http]\nBindAddress = 127.0.0.1:8080\nCertFile = missing.pem\nKeyFile = missing.key\n" +
		"[STDIOTunnel]\nTarget = 10.0.0.2:22\n[STDIOTunnel]\nTarget = 10.0.0.2:23\n"
	runPath := systemtest.WriteFile(t, dir, "run.conf", tlsMissing)
	code, _, errOut = runCLI(t, "", "check", "-c", runPath)
	if code != exitUsage {
		t.Fatalf("check run.conf: exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		fmt.Sprintf("%s:%d: [http]: CertFile/KeyFile: open %s", runPath, headerLine(t, tlsMissing, "[http]", 1), filepath.Join(dir, "missing.pem")),
		fmt.Sprintf("%s:%d: [STDIOTunnel]: a process has one stdin, and the [STDIOTunnel] on line %d has it: keep one",
			runPath, headerLine(t, tlsMissing, "[STDIOTunnel]", 2), headerLine(t, tlsMissing, "[STDIOTunnel]", 1)),
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("check run.conf: stderr lacks %q:\n%s", want, errOut)
		}
	}
	assertEveryLinePlaced(t, errOut, runPath)

	code, _, errOut = runCLI(t, "", "check", "-c", filepath.Join(dir, "absent.conf"))
	if code != exitUsage || !strings.Contains(errOut, "absent.conf") {
		t.Fatalf("check absent.conf: exit %d, stderr %q", code, errOut)
	}
}

// TestCheckSharedListenAddress: two sections on one address is the
// file's mistake; check reports it, and up refuses it as a config error
// (2), not as a busy port (1).
func TestCheckSharedListenAddress(t *testing.T) {
	dir := t.TempDir()
	priv, _ := protocol.GeneratePrivateKey()
	peer, _ := protocol.GeneratePrivateKey()
	conf := "[Interface]\nPrivateKey = " + priv.Base64() + "\nAddress = 10.0.0.1/32\n\n" +
		"[Peer]\nPublicKey = " + peer.PublicKey().String() + "\nAllowedIPs = 10.0.0.0/24\n\n" +
		"[Socks5]\nBindAddress = :1080\n\n[http]\nBindAddress = 127.0.0.1:1080\n\n" +
		"[TCPServerTunnel]\nListenPort = 22\nTarget = 127.0.0.1:22\n\n[TCPServerTunnel]\nListenPort = 22\nTarget = 127.0.0.1:2222\n\n" +
		// The same port in another protocol, or port 0 twice, is fine.
		"[UDPProxyTunnel]\nBindAddress = 127.0.0.1:1080\nTarget = 10.0.0.2:53\n\n" +
		"[TCPClientTunnel]\nBindAddress = 127.0.0.1:0\nTarget = 10.0.0.2:7\n\n[TCPClientTunnel]\nBindAddress = 127.0.0.1:0\nTarget = 10.0.0.2:8\n"
	// "Second" is in the file, whatever order the kinds are checked in.
	conf += "\n[TCPClientTunnel]\nBindAddress = 127.0.0.1:2000\nTarget = 10.0.0.2:9\n\n[Socks5]\nBindAddress = 127.0.0.1:2000\n"
	path := systemtest.WriteFile(t, dir, "dup.conf", conf)
	want := []string{
		fmt.Sprintf("%s:%d: [http]: listens on tcp 127.0.0.1:1080, as the [Socks5] on line %d does",
			path, headerLine(t, conf, "[http]", 1), headerLine(t, conf, "[Socks5]", 1)),
		fmt.Sprintf("%s:%d: [TCPServerTunnel]: listens on tunnel tcp :22, as the [TCPServerTunnel] on line %d does",
			path, headerLine(t, conf, "[TCPServerTunnel]", 2), headerLine(t, conf, "[TCPServerTunnel]", 1)),
		fmt.Sprintf("%s:%d: [Socks5]: listens on tcp 127.0.0.1:2000, as the [TCPClientTunnel] on line %d does",
			path, headerLine(t, conf, "[Socks5]", 2), headerLine(t, conf, "[TCPClientTunnel]", 3)),
	}
	for _, cmd := range []string{"check", "up"} {
		code, _, errOut := runCLI(t, "", cmd, "-c", path)
		// In file order, one line each.
		if code != exitUsage || errOut != strings.Join(want, "\n")+"\n" {
			t.Fatalf("%s: exit %d, stderr:\n%s\nwant:\n%s", cmd, code, errOut, strings.Join(want, "\n"))
		}
	}
}

// TestCheckPasswordWithoutUsername: authentication needs a Username; a
// lone Password must not pass silently for protection.
func TestCheckPasswordWithoutUsername(t *testing.T) {
	priv, _ := protocol.GeneratePrivateKey()
	peer, _ := protocol.GeneratePrivateKey()
	conf := "[Interface]\nPrivateKey = " + priv.Base64() + "\nAddress = 10.0.0.1/32\n\n" +
		"[Peer]\nPublicKey = " + peer.PublicKey().String() + "\nAllowedIPs = 10.0.0.0/24\n\n" +
		"[Socks5]\nBindAddress = 127.0.0.1:1080\nPassword = hunter2\n\n[http]\nBindAddress = 127.0.0.1:8080\nPassword = hunter2\n"
	path := systemtest.WriteFile(t, t.TempDir(), "pw.conf", conf)
	code, _, errOut := runCLI(t, "", "check", "-c", path)
	if code != exitOK || strings.Contains(errOut, "hunter2") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	for _, want := range []string{
		fmt.Sprintf("warning: %s:%d: [Socks5]: Password is set but Username is not: authentication is off", path, headerLine(t, conf, "[Socks5]", 1)),
		fmt.Sprintf("warning: %s:%d: [http]: Password is set but Username is not: authentication is off", path, headerLine(t, conf, "[http]", 1)),
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}

// headerLine returns the 1-based line of the nth line of text that is
// exactly header, so expected messages follow edits to a test's config.
func headerLine(t *testing.T, text, header string, nth int) int {
	t.Helper()
	seen := 0
	for i, line := range strings.Split(text, "\n") {
		if line == header {
			if seen++; seen == nth {
				return i + 1
			}
		}
	}
	t.Fatalf("no %s #%d in\n%s", header, nth, text)
	return 0
}

// assertEveryLinePlaced checks that each line of stderr starts with
// "path:N: ", the form editors turn into a link.
func assertEveryLinePlaced(t *testing.T, stderr, path string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSuffix(stderr, "\n"), "\n") {
		rest, ok := strings.CutPrefix(line, path+":")
		n, _, colon := strings.Cut(rest, ": ")
		if _, err := strconv.Atoi(n); !ok || !colon || err != nil {
			t.Errorf("stderr line not at a file:line: %q", line)
		}
	}
}
