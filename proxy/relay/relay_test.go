package proxy

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
)

// fakeNotifier is a readNotifier fed by the test, standing in for a
// tunnel connection (netstack.TCPConn). It notifies on every feed, as
// gVisor does on every segment.
type fakeNotifier struct {
	net.Conn // unused but for the addresses

	mu     sync.Mutex
	data   []byte
	eof    bool
	closed bool
	notify func()
}

func (f *fakeNotifier) NotifyReadable(fn func()) func() {
	f.mu.Lock()
	f.notify = fn
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		f.notify = nil
		f.mu.Unlock()
	}
}

// feed adds bytes, or the end of the stream, and notifies with the lock
// held, as gVisor holds its wait queue's.
func (f *fakeNotifier) feed(p []byte, eof bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.data = append(f.data, p...)
	f.eof = f.eof || eof
	if f.notify != nil {
		f.notify()
	}
}

func (f *fakeNotifier) Readable() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.data) > 0 || f.eof || f.closed
}

func (f *fakeNotifier) TryRead(b []byte) (int, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return 0, false, net.ErrClosed
	case len(f.data) > 0:
		n := copy(b, f.data)
		f.data = f.data[n:]
		return n, false, nil
	case f.eof:
		return 0, false, io.EOF
	}
	return 0, true, nil
}

func (f *fakeNotifier) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	if f.notify != nil {
		f.notify()
	}
	return nil
}

// loopbackPair is two ends of a host TCP connection.
func loopbackPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestRelayFromNotifier: bytes fed in pieces of every size, while the
// relay drains, arrive whole and in order, and the end of the stream
// arrives as a half-close.
func TestRelayFromNotifier(t *testing.T) {
	dst, peer := loopbackPair(t)
	src := &fakeNotifier{}
	src.feed([]byte("before the relay started;"), false)
	var wg sync.WaitGroup
	wg.Add(1) // as relayBoth's caller holds
	defer wg.Done()
	finished := relayFromNotifier(dst, src, &wg)

	var want bytes.Buffer
	want.WriteString("before the relay started;")
	go func() {
		for i := range 300 {
			p := bytes.Repeat([]byte{byte(i)}, i*i) // up to ~88 KiB
			src.feed(p, false)
		}
		src.feed(nil, true)
	}()
	for i := range 300 {
		want.Write(bytes.Repeat([]byte{byte(i)}, i*i))
	}
	got, err := io.ReadAll(peer)
	if err != nil {
		t.Fatal(err)
	}
	<-finished
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("relayed %d bytes, want %d, or not the same", len(got), want.Len())
	}
	// A half-close: the other way still works.
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	if _, err := io.ReadFull(dst, one); err != nil {
		t.Fatal(err)
	}
}

// TestRelayFromNotifierWriteFails: when the destination goes away, the
// copy ends and closes the source.
func TestRelayFromNotifierWriteFails(t *testing.T) {
	dst, peer := loopbackPair(t)
	src := &fakeNotifier{}
	var wg sync.WaitGroup
	wg.Add(1) // as relayBoth's caller holds
	defer wg.Done()
	finished := relayFromNotifier(dst, src, &wg)
	peer.SetLinger(0)
	peer.Close()
	dst.Close()
	src.feed([]byte("nobody reads this"), false)
	<-finished
	if !src.Readable() {
		t.Fatal("source not closed")
	}
	if _, _, err := src.TryRead(make([]byte, 1)); err != net.ErrClosed {
		t.Fatalf("source: %v, want closed", err)
	}
}

// TestRelayBothNotifier: relayBoth through a readNotifier upstream ends
// once both directions have, with only the caller's goroutine counted.
func TestRelayBothNotifier(t *testing.T) {
	client, user := loopbackPair(t)
	upW, upR := loopbackPair(t)
	up := &notifierConn{fakeNotifier: &fakeNotifier{Conn: upW}}
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		relayBoth(client, up, &wg)
	}()
	up.feed([]byte("from upstream"), true)
	if _, err := user.Write([]byte("from user")); err != nil {
		t.Fatal(err)
	}
	user.CloseWrite()
	got, err := io.ReadAll(user)
	if err != nil || string(got) != "from upstream" {
		t.Fatalf("user read %q, %v", got, err)
	}
	sent, err := io.ReadAll(upR)
	if err != nil || string(sent) != "from user" {
		t.Fatalf("upstream got %q, %v", sent, err)
	}
	<-done
	wg.Wait()
}

// notifierConn writes and half-closes through the host conn, reads
// through the fake.
type notifierConn struct{ *fakeNotifier }

func (c *notifierConn) Read(b []byte) (int, error)  { panic("relay read a readNotifier with Read") }
func (c *notifierConn) Write(b []byte) (int, error) { return c.fakeNotifier.Conn.Write(b) }
func (c *notifierConn) CloseWrite() error {
	return c.fakeNotifier.Conn.(*net.TCPConn).CloseWrite()
}
