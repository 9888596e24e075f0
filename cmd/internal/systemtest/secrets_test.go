package systemtest

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/blake2s"

	"github.com/wgbore/wgbore/cmd/internal/metricstest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// leakNeedle is one written form of a secret that must never be output.
type leakNeedle struct {
	secret, form, text string
}

// leakScanner finds secrets in text in every form a careless log line,
// error or metric label could give them: base64 (standard and URL-safe,
// padded or not), hex (lower and upper case), Go's %v of the bytes, and
// either half of each of those, so a truncated echo counts too.
type leakScanner struct {
	needles []leakNeedle
}

func (s *leakScanner) addKey(name string, raw []byte) {
	forms := []struct{ form, text string }{
		{"base64", base64.StdEncoding.EncodeToString(raw)},
		{"base64 unpadded", base64.RawStdEncoding.EncodeToString(raw)},
		{"base64url", base64.URLEncoding.EncodeToString(raw)},
		{"base64url unpadded", base64.RawURLEncoding.EncodeToString(raw)},
		{"hex", hex.EncodeToString(raw)},
		{"HEX", strings.ToUpper(hex.EncodeToString(raw))},
		{"%v of the bytes", fmt.Sprint(raw)},
	}
	for _, f := range forms {
		s.add(name, f.form, f.text)
		if len(f.text) >= 40 {
			// 20 base64 or 32 hex characters are over 100 random bits:
			// no chance of an accidental match.
			s.add(name, f.form+", first half", f.text[:len(f.text)/2])
			s.add(name, f.form+", second half", f.text[len(f.text)/2:])
		}
	}
}

// addText adds a secret that is only ever written as itself, and in the
// Basic-auth form when it is a user:password pair.
func (s *leakScanner) addText(name, text string) { s.add(name, "as is", text) }

func (s *leakScanner) add(secret, form, text string) {
	for _, n := range s.needles {
		if n.text == text {
			return
		}
	}
	s.needles = append(s.needles, leakNeedle{secret, form, text})
}

// find returns a description of each secret in text, never the secret.
func (s *leakScanner) find(text string) []string {
	var found []string
	for _, n := range s.needles {
		if i := strings.Index(text, n.text); i >= 0 {
			line := 1 + strings.Count(text[:i], "\n")
			found = append(found, fmt.Sprintf("%s (%s) on line %d", n.secret, n.form, line))
		}
	}
	return found
}

// leakOutputs collects every output the test saw, by where it came from.
type leakOutputs struct {
	mu   sync.Mutex
	list []struct{ where, text string }
}

func (o *leakOutputs) add(where, text string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.list = append(o.list, struct{ where, text string }{where, text})
}

// run runs the built wgbore and keeps its stdout and stderr.
func (o *leakOutputs) run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	code, stdout, stderr = runWgbore(t, args...)
	what := "wgbore " + strings.Join(args, " ")
	o.add(what+": stdout", stdout)
	o.add(what+": stderr", stderr)
	return code, stdout, stderr
}

