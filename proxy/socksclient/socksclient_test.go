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

// scripted runs a server side on a pipe that answers with answer,
// whatever the client sends and whenever, then closes; it records what
// the client sent, and sent returns that once the client is done.
func scripted(t *testing.T, answer []byte) (client net.Conn, sent func() []byte) {
	t.Helper()
	c, s := net.Pipe()
	var got bytes.Buffer
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		io.Copy(&got, s)
	}()
	go func() {
		s.Write(answer)
		s.Close()
	}()
	t.Cleanup(func() { c.Close(); s.Close(); <-recorded })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, func() []byte {
		c.Close()
		<-recorded
		return got.Bytes()
	}
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
	if got := sent(); !bytes.Equal(got, want) {
		t.Errorf("sent % x, want % x", got, want)
	}
}

// TestLoginGoesWithTheRequest: a pipelined CONNECT puts the login between
// the greeting and the request, all before any answer is read.
func TestLoginGoesWithTheRequest(t *testing.T) {
	c, sent := scripted(t, []byte{5, 2, 1, 0, 5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53})
	bound, err := ConnectOn(c, Auth{User: "u", Pass: "pw"}, netip.MustParseAddrPort("10.0.0.2:53"))
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("[::1]:53"); bound != want {
		t.Errorf("bound %v, want %v", bound, want)
	}
	want := []byte{5, 1, 2, 1, 1, 'u', 2, 'p', 'w', 5, 1, 0, 1, 10, 0, 0, 2, 0, 53}
	if got := sent(); !bytes.Equal(got, want) {
		t.Errorf("sent % x, want % x", got, want)
	}
}

// TestAssociateWaitsForEachAnswer: ASSOCIATE sends the login only after
// the method choice, and the request only after the login's status, so
// that a server refusing either never has unread bytes to reset on.
func TestAssociateWaitsForEachAnswer(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	s.SetDeadline(time.Now().Add(5 * time.Second))
	done := make(chan error, 1)
	var relay netip.AddrPort
	go func() {
		var err error
		relay, err = Associate(c, Auth{User: "u", Pass: "pw"}, netip.AddrPort{})
		done <- err
	}()
	for _, step := range []struct{ want, answer []byte }{
		{[]byte{5, 1, 2}, []byte{5, 2}},
		{[]byte{1, 1, 'u', 2, 'p', 'w'}, []byte{1, 0}},
		{[]byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}, []byte{5, 0, 0, 1, 127, 0, 0, 1, 0x13, 0x88}},
	} {
		got := make([]byte, len(step.want))
		if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, step.want) {
			t.Fatalf("read % x, %v; want % x", got, err, step.want)
		}
		if _, err := s.Write(step.answer); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("127.0.0.1:5000"); relay != want {
		t.Errorf("relay %v, want %v", relay, want)
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
		go io.Copy(io.Discard, s)
		go func() {
			defer s.Close()
			s.Write(answer)
		}()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		ConnectOn(c, Auth{}, netip.MustParseAddrPort("10.0.0.2:80"))
	})
}
