package main

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/systemtest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// envOf is an environment holding just vars, as a container would get
// from `docker run -e` or a Pod's env.
func envOf(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// runCLIWithEnv is runCLI with an environment.
func runCLIWithEnv(t *testing.T, vars map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut strings.Builder
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, signals: make(chan os.Signal),
		lookupEnv: envOf(vars)}
	code := run(context.Background(), e, args)
	return code, out.String(), errOut.String()
}

func TestCheckFromEnv(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	good := "[Interface]\nPrivateKey = " + key.Base64() + "\n\n[Socks5]\nBindAddress = 127.0.0.1:1080\n"
	code, out, errOut := runCLIWithEnv(t, map[string]string{configEnv: good}, "check")
	if code != exitOK || out != "$WGBORE_CONFIG: OK: 0 peer(s), 1 listener(s)\n" ||
		!strings.Contains(errOut, "warning: $WGBORE_CONFIG: no [Peer] section") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	broken := "[Interface]\nAddress = 10.0.0.1/32\nPrivateKey = not-a-key\n[Socks5]\nBindAddress = 1080\n"
	code, out, errOut = runCLIWithEnv(t, map[string]string{configEnv: broken}, "check")
	want := "$WGBORE_CONFIG:3: PrivateKey: " + protocol.ErrBadKey.Error() + "\n" +
		`$WGBORE_CONFIG:5: BindAddress: "1080": want IPv4:port, [IPv6]:port or hostname:port` + "\n"
	if code != exitUsage || out != "" || errOut != want {
		t.Fatalf("exit %d\nstdout: %s\nstderr:\n%s\nwant:\n%s", code, out, errOut, want)
	}

	// An empty variable is set: it is reported as an empty config, not
	// as a missing -c, since the operator did mean to use it.
	code, _, errOut = runCLIWithEnv(t, map[string]string{configEnv: ""}, "check")
	if code != exitUsage || errOut != "$WGBORE_CONFIG: no [Interface] section\n" {
		t.Fatalf("empty: exit %d, stderr %q", code, errOut)
	}

	// Neither -c nor the variable.
	code, _, errOut = runCLIWithEnv(t, nil, "check")
	if code != exitUsage || !strings.Contains(errOut, "-c FILE is required, or the configuration's text in WGBORE_CONFIG") {
		t.Fatalf("nothing: exit %d, stderr %q", code, errOut)
	}
}

// TestConfigEnvValues: the same environment that holds the config fills
// its "$NAME" values, so the key can live in a variable of its own
// (from a Secret) while the rest comes from a ConfigMap.
func TestConfigEnvValues(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	src := "[Interface]\nPrivateKey = $WG_KEY\n"
	code, out, errOut := runCLIWithEnv(t, map[string]string{configEnv: src, "WG_KEY": key.Base64()}, "check")
	if code != exitOK || !strings.HasPrefix(out, "$WGBORE_CONFIG: OK") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	code, _, errOut = runCLIWithEnv(t, map[string]string{configEnv: src}, "check")
	if code != exitUsage || errOut != "$WGBORE_CONFIG:2: PrivateKey: environment variable $WG_KEY is not set\n" {
		t.Fatalf("unset: exit %d, stderr %q", code, errOut)
	}

	// A file's "$NAME" values use the injected environment too, never
	// the test process's own.
	path := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", src)
	code, _, errOut = runCLIWithEnv(t, map[string]string{"WG_KEY": key.Base64()}, "check", "-c", path)
	if code != exitOK {
		t.Fatalf("file: exit %d, stderr %q", code, errOut)
	}
}

// TestConfigEnvKeyFile: with no file, a relative PrivateKeyFile has no
// directory to be relative to but the working directory.
func TestConfigEnvKeyFile(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	dir := t.TempDir()
	systemtest.WriteFile(t, dir, "private.key", key.Base64()+"\n")
	t.Chdir(dir)
	src := "[Interface]\nPrivateKeyFile = private.key\n"
	code, out, errOut := runCLIWithEnv(t, map[string]string{configEnv: src}, "check")
	if code != exitOK || !strings.HasPrefix(out, "$WGBORE_CONFIG: OK") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	code, _, errOut = runCLIWithEnv(t, map[string]string{configEnv: "[Interface]\nPrivateKeyFile = missing.key\n"}, "check")
	if code != exitUsage || !strings.HasPrefix(errOut, "$WGBORE_CONFIG:2: PrivateKeyFile: ") {
		t.Fatalf("missing: exit %d, stderr %q", code, errOut)
	}
}