// TestNoSecretsInAnyOutput runs the built wgbore at -log-level debug
// through handshakes with a preshared key, every kind of failure we can
// cause from outside (a peer that never answers, wrong proxy passwords,
// garbage on the WireGuard port, broken configs to check, up and reload)
// and a reload to a new private key and PSK, then looks for every private
// key and PSK, old and new, ours and the peers', in every encoding, and
// the proxy passwords, in everything it printed, served or logged. Only
// the raw UAPI get reply may hold keys: the protocol says it does.
func TestNoSecretsInAnyOutput(t *testing.T) {
	NeedTool(t, "curl")
	newPSK := func() protocol.PresharedKey {
		k, err := protocol.GeneratePresharedKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ours, oursNew, siteKey, deadKey := mustKey(t), mustKey(t), mustKey(t), mustKey(t)
	psk, pskNew, deadPSK := newPSK(), newPSK(), newPSK()
	const (
		socksUser, socksPass, socksWrong = "alice", "socks-Pa55-k7Qz", "socks-Wr0ng-x9Lm"
		httpUser, httpPass, httpWrong    = "bob", "http-Pa55-r2Vd", "http-Wr0ng-b4Nc"
	)
	// A bad value that is a real key with one character broken, and one
	// cut short: an error that echoed the value would leak most of a key.
	badPrivate := oursNew.Base64()[:30] + "!" + oursNew.Base64()[31:]
	badPSK := pskNew.Base64()[:43]

	var sc leakScanner
	for _, k := range []struct {
		name string
		raw  []byte
	}{
		{"our private key", ours[:]}, {"our new private key", oursNew[:]},
		{"the site's private key", siteKey[:]}, {"the silent peer's private key", deadKey[:]},
		{"the PSK", psk[:]}, {"the new PSK", pskNew[:]}, {"the silent peer's PSK", deadPSK[:]},
	} {
		sc.addKey(k.name, k.raw)
	}
	sc.addText("the bad PrivateKey value", badPrivate)
	sc.addText("the bad PresharedKey value", badPSK)
	sc.addText("the SOCKS5 password", socksPass)
	sc.addText("the wrong SOCKS5 password", socksWrong)
	sc.addText("the HTTP proxy password", httpPass)
	sc.addText("the wrong HTTP proxy password", httpWrong)
	for _, up := range []string{httpUser + ":" + httpPass, httpUser + ":" + httpWrong} {
		sc.add("HTTP Basic credentials", "base64", base64.StdEncoding.EncodeToString([]byte(up)))
	}

	// The scanner must be able to fail: each secret, planted in a log
	// line in forms written here independently of the scanner, is found,
	// and a line with only public keys and "(redacted)" is not.
	t.Run("scanner finds planted secrets", func(t *testing.T) {
		for _, plant := range []string{
			"level=DEBUG msg=handshake key=" + base64.StdEncoding.EncodeToString(pskNew[:]) + " peer=x",
			`{"psk":"` + base64.RawURLEncoding.EncodeToString(ours[:]) + `"}`,
			fmt.Sprintf("private_key=%x\n", deadKey[:]),
			fmt.Sprintf("KEY %X", siteKey[:]),
			fmt.Sprintf("bytes %v", psk[:]),
			"error: bad key \"" + oursNew.Base64()[:25] + "...\"",
			"Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(httpUser+":"+httpPass)),
			"socks5: login alice/" + socksWrong,
		} {
			if len(sc.find(plant)) == 0 {
				t.Errorf("the scanner misses a secret planted in %q", plant)
			}
		}
		sitePub := siteKey.PublicKey()
		clean := "peer: " + ours.PublicKey().String() + " private key: (redacted) " + hex.EncodeToString(sitePub[:])
		if found := sc.find(clean); len(found) != 0 {
			t.Errorf("the scanner flags a clean line: %v", found)
		}
	})

	// The site knows our first key with the PSK; a second peer's endpoint
	// is a socket that reads handshake initiations and never answers.
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{PrivateKey: siteKey})
	sitePeer := func(pub protocol.PublicKey, k protocol.PresharedKey) {
		t.Helper()
		// allowed_ip moves our tunnel addresses to this key of ours.
		err := site.Device.IpcSet(fmt.Sprintf("public_key=%x\npreshared_key=%x\nallowed_ip=%s/32\nallowed_ip=%s/128\n",
			pub[:], k[:], peersite.OurV4, peersite.OurV6))
		if err != nil {
			t.Fatal(err)
		}
	}
	sitePeer(ours.PublicKey(), psk)
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var initiations atomic.Int32
	silentDone := make(chan struct{})
	go func() {
		defer close(silentDone)
		buf := make([]byte, 2048)
		for {
			n, _, err := silent.ReadFrom(buf)
			if err != nil {
				return
			}
			if n == protocol.MessageInitiationSize && buf[0] == 1 {
				initiations.Add(1)
			}
		}
	}()
	t.Cleanup(func() { silent.Close(); <-silentDone })

	confText := func(key protocol.PrivateKey, sitePSK string) string {
		return site.WGQuick(key, "") + "PresharedKey = " + sitePSK + "\n" +
			"\n[Peer]\nPublicKey = " + deadKey.PublicKey().String() + "\nPresharedKey = " + deadPSK.Base64() +
			"\nEndpoint = " + silent.LocalAddr().String() + "\nAllowedIPs = 10.9.9.9/32\n" +
			"\n[Socks5]\nBindAddress = 127.0.0.1:0\nUsername = " + socksUser + "\nPassword = " + socksPass + "\n" +
			"\n[http]\nBindAddress = 127.0.0.1:0\nUsername = " + httpUser + "\nPassword = " + httpPass + "\n"
	}
	dir := t.TempDir()
	uapiDir := ShortTempDir(t)
	path := WriteFile(t, dir, "wg0.conf", confText(ours, psk.Base64()))

	var outs leakOutputs
	if code, _, errOut := outs.run(t, "check", "-c", path); code != exitOK {
		t.Fatalf("check of the good file: exit %d: %s", code, errOut)
	}
	var upStdout SyncBuffer
	cmd := exec.Command(wgboreBinary(t), "up", "-c", path, "-log-format", "json", "-log-level", "debug",
		"-uapi-dir", uapiDir, "-metrics", "127.0.0.1:0", "-handshake-wait", "2s")
	cmd.Stdout = &upStdout
	d := runDaemon(t, cmd)
	if h := fmt.Sprint(d.summary["handshakes"]); h != "1/2" {
		t.Fatalf("summary says handshakes %s, want 1/2 (the site with its PSK, not the silent peer): %v", h, d.summary)
	}
	socks := d.addr(t, "socks5 ", 0)
	httpProxy := d.addr(t, "http ", 0)
	metricsBase := "http://" + strings.TrimSuffix(d.addr(t, "metrics http://", 0), "/metrics")

	// The proxies, with the right and the wrong passwords.
	through := func(when string) {
		t.Helper()
		if out := mustCurl(t, "--max-time", "15", "--socks5-hostname", socks, "--proxy-user", socksUser+":"+socksPass, "http://10.0.0.2/echo"); out != "GET " {
			t.Fatalf("SOCKS5 %s: %q", when, out)
		}
		if out := mustCurl(t, "--max-time", "15", "-x", "http://"+httpUser+":"+httpPass+"@"+httpProxy, "http://10.0.0.2/echo"); out != "GET " {
			t.Fatalf("HTTP proxy %s: %q", when, out)
		}
	}
	through("with the first key and PSK")
	if out, _, code := curlRun(t, "--max-time", "10", "--socks5-hostname", socks, "--proxy-user", socksUser+":"+socksWrong, "http://10.0.0.2/echo"); code == 0 || out != "" {
		t.Fatalf("wrong SOCKS5 password: exit %d, body %q", code, out)
	}
	for _, flag := range []string{"-G", "-p"} {
		out, _, _ := curlRun(t, "--max-time", "10", flag, "-o", "/dev/null", "-w", "%{http_code}%{http_connect}",
			"-x", "http://"+httpUser+":"+httpWrong+"@"+httpProxy, "http://10.0.0.2/echo")
		if !strings.Contains(out, "407") {
			t.Fatalf("wrong HTTP proxy password (%s): %q, want 407", flag, out)
		}
	}

	// Garbage on our WireGuard port, from both loopbacks: random bytes,
	// each message type with a random body, and an initiation whose MAC1
	// is right, so it gets as far as the handshake before failing.
	code, port, errOut := outs.run(t, "show", "-uapi-dir", uapiDir, "wg0", "listen-port")
	if code != exitOK {
		t.Fatalf("show listen-port: exit %d: %s", code, errOut)
	}
	port = strings.TrimSpace(port)
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := net.Dial("udp", net.JoinHostPort(host, port))
		if err != nil {
			if host == "::1" {
				continue // no IPv6 loopback here
			}
			t.Fatal(err)
		}
		for _, size := range []int{1, 3, 4, 31, 32, 64, 92, 148, 200, 1500} {
			for typ := byte(0); typ <= 5; typ++ {
				msg := make([]byte, size)
				rand.Read(msg)
				msg[0] = typ
				if size >= 4 {
					msg[1], msg[2], msg[3] = 0, 0, 0
				}
				c.Write(msg)
			}
		}
		c.Write(initiationWithMAC1(ours.PublicKey()))
		c.Close()
	}

	// A broken file to check (a bad public key, a key in the wrong
	// section), and bad secret values to check and to up.
	broken := WriteFile(t, dir, "broken.conf", confText(ours, psk.Base64())+"\n[Peer]\nPublicKey = not-a-key\nAllowedIPs = 10.8.0.0/24\nMTU = 9\n")
	if code, _, errOut := outs.run(t, "check", "-c", broken); code != exitUsage || !strings.Contains(errOut, "broken.conf:") {
		t.Fatalf("check of a broken file: exit %d, want %d:\n%s", code, exitUsage, errOut)
	}
	badKey := WriteFile(t, dir, "badkey.conf", strings.Replace(confText(ours, badPSK), ours.Base64(), badPrivate, 1))
	if code, _, errOut := outs.run(t, "check", "-c", badKey); code != exitUsage || !strings.Contains(errOut, "PrivateKey") || !strings.Contains(errOut, "PresharedKey") {
		t.Fatalf("check of bad keys: exit %d, want %d naming both keys:\n%s", code, exitUsage, errOut)
	}
	for _, format := range []string{"text", "json"} {
		if code, _, errOut := outs.run(t, "up", "-c", badKey, "-log-level", "debug", "-log-format", format, "-uapi-dir", ShortTempDir(t)); code != exitUsage {
			t.Fatalf("up with bad keys (%s log): exit %d, want %d:\n%s", format, code, exitUsage, errOut)
		}
	}

	// Reload to a new private key and PSK, which the site learns too.
	sitePeer(oursNew.PublicKey(), pskNew)
	WriteFile(t, dir, "wg0.conf", confText(oursNew, pskNew.Base64()))
	code, out, errOut := outs.run(t, "reload", "-uapi-dir", uapiDir, "wg0")
	if code != exitOK || !strings.Contains(out, "private key changed") || !strings.Contains(out, "peer "+site.PublicKey.String()) {
		t.Fatalf("wgbore reload to a new key and PSK: exit %d:\n%s%s", code, out, errOut)
	}
	through("after the reload to a new key and PSK")
	// A reload of a file with a bad PSK is refused, by the command and by
	// SIGHUP; then the good file again, by SIGHUP.
	WriteFile(t, dir, "wg0.conf", confText(oursNew, badPSK))
	if code, _, errOut := outs.run(t, "reload", "-uapi-dir", uapiDir, "wg0"); code != exitUsage {
		t.Fatalf("wgbore reload of a bad PSK: exit %d, want %d: %s", code, exitUsage, errOut)
	}
	hup(t, d)
	waitLogged(t, d, "reload rejected: still running the previous configuration", 2)
	reloaded := d.countLogged("reloaded")
	WriteFile(t, dir, "wg0.conf", confText(oursNew, pskNew.Base64()))
	hup(t, d)
	waitLogged(t, d, "reloaded", reloaded+1)
	through("after the refused reloads")

	// The silent peer is retried: a second initiation, RekeyTimeout after
	// the first.
	deadline := time.Now().Add(15 * time.Second)
	for initiations.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the silent peer got %d handshake initiations, want a retry", initiations.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// What the engine saw, from the metrics.
	fams, _ := metricstest.Parse(t, metricstest.Remote(metricsBase))
	if n := metricstest.Value(t, fams, "wgbore_dropped_packets_total", "reason", "handshake_failed"); n < 1 {
		t.Errorf("the initiation with a right MAC1 was not counted as a failed handshake (%v)", n)
	}
	if n := metricstest.Value(t, fams, "wgbore_dropped_packets_total", "reason", "bad_mac1"); n < 1 {
		t.Errorf("no garbage initiation was counted as bad_mac1 (%v)", n)
	}
	for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
		res, err := http.Get(metricsBase + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		outs.add("GET "+p, string(body))
	}

	// show, in every form that exists; the key forms are refused.
	code, all, errOut := outs.run(t, "show", "-uapi-dir", uapiDir, "wg0")
	if code != exitOK || !strings.Contains(all, "  private key: (hidden)\n") || !strings.Contains(all, "  preshared key: (hidden)\n") {
		t.Fatalf("show wg0: exit %d, want the private key and PSK (hidden) as wg show prints them:\n%s%s", code, all, errOut)
	}
	for _, args := range [][]string{{}, {"all"}, {"interfaces"}} {
		if code, _, errOut := outs.run(t, append([]string{"show", "-uapi-dir", uapiDir}, args...)...); code != exitOK {
			t.Errorf("show %v: exit %d: %s", args, code, errOut)
		}
	}
	// Every FIELD show takes, as the command itself lists them when given
	// one it does not know, so that a field added later is checked too.
	code, _, errOut = outs.run(t, "show", "-uapi-dir", uapiDir, "wg0", "no-such-field")
	_, list, ok := strings.Cut(errOut, "want one of ")
	list, _, _ = strings.Cut(list, " (")
	showFields := strings.Split(list, ", ")
	if code != exitUsage || !ok || !slices.Contains(showFields, "public-key") || !slices.Contains(showFields, "transfer") {
		t.Fatalf("show wg0 no-such-field: exit %d, want %d and the list of fields: %s", code, exitUsage, errOut)
	}
	for _, field := range showFields {
		for _, name := range []string{"wg0", "all"} {
			if code, _, errOut := outs.run(t, "show", "-uapi-dir", uapiDir, name, field); code != exitOK {
				t.Errorf("show %s %s: exit %d: %s", name, field, code, errOut)
			}
		}
	}
	for _, field := range []string{"private-key", "preshared-keys", "dump"} {
		if code, _, _ := outs.run(t, "show", "-uapi-dir", uapiDir, "wg0", field); code != exitUsage {
			t.Errorf("show wg0 %s: exit %d, want %d", field, code, exitUsage)
		}
	}

	// The raw UAPI get holds the current private key and PSK in hex, as
	// the protocol has it. It is not scanned; it proves that the keys
	// the scanner looks for are the ones in use, in the form it looks for.
	raw := uapiGetRaw(t, uapiDir, "wg0")
	if found := strings.Join(sc.find(raw), "; "); !strings.Contains(found, "our new private key (hex)") || !strings.Contains(found, "the new PSK (hex)") {
		t.Fatalf("the raw UAPI get does not hold the live key and PSK in hex (found: %s)", found)
	}

	// Last, the daemon stops, so its shutdown lines are scanned too.
	if code := d.stop(t); code != exitOK {
		t.Errorf("wgbore up exited %d after SIGTERM", code)
	}
	log := d.log()
	for _, want := range []string{"socks5: authentication failed", "rejected handshake initiation", "handshake did not complete, retrying"} {
		if !strings.Contains(log, want) {
			t.Errorf("the debug log has no %q: the path that might leak did not run", want)
		}
	}
	outs.add("wgbore up: stderr (JSON log)", log)
	outs.add("wgbore up: stdout", upStdout.String())

	for _, o := range outs.list {
		if found := sc.find(o.text); len(found) > 0 {
			t.Errorf("%s holds a secret: %s", o.where, strings.Join(found, "; "))
		}
	}
	t.Logf("scanned %d outputs for %d written forms of the secrets", len(outs.list), len(sc.needles))
}

// initiationWithMAC1 is a handshake initiation to the holder of to's
// private key, random in every field but its type and MAC1, which is
// right: it passes the MAC1 check, before any Curve25519 work, and fails
// when the responder decrypts the static key.
func initiationWithMAC1(to protocol.PublicKey) []byte {
	msg := make([]byte, protocol.MessageInitiationSize)
	rand.Read(msg)
	binary.LittleEndian.PutUint32(msg, 1)
	mac1Key := blake2s.Sum256(append([]byte("mac1----"), to[:]...))
	h, _ := blake2s.New128(mac1Key[:])
	h.Write(msg[:len(msg)-32])
	copy(msg[len(msg)-32:], h.Sum(nil))
	clear(msg[len(msg)-16:]) // no MAC2
	return msg
}

// uapiGetRaw sends get=1 on the tunnel's socket and returns the reply as
// it came, up to its errno line.
func uapiGetRaw(t *testing.T, dir, name string) string {
	t.Helper()
	c := dialUAPI(t, dir, name)
	defer c.Close()
	if _, err := io.WriteString(c, "get=1\n\n"); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			t.Fatalf("UAPI get: %v after %q", err, b.String())
		}
		if strings.HasPrefix(line, "errno=") {
			return b.String()
		}
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
