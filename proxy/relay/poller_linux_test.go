package relay

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// startWatchedRelay starts a relay between two host TCP sockets that a
// Poller watches; the test talks through it at left and right. done is
// closed once both directions have ended, and wg then holds no count.
func startWatchedRelay(t *testing.T) (left, right *net.TCPConn, done chan struct{}, wg *sync.WaitGroup) {
	t.Helper()
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	left, a := loopbackPair(t)
	b, right := loopbackPair(t)
	wa, wb := p.Watch(a), p.Watch(b)
	if wa == nil || wb == nil {
		t.Fatal("Watch refused a TCP socket")
	}
	left.SetDeadline(time.Now().Add(30 * time.Second))
	right.SetDeadline(time.Now().Add(30 * time.Second))
	wg = new(sync.WaitGroup)
	wg.Add(1) // the caller's count, which done gives back
	done = make(chan struct{})
	Start(wa, wb, wg, nil, func() { close(done); wg.Done() })
	return left, right, done, wg
}

// TestStartWatchedTCP: Start between two host TCP sockets that a Poller
// watches moves every byte both ways, passes each half-close on, and
// calls done once both directions have ended; while the relay idles it
// holds no goroutine and no buffer.
func TestStartWatchedTCP(t *testing.T) {
	base := runtime.NumGoroutine() + 1 // the poller's
	left, right, done, wg := startWatchedRelay(t)

	for round := range 3 {
		p := bytes.Repeat([]byte{byte('a' + round)}, 256<<10)
		go left.Write(p)
		got := make([]byte, len(p))
		if _, err := io.ReadFull(right, got); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("round %d left to right: %v, or the bytes differ", round, err)
		}
		go right.Write(p[:1000])
		if _, err := io.ReadFull(left, got[:1000]); err != nil || !bytes.Equal(got[:1000], p[:1000]) {
			t.Fatalf("round %d right to left: %v", round, err)
		}
	}
	waitBuffersBack(t, largeBuffers, "idle")
	waitBuffersBack(t, smallBuffers, "idle")
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Errorf("an idle relay holds %d goroutines", n-base)
	}

	// Half-close one way: the other still carries bytes.
	left.CloseWrite()
	if _, err := io.ReadAll(right); err != nil {
		t.Fatalf("right after left's half-close: %v", err)
	}
	if _, err := right.Write([]byte("still")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(left, got); err != nil || string(got) != "still" {
		t.Fatalf("right to left after the half-close: %q, %v", got, err)
	}
	select {
	case <-done:
		t.Fatal("done before the second direction ended")
	default:
	}
	right.CloseWrite()
	if _, err := io.ReadAll(left); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("done not called after both directions ended")
	}
	wg.Wait()
}

// TestStartWatchedClose: closing a watched socket, which leaves the
// epoll instance without an event, still ends the relay.
func TestStartWatchedClose(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, a := loopbackPair(t)
	b, _ := loopbackPair(t)
	wa, wb := p.Watch(a), p.Watch(b)
	var wg sync.WaitGroup
	wg.Add(1)
	done := make(chan struct{})
	Start(wa, wb, &wg, nil, func() { close(done); wg.Done() })
	wa.Close()
	wb.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("closing both sockets did not end the relay")
	}
	wg.Wait()
}

// TestStartWatchedDatagrams: Start with moved relays datagrams between
// watched host UDP sockets whole, counts each, and ends on a close.
func TestStartWatchedDatagrams(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	left, hostA := udpPair(t)
	hostB, right := udpPair(t)
	wa, wb := p.Watch(hostA), p.Watch(hostB)
	var moved sync.WaitGroup
	var wg sync.WaitGroup
	wg.Add(1)
	done := make(chan struct{})
	sizes := []int{0, 1, 1400, 65507}
	moved.Add(2 * len(sizes))
	Start(wa, wb, &wg, func() { moved.Done() }, func() { close(done); wg.Done() })
	buf := make([]byte, 70000)
	for _, size := range sizes {
		for _, way := range [][2]interface {
			Write([]byte) (int, error)
			Read([]byte) (int, error)
			SetReadDeadline(time.Time) error
		}{{left, right}, {right, left}} {
			msg := bytes.Repeat([]byte{byte(size)}, size)
			if _, err := way[0].Write(msg); err != nil {
				t.Fatal(err)
			}
			way[1].SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := way[1].Read(buf)
			if err != nil || !bytes.Equal(buf[:n], msg) {
				t.Fatalf("%d bytes: got %d, %v", size, n, err)
			}
		}
	}
	moved.Wait()
	waitBuffersBack(t, datagramBuffers, "idle")
	wa.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("closing a socket did not end the datagram relay")
	}
	wg.Wait()
}

