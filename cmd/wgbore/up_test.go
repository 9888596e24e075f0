package main

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/systemtest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

func waitForLog(t *testing.T, log *systemtest.SyncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(log.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log after 30s:\n%s", want, log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// inProcess is a command run inside the test binary, with its stderr
// readable while it runs and signals the test sends.
type inProcess struct {
	stderr  systemtest.SyncBuffer
	signals chan os.Signal
	hangups chan os.Signal
	done    chan int
}

func runInProcess(t *testing.T, args ...string) *inProcess {
	return runInProcessWith(t, nil, args...)
}

// runInProcessWith is runInProcess with edit applied to the command's
// environment first. A command still running when the test ends (one
// that failed before signalling it) is cancelled then, and waited for.
func runInProcessWith(t *testing.T, edit func(*env), args ...string) *inProcess {
	if len(args) > 0 && (args[0] == "up" || args[0] == "serve") {
		args = append(args, "-uapi-dir", systemtest.ShortTempDir(t))
	}
	p := &inProcess{signals: make(chan os.Signal, 2), hangups: make(chan os.Signal, 1), done: make(chan int, 1)}
	e := &env{stdin: strings.NewReader(""), stdout: &strings.Builder{}, stderr: &p.stderr, signals: p.signals, hangups: p.hangups}
	if edit != nil {
		edit(e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		p.done <- run(ctx, e, args)
	}()
	t.Cleanup(func() {
		cancel()
		// A shutdown's grace already under way ends at a signal.
		for range 2 {
			select {
			case p.signals <- os.Interrupt:
			default:
			}
		}
		select {
		case <-finished:
		case <-time.After(30 * time.Second):
			t.Error("the command did not return after its test ended")
		}
	})
	return p
}

// exit waits for the command to return and checks its exit code; what
// says what was being waited for, for the failure message.
func (p *inProcess) exit(t *testing.T, want int, within time.Duration, what string) {
	t.Helper()
	select {
	case code := <-p.done:
		if code != want {
			t.Fatalf("exit %d, want %d:\n%s", code, want, p.stderr.String())
		}
	case <-time.After(within):
		t.Fatalf("%s:\n%s", what, p.stderr.String())
	}
}

// forwarderAddr is the host address of the first TCPClientTunnel in the
// start-up summary.
func (p *inProcess) forwarderAddr() string {
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if i := strings.Index(line, "tcp 127.0.0.1:"); i >= 0 {
			return strings.Fields(strings.Split(line[i+len("tcp "):], "→")[0])[0]
		}
	}
	return ""
}

// TestUpInProcess runs `up` inside the test binary, so the race detector
// watches the wiring of listeners, shutdown and CheckAlive, which the
// system tests (cmd/internal/systemtest) exercise only from outside.
func TestUpInProcess(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	conf := site.WGQuick(ours, "[TCPClientTunnel]\nBindAddress = 127.0.0.1:0\nTarget = 10.0.0.2:7\n")
	// CheckAlive: the site answers pings; 10.0.0.99 has no peer.
	conf = strings.Replace(conf, "[Peer]", "CheckAlive = 10.0.0.2, 10.0.0.99\nCheckAliveInterval = 1\n\n[Peer]", 1)
	path := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", conf)

	p := runInProcess(t, "up", "-c", path)
	waitForLog(t, &p.stderr, `msg="wgbore is up"`)
	if !strings.Contains(p.stderr.String(), `handshakes=1/1`) {
		t.Fatalf("summary without a completed handshake:\n%s", p.stderr.String())
	}
	waitForLog(t, &p.stderr, `msg="check alive: answering" addr=10.0.0.2`)
	waitForLog(t, &p.stderr, `msg="check alive: not answering" addr=10.0.0.99`)
	systemtest.EchoThrough(t, func() (net.Conn, error) { return net.Dial("tcp", p.forwarderAddr()) }, 256<<10)

	p.signals <- os.Interrupt
	p.exit(t, exitOK, 30*time.Second, "up did not return after the signal")
	if strings.Contains(p.stderr.String(), ours.Base64()) {
		t.Fatal("the private key reached the log")
	}
}

// TestSignalDuringHandshakeWait: a user who presses Ctrl-C while `up` is
// still waiting for a silent peer's first handshake expects it to stop
// now, not once the start-up summary's wait has run out.
func TestSignalDuringHandshakeWait(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	theirs, _ := protocol.GeneratePrivateKey()
	// A loopback port nobody listens on: the peer never answers.
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	conf := "[Interface]\nPrivateKey = " + ours.Base64() + "\nAddress = 10.0.0.1/32\n\n" +
		"[Peer]\nPublicKey = " + theirs.PublicKey().String() + "\nEndpoint = " + deadAddr + "\nAllowedIPs = 10.0.0.0/24\n\n" +
		"[TCPClientTunnel]\nBindAddress = 127.0.0.1:0\nTarget = 10.0.0.2:7\n"
	path := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", conf)

	p := runInProcess(t, "up", "-c", path, "-handshake-wait", "2m")
	p.signals <- os.Interrupt
	p.exit(t, exitOK, 20*time.Second, "up ignored SIGINT while waiting for the first handshake")
}

// TestSecondSignalEndsGrace: the first signal lets open connections
// finish for up to -grace; a second one, as from an impatient operator,
// ends them at once.
func TestSecondSignalEndsGrace(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	conf := site.WGQuick(ours, "[TCPClientTunnel]\nBindAddress = 127.0.0.1:0\nTarget = 10.0.0.2:7\n")
	path := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", conf)

	p := runInProcess(t, "up", "-c", path, "-grace", "2m")
	waitForLog(t, &p.stderr, `msg="wgbore is up"`)
	c, err := net.Dial("tcp", p.forwarderAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write([]byte("x"))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	p.signals <- os.Interrupt
	waitForLog(t, &p.stderr, `msg="signal received: shutting down"`)
	select {
	case code := <-p.done:
		t.Fatalf("exit %d with a connection open, before its 2m grace:\n%s", code, p.stderr.String())
	case <-time.After(200 * time.Millisecond):
	}
	p.signals <- os.Interrupt
	p.exit(t, exitOK, 20*time.Second, "a second signal did not end the 2m grace")
}

// TestFailedStartClosesListeners: when one listener cannot open, the
// ones opened before it are closed, so a supervisor's restart finds
// their ports free.
func TestFailedStartClosesListeners(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	conf := site.WGQuick(ours, "[Socks5]\nBindAddress = "+freeAddr+"\n\n[http]\nBindAddress = "+busy.Addr().String()+"\n")
	path := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", conf)

	code, _, errOut := runCLI(t, "", "up", "-c", path)
	if code != exitFailure || !strings.Contains(errOut, "address already in use") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	l, err := net.Listen("tcp", freeAddr)
	if err != nil {
		t.Fatalf("the [Socks5] port is still held after the failed start: %v", err)
	}
	l.Close()
}

// TestSummaryWithoutEndpoint: a peer with no Endpoint (we are the side
// that waits) is not a failure, so the summary is no warning.
func TestSummaryWithoutEndpoint(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	theirs, _ := protocol.GeneratePrivateKey()
	conf := "[Interface]\nPrivateKey = " + ours.Base64() + "\nAddress = 10.0.0.1/32\n\n" +
		"[Peer]\nPublicKey = " + theirs.PublicKey().String() + "\nAllowedIPs = 10.0.0.2/32\n"
	path := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", conf)

	p := runInProcess(t, "up", "-c", path)
	waitForLog(t, &p.stderr, `msg="wgbore is up"`)
	p.signals <- os.Interrupt
	p.exit(t, exitOK, 30*time.Second, "up did not return after the signal")
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(line, `msg="wgbore is up"`) &&
			(!strings.Contains(line, "level=INFO") || !strings.Contains(line, "waiting for the peer to connect")) {
			t.Fatalf("summary for a peer without an endpoint: %s", line)
		}
	}
}
