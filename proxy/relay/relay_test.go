package relay

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/wakeup"
)

// fakeNotifier is a ReadNotifier fed by the test, standing in for a
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
	wg.Add(1) // as Both's caller holds
	defer wg.Done()
	finished := fromNotifier(drains, dst, src, &wg, nil)

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
	wg.Add(1) // as Both's caller holds
	defer wg.Done()
	finished := fromNotifier(drains, dst, src, &wg, nil)
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

// TestRelayBothNotifier: Both through a ReadNotifier upstream ends
// once both directions have, with only the caller's goroutine counted.
func TestRelayBothNotifier(t *testing.T) {
	client, user := loopbackPair(t)
	upW, upR := loopbackPair(t)
	up := &notifierConn{fakeNotifier: &fakeNotifier{Conn: upW}}
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		Both(client, up, &wg)
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

func (c *notifierConn) Read(b []byte) (int, error)  { panic("relay read a ReadNotifier with Read") }
func (c *notifierConn) Write(b []byte) (int, error) { return c.fakeNotifier.Conn.Write(b) }
func (c *notifierConn) CloseWrite() error {
	return c.fakeNotifier.Conn.(*net.TCPConn).CloseWrite()
}

// waitBuffersBack waits until no buffer of p is out, as an idle relay
// holds none, and fails after 5 s.
func waitBuffersBack(t *testing.T, p *bufferPool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.out.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d buffers still held by an idle relay", what, p.out.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCopyHostSocketIdleHoldsNoBuffer: Copy from a host TCP socket moves
// every byte, gives its buffer back whenever the socket runs dry, and
// ends cleanly at the end of the stream.
func TestCopyHostSocketIdleHoldsNoBuffer(t *testing.T) {
	writer, src := loopbackPair(t)
	dst, reader := loopbackPair(t)
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := Copy(dst, src)
		done <- result{n, err}
	}()
	var want bytes.Buffer
	for round := range 3 {
		p := bytes.Repeat([]byte{byte('a' + round)}, 1<<20)
		want.Write(p)
		go writer.Write(p)
		got := make([]byte, len(p))
		if _, err := io.ReadFull(reader, got); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("round %d: %v, or the bytes differ", round, err)
		}
		waitBuffersBack(t, largeBuffers, fmt.Sprintf("after round %d", round))
	}
	writer.CloseWrite()
	r := <-done
	if r.err != nil || r.n != int64(want.Len()) {
		t.Fatalf("Copy: %d bytes, %v; want %d, nil", r.n, r.err, want.Len())
	}
}

// udpPair is two UDP sockets on 127.0.0.1 connected to each other.
func udpPair(t *testing.T) (a, b *net.UDPConn) {
	t.Helper()
	a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b, err = net.DialUDP("udp", nil, a.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if a, err = net.DialUDP("udp", a.LocalAddr().(*net.UDPAddr), b.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestDatagramsKeepBoundaries: Datagrams between two host UDP sockets
// moves every datagram whole, up to the largest UDP payload, in both
// directions, counts each, and holds no buffer while both sides idle.
func TestDatagramsKeepBoundaries(t *testing.T) {
	left, hostA := udpPair(t)
	hostB, right := udpPair(t)
	var moved atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1) // as the caller holds
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer wg.Done()
		Datagrams(hostA, hostB, &wg, func() { moved.Add(1) })
	}()
	sizes := []int{0, 1, 1400, 9000, 65507}
	buf := make([]byte, 70000)
	for _, way := range []struct {
		name     string
		from, to *net.UDPConn
	}{{"left to right", left, right}, {"right to left", right, left}} {
		for _, size := range sizes {
			msg := bytes.Repeat([]byte{byte(size)}, size)
			if _, err := way.from.Write(msg); err != nil {
				t.Fatal(err)
			}
			way.to.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := way.to.Read(buf)
			if err != nil || !bytes.Equal(buf[:n], msg) {
				t.Fatalf("%s, %d bytes: got %d bytes, %v", way.name, size, n, err)
			}
		}
	}
	waitBuffersBack(t, datagramBuffers, "idle")
	if got := moved.Load(); got != int64(2*len(sizes)) {
		t.Errorf("moved counted %d datagrams, want %d", got, 2*len(sizes))
	}
	hostA.Close()
	<-done
	wg.Wait()
}

// gatedConn is a destination whose writes wait for release, counting
// how many wait at once.
type gatedConn struct {
	net.Conn // unused but for the addresses
	release  chan struct{}
	waiting  *atomic.Int64
	most     *atomic.Int64
}

func (g *gatedConn) Write(b []byte) (int, error) {
	n := g.waiting.Add(1)
	for m := g.most.Load(); n > m && !g.most.CompareAndSwap(m, n); m = g.most.Load() {
	}
	<-g.release
	g.waiting.Add(-1)
	return len(b), nil
}

func (g *gatedConn) CloseWrite() error { return nil }

// TestMassWakeSharesGoroutines: when every relay's source has bytes at
// once, as when a mass close wakes them all, the drains run on the
// shared pool's few goroutines, one after another, not on a goroutine
// each; every relay still gets its bytes through and its end.
func TestMassWakeSharesGoroutines(t *testing.T) {
	clk := clock.NewManual(time.Unix(0, 0)) // stalls are never timed out
	pool := wakeup.New(4, wakeup.Stall, clk)

	release := make(chan struct{})
	var waiting, most atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1) // as Both's caller holds
	defer wg.Done()
	const n = 100
	srcs := make([]*fakeNotifier, n)
	finished := make([]chan struct{}, n)
	for i := range n {
		srcs[i] = &fakeNotifier{}
		dst := &gatedConn{release: release, waiting: &waiting, most: &most}
		finished[i] = fromNotifier(pool, dst, srcs[i], &wg, nil)
	}
	for _, src := range srcs {
		src.feed([]byte("x"), true)
	}
	for deadline := time.Now().Add(10 * time.Second); waiting.Load() < 4; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d drains write, want 4", waiting.Load())
		}
	}
	close(release)
	for i, f := range finished {
		select {
		case <-f:
		case <-time.After(10 * time.Second):
			t.Fatalf("relay %d never finished", i)
		}
	}
	if got := pool.Started(); got != 4 {
		t.Errorf("%d goroutines started for %d relays' drains, want the pool's 4", got, n)
	}
	if got := most.Load(); got != 4 {
		t.Errorf("%d drains wrote at once, want 4", got)
	}
}