// TestStartWatchedAlreadyEnded: a host that sent its bytes and closed
// before the relay started (a banner, then EOF) is relayed whole, and the
// relay ends cleanly; its notification may come while Start registers.
func TestStartWatchedAlreadyEnded(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for range 50 {
		left, a := loopbackPair(t)
		b, right := loopbackPair(t)
		left.Write([]byte("banner"))
		left.Close()
		right.CloseWrite()
		wa, wb := p.Watch(a), p.Watch(b)
		var wg sync.WaitGroup
		wg.Add(1)
		done := make(chan struct{})
		Start(wa, wb, &wg, nil, func() { close(done); wg.Done() })
		right.SetReadDeadline(time.Now().Add(10 * time.Second))
		if got, err := io.ReadAll(right); err != nil || string(got) != "banner" {
			t.Fatalf("got %q, %v", got, err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the relay did not end")
		}
		wg.Wait()
	}
}

// TestDrainStartsSmall: a drain that finds a few bytes, or only the end
// of the stream (what a mass close wakes every relay for), takes a small
// buffer, not a large one; a read that fills the small buffer moves the
// drain to a large one for the rest of the burst.
func TestDrainStartsSmall(t *testing.T) {
	left, right, done, wg := startWatchedRelay(t)

	large := largeBuffers.gets.Load()
	for i := range 20 {
		msg := []byte{'a' + byte(i), 'b', 'c'}
		left.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(right, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("message %d: %q, %v", i, got, err)
		}
		time.Sleep(2 * lingerTime) // the drain leaves: the next one starts anew
	}
	if n := largeBuffers.gets.Load() - large; n != 0 {
		t.Errorf("20 three-byte messages took %d large buffers", n)
	}

	bulk := bytes.Repeat([]byte{'x'}, 256<<10)
	go left.Write(bulk)
	if _, err := io.ReadFull(right, make([]byte, len(bulk))); err != nil {
		t.Fatal(err)
	}
	if largeBuffers.gets.Load() == large {
		t.Error("a bulk transfer never moved to a large buffer")
	}

	large = largeBuffers.gets.Load()
	left.Close()
	right.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end after both sides closed")
	}
	wg.Wait()
	if n := largeBuffers.gets.Load() - large; n != 0 {
		t.Errorf("reading the ends of the streams took %d large buffers", n)
	}
}

// TestLingerRead: a watched socket's lingerRead times out with nothing
// to read, returns bytes that arrive while it waits, the end of a stream,
// and an error the kernel hands out once (a connected UDP socket's port
// unreachable); after a timeout that found the socket empty, an event
// that came before the next read still says it is readable.
func TestLingerRead(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	peer, c := loopbackPair(t)
	w := p.Watch(c).(*watched)
	buf := make([]byte, 64)

	if n, wouldBlock, err := w.lingerRead(buf, 20*time.Millisecond); !wouldBlock || n != 0 || err != nil {
		t.Fatalf("nothing to read: %d, %v, %v; want a timeout", n, wouldBlock, err)
	}
	if w.Readable() {
		t.Fatal("readable after a timeout that found the socket empty")
	}
	go func() {
		time.Sleep(10 * time.Millisecond)
		peer.Write([]byte("late"))
	}()
	if n, wouldBlock, err := w.lingerRead(buf, 5*time.Second); wouldBlock || err != nil || string(buf[:n]) != "late" {
		t.Fatalf("bytes during the wait: %q, %v, %v", buf[:n], wouldBlock, err)
	}
	peer.Write([]byte("x"))
	deadline := time.Now().Add(5 * time.Second)
	for !w.Readable() {
		if time.Now().After(deadline) {
			t.Fatal("the poller never saw the second write")
		}
		time.Sleep(time.Millisecond)
	}
	if n, _, err := w.lingerRead(buf, time.Second); n != 1 || err != nil {
		t.Fatalf("second write: %d, %v", n, err)
	}
	// A wait whose deadline passes before any read is tried must not
	// mark the socket drained: the edge-triggered event is not repeated.
	peer.Write([]byte("y"))
	for !w.Readable() {
		time.Sleep(time.Millisecond)
	}
	if n, wouldBlock, _ := w.lingerRead(buf, -time.Second); wouldBlock {
		if !w.Readable() {
			t.Fatal("a wait that read nothing lost the event")
		}
		if n, _, err := w.TryRead(buf); n != 1 || err != nil {
			t.Fatalf("the byte after the lapsed wait: %d, %v", n, err)
		}
	} else if n != 1 {
		t.Fatalf("lapsed wait read %d bytes", n)
	}
	peer.Close()
	if n, wouldBlock, err := w.lingerRead(buf, 5*time.Second); n != 0 || wouldBlock || err != io.EOF {
		t.Fatalf("end of stream: %d, %v, %v; want io.EOF", n, wouldBlock, err)
	}

	a, b := udpPair(t)
	wb := p.Watch(b).(*watched)
	a.Close() // b's next datagram draws a port unreachable
	b.Write([]byte("?"))
	if _, wouldBlock, err := wb.lingerRead(buf, 5*time.Second); wouldBlock || err == nil || !TransientUDPError(err) {
		t.Fatalf("port unreachable: %v, %v; want the transient error", wouldBlock, err)
	}
	if _, wouldBlock, err := wb.lingerRead(buf, 20*time.Millisecond); !wouldBlock || err != nil {
		t.Fatalf("after the error: %v, %v; want a timeout (the error is handed out once)", wouldBlock, err)
	}
}
