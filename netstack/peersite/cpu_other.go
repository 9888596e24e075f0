//go:build !unix

package peersite

import (
	"runtime"
	"testing"
	"time"
)

// cpuTime skips the benchmark, whose CPU figure it cannot measure.
func cpuTime(tb testing.TB) time.Duration {
	tb.Skip("the CPU figure needs getrusage, which " + runtime.GOOS + " lacks")
	return 0
}
