package netstack

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// rebindAt is a body reader that runs each action once the bytes read
// pass its offset, in the middle of the transfer.
type rebindAt struct {
	r       io.Reader
	read    int
	at      []int
	actions []func()
}

func (r *rebindAt) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.read += n
	for len(r.at) > 0 && r.read >= r.at[0] {
		r.actions[0]()
		r.at, r.actions = r.at[1:], r.actions[1:]
	}
	return n, err
}

// TestRebindMidDownload downloads 64 MiB through the library from a
// wireguard-go peer while the host's network changes under it twice.
// First the program calls Rebind, as a mobile app does when its platform
// reports a new network; then the sockets fail under the engine (closed
// by something else, as a system can close an app's sockets), and Net
// must notice and reopen them by itself. Each time the new sockets are on
// another loopback address, so the peer sees our packets come from a new
// source, as after a move from Wi-Fi to cellular, and must follow them
// (WireGuard's roaming). The download must complete intact, on the same
// TCP connection.
//
// The change loses the peer's flight in transit, all but what it sent
// after it heard from our new address. When that is a segment or two,
// gVisor's RACK, on in wireguard-go's netstack as it ships, marks the
// whole flight lost while its pipe still counts it, and resends two
// segments per retransmission timeout until it has resent them all: a
// crawl of tens of seconds, seen about once in a hundred runs on two
// busy cores. What starts it is the SACK of the segment that got
// through, which any receiver sends; the sender's timer, not the
// rebind, then sets the pace. So the first case's site sends without
// RACK, and the second runs the site as it ships, with a receive window
// small enough that such a crawl ends within the test's patience. Both
// are held to the same checks.
func TestRebindMidDownload(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: moves 64 MiB")
	}
	for _, c := range []struct {
		name        string
		withoutRACK bool
		bufferMax   int
	}{
		{"site without RACK", true, 0},
		{"site as shipped", false, 256 << 10},
	} {
		t.Run(c.name, func(t *testing.T) { rebindMidDownload(t, c.withoutRACK, c.bufferMax) })
	}
}

// rebindMidDownload is one case of TestRebindMidDownload: the site
// without RACK or not, our TCP buffers at most bufferMax (0: the default).
func rebindMidDownload(t *testing.T, withoutRACK bool, bufferMax int) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{WithoutRACK: withoutRACK})
	// The engine's and Net's own account of the rebinds goes to the
	// test's log, so that a failure shows which step did not happen.
	// Registered first, the writer's cleanup runs after Net's Close.
	w := newTestWriter(t)
	n := openOursWith(t, key, site, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.TCPBufferMax = bufferMax
	})

	// Where the peer last heard from us, as wg show would print it.
	peerSees := func() string {
		conf, err := site.Device.IpcGet()
		if err != nil {
			return fmt.Sprintf("(unknown: %v)", err)
		}
		for _, line := range strings.Split(conf, "\n") {
			if ep, ok := strings.CutPrefix(line, "endpoint="); ok {
				return ep
			}
		}
		return ""
	}
	moveTo := func(a string) {
		n.listen.Addrs = []netip.Addr{netip.MustParseAddr(a)}
	}
	var failedPort uint16
	const size = 64 << 20
	client := &http.Client{Transport: &http.Transport{DialContext: n.DialContext}, Timeout: 2 * time.Minute}
	resp, err := client.Get(fmt.Sprintf("http://%v/bytes/%d", peersite.TheirV4, size))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := &rebindAt{r: resp.Body, at: []int{16 << 20, 40 << 20}, actions: []func(){
		func() {
			moveTo("127.0.0.2")
			if err := n.Rebind(); err != nil {
				t.Fatalf("Rebind: %v", err)
			}
			t.Logf("rebound to %v", n.bind.Load().LocalAddrs())
		},
		func() {
			moveTo("127.0.0.3")
			failed := n.bind.Load()
			failedPort = failed.Port()
			failed.Close()
			t.Logf("closed %v under the engine", failed.LocalAddrs())
		},
	}}
	start := time.Now()
	if err := peersite.CheckBody(body, size); err != nil {
		t.Fatalf("download: %v; we listen on %v, the peer sends to %s", err, n.bind.Load().LocalAddrs(), peerSees())
	}
	t.Logf("%d MiB in %v", size>>20, time.Since(start).Round(time.Millisecond))
	if len(body.at) != 0 {
		t.Fatalf("the download ended at %d bytes, before every change", body.read)
	}

	local := n.bind.Load().LocalAddrs()
	if len(local) != 1 || local[0].Addr() != netip.MustParseAddr("127.0.0.3") {
		t.Fatalf("after the sockets failed, Net listens on %v, want new sockets on 127.0.0.3", local)
	}
	if local[0].Port() != failedPort {
		t.Errorf("the new sockets took port %d, want the old port %d kept", local[0].Port(), failedPort)
	}
	if ep := peerSees(); ep != local[0].String() {
		t.Errorf("the peer sends to %s, want our new sockets at %v", ep, local[0])
	}
}

// testWriter writes a logger's lines to t's log until t's cleanups
// run: a goroutine of the engine can still log as Net closes, and a
// test's log is closed once the test has returned.
type testWriter struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool
}

func newTestWriter(t testing.TB) *testWriter {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.stopped = true
		w.mu.Unlock()
	})
	return w
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimSuffix(string(b), "\n"))
	}
	return len(b), nil
}
