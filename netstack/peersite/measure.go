package peersite

import (
	"io"
	"net"
	"testing"
)

// MeasureStream moves 1 MiB per op over c, read when download and
// written otherwise, after a warm-up that lets the TCP windows open, and
// reports MB/s and this process's CPU seconds per GB.
func MeasureStream(b *testing.B, c net.Conn, download bool) {
	b.Helper()
	buf := make([]byte, 1<<20)
	move := func() {
		if download {
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
		} else if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	for range 8 {
		move()
	}
	cpu0 := cpuTime(b)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		move()
	}
	b.StopTimer()
	gb := float64(b.N) * float64(len(buf)) / 1e9
	b.ReportMetric((cpuTime(b)-cpu0).Seconds()/gb, "cpu-s/GB")
}
