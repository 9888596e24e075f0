package socksclient

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// scripted runs a server side on a pipe that reads what the client
// sends in one write and answers with answer, then closes.
func scripted(t *testing.T, answer []byte) (client net.Conn, sent <-chan []byte) {
	t.Helper()
	c, s := net.Pipe()
	t.Cleanup(func() { c.Close() })
	got := make(chan []byte, 1)
	go func() {
		defer s.Close()
		buf := make([]byte, 1024)
		n, _ := s.Read(buf)
		got <- buf[:n]
		s.Write(answer)
	}()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, got
}

func TestConnectSendsOneWrite(t *testing.T) {
	c, sent := scripted(t, []byte{5, 0, 5, 0, 0, 1, 10, 0, 0, 1, 0x1f, 0x90})
	bound, err := ConnectOn(c, Auth{}, netip.MustParseAddrPort("10.0.0.2:80"))
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("10.0.0.1:8080"); bound != want {
		t.Errorf("bound %v, want %v", bound, want)
	}
	want := []byte{5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 2, 0, 80}
	if got := <-sent; !bytes.Equal(got, want) {
		t.Errorf("sent % x, want % x", got, want)
	}
}

func TestLoginGoesWithTheRequest(t *testing.T) {
	c, sent := scripted(t, []byte{5, 2, 1, 0, 5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53})
	bound, err := Associate(c, Auth{User: "u", Pass: "pw"}, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("[::1]:53"); bound != want {
		t.Errorf("bound %v, want %v", bound, want)
	}
	want := []byte{5, 1, 2, 1, 1, 'u', 2, 'p', 'w', 5, 3, 0, 1, 0, 0, 0, 0, 0, 0}
	if got := <-sent; !bytes.Equal(got, want) {
		t.Errorf("sent % x, want % x", got, want)
	}
}

func TestRefusals(t *testing.T) {
	target := netip.MustParseAddrPort("10.0.0.2:80")
	for _, tc := range []struct {
		name   string
		auth   Auth
		answer []byte
		check  func(error) bool
	}{
		{"no acceptable method", Auth{}, []byte{5, 0xff}, func(err error) bool { return errors.Is(err, ErrNoAcceptableMethod) }},
		{"login refused", Auth{User: "u", Pass: "p"}, []byte{5, 2, 1, 1}, func(err error) bool { return errors.Is(err, ErrLoginRefused) }},
		{"connection refused", Auth{}, []byte{5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0}, func(err error) bool {
			var r *ReplyError
			return errors.As(err, &r) && r.Code == 5
		}},
		{"cut short", Auth{}, []byte{5, 0, 5, 0, 0, 1, 10}, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{"unknown address type", Auth{}, []byte{5, 0, 5, 0, 0, 9}, func(err error) bool { return err != nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := scripted(t, tc.answer)
			_, err := ConnectOn(c, tc.auth, target)
			if !tc.check(err) {
				t.Fatalf("error %v", err)
			}
		})
	}
}

func TestDatagramRoundTrip(t *testing.T) {
	for _, dst := range []string{"10.0.0.2:53", "[fd00::2]:53", "[::ffff:10.0.0.2]:53"} {
		ap := netip.MustParseAddrPort(dst)
		d := AppendDatagram(nil, ap, []byte("query"))
		src, payload, err := ParseDatagram(d)
		if err != nil || src != netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) || string(payload) != "query" {
			t.Errorf("%s: got %v %q %v", dst, src, payload, err)
		}
	}
	if _, _, err := ParseDatagram([]byte{0, 0, 1, 1, 10, 0, 0, 2, 0, 53}); err == nil {
		t.Error("a fragment was accepted")
	}
}

// FuzzParseDatagram: whatever a relay sends, parsing returns a payload
// within the datagram or an error, and never panics.
func FuzzParseDatagram(f *testing.F) {
	f.Add(AppendDatagram(nil, netip.MustParseAddrPort("10.0.0.2:53"), []byte("answer")))
	f.Add(AppendDatagram(nil, netip.MustParseAddrPort("[fd00::2]:53"), nil))
	f.Add([]byte{0, 0, 0, 3, 4, 'h', 'o', 's', 't', 0, 53, 'x'})
	f.Add([]byte{0, 0, 0, 3, 200})
	f.Fuzz(func(t *testing.T, d []byte) {
		_, payload, err := ParseDatagram(d)
		if err == nil && len(payload) > len(d) {
			t.Fatalf("payload of %d bytes from a datagram of %d", len(payload), len(d))
		}
	})
}

// FuzzReply: whatever a server answers, a request ends with a bound
// address or an error, and never panics.
func FuzzReply(f *testing.F) {
	f.Add([]byte{5, 0, 5, 0, 0, 1, 10, 0, 0, 1, 0, 80})
	f.Add([]byte{5, 0, 5, 0, 0, 3, 4, 'h', 'o', 's', 't', 0, 80})
	f.Add([]byte{5, 0, 5, 1, 0, 4})
	f.Add([]byte{5, 0xff})
	f.Fuzz(func(t *testing.T, answer []byte) {
		c, s := net.Pipe()
		defer c.Close()
		go func() {
			defer s.Close()
			io.CopyN(io.Discard, s, 13)
			s.Write(answer)
		}()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		ConnectOn(c, Auth{}, netip.MustParseAddrPort("10.0.0.2:80"))
	})
}
