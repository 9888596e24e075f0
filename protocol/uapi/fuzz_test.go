package uapi

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/protocol"
)

// fakeDevice is an in-memory Device, so the fuzzer runs the whole
// Handle path, parse and apply, without sockets.
type fakeDevice struct {
	priv  protocol.PrivateKey
	port  uint16
	peers map[protocol.PublicKey]protocol.PeerConfig
}

func (d *fakeDevice) PrivateKey() protocol.PrivateKey     { return d.priv }
func (d *fakeDevice) SetPrivateKey(k protocol.PrivateKey) { d.priv = k }
func (d *fakeDevice) ListenPort() uint16                  { return d.port }
func (d *fakeDevice) PublicKey() protocol.PublicKey {
	if d.priv.IsZero() {
		return protocol.PublicKey{}
	}
	return d.priv.PublicKey()
}

func (d *fakeDevice) Peers() []protocol.PeerStatus {
	var out []protocol.PeerStatus
	for _, c := range d.peers {
		out = append(out, protocol.PeerStatus{PublicKey: c.PublicKey, AllowedIPs: c.AllowedIPs, PersistentKeepalive: c.PersistentKeepalive})
	}
	return out
}

func (d *fakeDevice) PeerPresharedKey(k protocol.PublicKey) (protocol.PresharedKey, bool) {
	c, ok := d.peers[k]
	return c.PresharedKey, ok
}

func (d *fakeDevice) UpdatePeers(set []protocol.PeerConfig, remove []protocol.PublicKey) ([]error, []protocol.PublicKey) {
	var removed []protocol.PublicKey
	for _, k := range remove {
		if _, ok := d.peers[k]; ok {
			delete(d.peers, k)
			removed = append(removed, k)
		}
	}
	errs := make([]error, len(set))
	for i, c := range set {
		if c.PublicKey.IsZero() {
			errs[i] = errors.New("zero key")
			continue
		}
		d.peers[c.PublicKey] = c
	}
	return errs, removed
}

// fuzzConn reads the request from in and collects the replies in out.
type fuzzConn struct {
	in  io.Reader
	out bytes.Buffer
}

func (c *fuzzConn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// FuzzUAPISet feeds arbitrary bytes after "set=1\n" through Handle: the
// parser must never panic, and every request must be answered with
// exactly one errno line, so a client never loses step. The seeds are in
// testdata/fuzz/FuzzUAPISet.
func FuzzUAPISet(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		dev := &fakeDevice{port: 51820, peers: map[protocol.PublicKey]protocol.PeerConfig{}}
		in := append([]byte("set=1\n"), body...)
		c := &fuzzConn{in: bytes.NewReader(in)}
		if err := NewHandler(dev).Handle(c); err != nil && !strings.Contains(err.Error(), "too long") {
			t.Fatalf("Handle: %v", err)
		}
		// Each complete request gets one reply ending in "errno=N\n\n".
		for _, reply := range strings.SplitAfter(c.out.String(), "\n\n") {
			if reply == "" {
				continue
			}
			lines := strings.Split(strings.TrimSuffix(reply, "\n\n"), "\n")
			if !strings.HasPrefix(lines[len(lines)-1], "errno=") {
				t.Fatalf("reply without errno: %q", reply)
			}
		}
	})
}
