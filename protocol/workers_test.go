package protocol

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestHandshakeWorkers: handshakes get a core fewer than the crypto
// workers or the cores, whichever is smaller, and never none.
func TestHandshakeWorkers(t *testing.T) {
	for _, c := range []struct{ workers, cpus, want int }{
		{1, 1, 1},
		{2, 1, 1},
		{2, 2, 1},
		{3, 2, 1}, // a processor more than the cores, as serve runs
		{4, 8, 3},
		{8, 8, 7},
		{16, 8, 7},
	} {
		if got := handshakeWorkers(c.workers, c.cpus); got != c.want {
			t.Errorf("handshakeWorkers(%d, %d) = %d, want %d", c.workers, c.cpus, got, c.want)
		}
	}
}

// TestEngineStartsHandshakeWorkers: New starts as many handshake
// goroutines as handshakeWorkers gives, and Close ends them.
func TestEngineStartsHandshakeWorkers(t *testing.T) {
	before := countGoroutines("(*Engine).handshakeWorker(")
	e, err := New(Config{PrivateKey: mustKey(t), Bind: newErringBind(), Packets: newSink(), Workers: 4, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	want := handshakeWorkers(4, runtime.NumCPU())
	// A goroutine's dump names its function once it has started.
	got := 0
	for deadline := time.Now().Add(10 * time.Second); got < want && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		got = countGoroutines("(*Engine).handshakeWorker(") - before
	}
	time.Sleep(10 * time.Millisecond) // for any beyond want to start too
	got = countGoroutines("(*Engine).handshakeWorker(") - before
	e.Close()
	if got != want {
		t.Fatalf("%d handshake goroutines with 4 workers on %d cores, want %d", got, runtime.NumCPU(), want)
	}
	if left := countGoroutines("(*Engine).handshakeWorker(") - before; left != 0 {
		t.Fatalf("%d handshake goroutines left after Close", left)
	}
}

// countGoroutines counts the goroutines whose stack names fn.
func countGoroutines(fn string) int {
	buf := make([]byte, 4<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}