// TestConfigFlagBeatsEnv: -c wins over WGBORE_CONFIG, as a flag beats
// the environment, and the warning tells whoever set the variable.
func TestConfigFlagBeatsEnv(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	path := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", "[Interface]\nPrivateKey = "+key.Base64()+"\n")
	code, out, errOut := runCLIWithEnv(t, map[string]string{configEnv: "garbage"}, "check", "-c", path)
	if code != exitOK || out != path+": OK: 0 peer(s), 0 listener(s)\n" ||
		!strings.HasPrefix(errOut, "warning: "+path+": WGBORE_CONFIG is set too and ignored: -c wins\n") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}

// TestUpFromEnv runs up with its whole config, key included, from the
// environment, as a container without a mounted file would.
func TestUpFromEnv(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	conf := site.WGQuick(ours, "[TCPClientTunnel]\nBindAddress = 127.0.0.1:0\nTarget = 10.0.0.2:7\n")
	conf = strings.Replace(conf, "PrivateKey = "+ours.Base64(), "PrivateKey = $WG_KEY", 1)
	if strings.Contains(conf, ours.Base64()) {
		t.Fatal("the key is still inline")
	}
	vars := map[string]string{configEnv: conf, "WG_KEY": ours.Base64()}

	p := &inProcess{signals: make(chan os.Signal, 2), done: make(chan int, 1)}
	e := &env{stdin: strings.NewReader(""), stdout: &strings.Builder{}, stderr: &p.stderr, signals: p.signals,
		lookupEnv: envOf(vars)}
	go func() {
		p.done <- run(context.Background(), e, []string{"up", "-uapi-dir", systemtest.ShortTempDir(t)})
	}()
	waitForLog(t, &p.stderr, `msg="wgbore is up"`)
	if !strings.Contains(p.stderr.String(), `handshakes=1/1`) {
		t.Fatalf("summary without a completed handshake:\n%s", p.stderr.String())
	}
	p.signals <- os.Interrupt
	p.exit(t, exitOK, 30*time.Second, "up did not return after the signal")
	if strings.Contains(p.stderr.String(), ours.Base64()) {
		t.Fatal("the private key reached the log")
	}

	// A broken one stops up before anything starts, with the same
	// messages as check.
	vars[configEnv] = strings.Replace(conf, "AllowedIPs = ", "AllowedIPs = 10.0.0.0/33, ", 1)
	var errOut strings.Builder
	e = &env{stdin: strings.NewReader(""), stdout: &strings.Builder{}, stderr: &errOut, signals: make(chan os.Signal),
		lookupEnv: envOf(vars)}
	if code := run(context.Background(), e, []string{"up", "-uapi-dir", systemtest.ShortTempDir(t)}); code != exitUsage {
		t.Fatalf("broken: exit %d, want %d:\n%s", code, exitUsage, errOut.String())
	}
	if !regexp.MustCompile(`^\$WGBORE_CONFIG:\d+: AllowedIPs: "10.0.0.0/33"`).MatchString(errOut.String()) {
		t.Fatalf("broken: stderr %q", errOut.String())
	}
}

// TestConfigFlagMissingWithEnv: an image's default -c naming a file that
// was not mounted, run with WGBORE_CONFIG, says why the variable did not
// count.
func TestConfigFlagMissingWithEnv(t *testing.T) {
	missing := t.TempDir() + "/wg0.conf"
	code, _, errOut := runCLIWithEnv(t, map[string]string{configEnv: "[Interface]\n"}, "check", "-c", missing)
	if code != exitUsage || !strings.HasSuffix(errOut, "note: WGBORE_CONFIG is set too but ignored, as -c wins; drop -c to use it\n") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}
