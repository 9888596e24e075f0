package membudget

import (
	"flag"
	"net"
	"testing"
)

var recordSockets = flag.Int("records.n", 5000, "connections BenchmarkSocketRecords holds open at once")

// BenchmarkSocketRecords measures what the Go runtime keeps for the life
// of a process after it held many sockets at once, all closed since and
// collected: the floor under what a burst of connections can give back,
// whatever the Reclaimer does. Each socket had a poll descriptor and a
// finalizer record, which the runtime allocates outside the heap and
// keeps for reuse, never returning them to the operating system; they
// show in the runtime's "other" memory class. It opens -records.n
// loopback connections (two sockets each, so it needs twice as many open
// files) in this process, closes them, collects and returns the free
// pages as a reclaim does, and reports per socket:
//
//   - other-B/socket: the growth of that class;
//   - kept-B/socket: the growth of all the memory the runtime holds and
//     has not returned, records, heap and metadata together.
//
// The records are reused, not leaked: a second run in the same process
// (-count 2) finds them free and reports about none, which is also why
// b.N is not used and a round past the first skips. Run it once:
//
//	go test ./cmd/internal/membudget -run '^$' -bench SocketRecords -benchtime 1x
func BenchmarkSocketRecords(b *testing.B) {
	if b.N > 1 {
		b.Skip("run it once (-benchtime 1x): a later round finds the records free")
	}
	n := *recordSockets
	if n < 1 {
		b.Fatalf("-records.n %d: want at least one connection", n)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	other0, kept0 := runtimeRecords()
	conns := make([]net.Conn, 0, 2*n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatalf("after %d connections: %v", len(conns)/2, err)
		}
		conns = append(conns, c)
		s, err := l.Accept()
		if err != nil {
			b.Fatalf("after %d connections: %v", len(conns)/2, err)
		}
		conns = append(conns, s)
	}
	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	conns = nil
	other, kept := runtimeRecords()
	sockets := float64(2 * n)
	b.ReportMetric(float64(other-other0)/sockets, "other-B/socket")
	b.ReportMetric(float64(kept-kept0)/sockets, "kept-B/socket")
}

// runtimeRecords reclaims as a Reclaimer does and reads the runtime's
// "other" memory class and all it holds and has not returned, in bytes.
func runtimeRecords() (other, kept int64) {
	Reclaimer{}.reclaim(false)
	return int64(runtimeCount("/memory/classes/other:bytes")), int64(runtimeCount(mTotal) - runtimeCount(mReleased))
}
