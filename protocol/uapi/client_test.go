package uapi

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

// fakeServer answers one request on a pipe with reply, and hands back
// the request it read.
func fakeServer(t *testing.T, reply string) (net.Conn, <-chan string) {
	t.Helper()
	client, server := net.Pipe()
	req := make(chan string, 1)
	go func() {
		defer server.Close()
		r := bufio.NewReader(server)
		var b strings.Builder
		for {
			line, err := r.ReadString('\n')
			b.WriteString(line)
			if err != nil || line == "\n" {
				break
			}
		}
		req <- b.String()
		io.WriteString(server, reply)
	}()
	t.Cleanup(func() { client.Close() })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	return client, req
}

func TestGetParsesReply(t *testing.T) {
	priv, _ := protocol.GeneratePrivateKey()
	psk, _ := protocol.GeneratePresharedKey()
	p1, p2 := newPublic(t), newPublic(t)
	var zero [protocol.KeySize]byte
	reply := strings.Join([]string{
		"private_key=" + hexKey(priv),
		"listen_port=51820",
		"fwmark=66",
		"some_future_key=whatever",
		"public_key=" + hexKey(p1),
		"preshared_key=" + hexKey(psk),
		"protocol_version=1",
		"endpoint=[fd00::1]:51821",
		"last_handshake_time_sec=1700000000",
		"last_handshake_time_nsec=5",
		"tx_bytes=10",
		"rx_bytes=20",
		"persistent_keepalive_interval=25",
		"allowed_ip=10.0.0.2/32",
		"allowed_ip=fd00::2/128",
		"public_key=" + hexKey(p2),
		"preshared_key=" + hexKey(zero),
		"last_handshake_time_sec=0",
		"last_handshake_time_nsec=0",
		"tx_bytes=0",
		"rx_bytes=0",
		"persistent_keepalive_interval=0",
		"errno=0",
		"", "",
	}, "\n")
	conn, req := fakeServer(t, reply)
	st, err := Get(conn)
	if err != nil {
		t.Fatal(err)
	}
	if r := <-req; r != "get=1\n\n" {
		t.Fatalf("request %q", r)
	}
	if !st.HasPrivateKey || !st.PublicKey.Equal(priv.PublicKey()) || st.ListenPort != 51820 || st.FwMark != 66 {
		t.Fatalf("device %+v", st)
	}
	if len(st.Peers) != 2 {
		t.Fatalf("%d peers, want 2", len(st.Peers))
	}
	a, b := st.Peers[0], st.Peers[1]
	if !a.PublicKey.Equal(p1) || !a.HasPresharedKey || a.Endpoint != netip.MustParseAddrPort("[fd00::1]:51821") ||
		!a.LastHandshake.Equal(time.Unix(1700000000, 5)) || a.TxBytes != 10 || a.RxBytes != 20 ||
		a.PersistentKeepalive != 25*time.Second || !slices.Equal(a.AllowedIPs, prefixes("10.0.0.2/32", "fd00::2/128")) {
		t.Fatalf("first peer %+v", a)
	}
	if !b.PublicKey.Equal(p2) || b.HasPresharedKey || b.Endpoint.IsValid() || !b.LastHandshake.IsZero() ||
		b.PersistentKeepalive != 0 || len(b.AllowedIPs) != 0 {
		t.Fatalf("second peer %+v", b)
	}
}

func TestGetNoKeyNoPeers(t *testing.T) {
	conn, _ := fakeServer(t, "listen_port=0\nerrno=0\n\n")
	st, err := Get(conn)
	if err != nil {
		t.Fatal(err)
	}
	if st.HasPrivateKey || !st.PublicKey.IsZero() || len(st.Peers) != 0 {
		t.Fatalf("device %+v", st)
	}
}

func TestGetErrors(t *testing.T) {
	secret := strings.Repeat("ab", protocol.KeySize-1) + "zz" // a key's length, not hex
	for _, tc := range []struct {
		name, reply string
		check       func(error) bool
	}{
		{"errno", "errno=22\n\n", func(err error) bool {
			var ue *Error
			return errors.As(err, &ue) && ue.Errno == 22
		}},
		{"truncated", "listen_port=1\n", func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{"no errno", "listen_port=1\n\n", func(err error) bool { return strings.Contains(err.Error(), "without errno") }},
		{"bad port", "listen_port=70000\nerrno=0\n\n", func(err error) bool { return strings.Contains(err.Error(), "bad listen_port") }},
		{"bad key", "private_key=" + secret + "\nerrno=0\n\n", func(err error) bool {
			return strings.Contains(err.Error(), "bad private_key") && !strings.Contains(err.Error(), secret)
		}},
		{"no equals", "hello\nerrno=0\n\n", func(err error) bool { return strings.Contains(err.Error(), "without '='") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, _ := fakeServer(t, tc.reply)
			st, err := Get(conn)
			if err == nil {
				t.Fatalf("no error; got %+v", st)
			}
			if !tc.check(err) {
				t.Fatalf("error %q", err)
			}
		})
	}
}

// TestGetFromHandler: Get reads back what Handler writes, on a
// connection that goes on serving requests afterwards.
func TestGetFromHandler(t *testing.T) {
	e := newEngine(t)
	c := serve(t, e)
	peer := newPublic(t)
	psk, _ := protocol.GeneratePresharedKey()
	c.mustSet(
		"public_key="+hexKey(peer),
		"preshared_key="+hexKey(psk),
		"endpoint=127.0.0.1:51820",
		"persistent_keepalive_interval=25",
		"allowed_ip=10.0.0.0/24",
	)
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	st, err := Get(c.c)
	if err != nil {
		t.Fatal(err)
	}
	if !st.PublicKey.Equal(e.PublicKey()) || st.ListenPort != e.ListenPort() || len(st.Peers) != 1 {
		t.Fatalf("device %+v", st)
	}
	p := st.Peers[0]
	if !p.PublicKey.Equal(peer) || !p.HasPresharedKey || p.Endpoint != netip.MustParseAddrPort("127.0.0.1:51820") ||
		p.PersistentKeepalive != 25*time.Second || !slices.Equal(p.AllowedIPs, prefixes("10.0.0.0/24")) {
		t.Fatalf("peer %+v", p)
	}
	if len(c.get()) == 0 {
		t.Fatal("the connection stopped answering after Get")
	}
}
