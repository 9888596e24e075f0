//go:build unix

package peersite

import (
	"syscall"
	"testing"
	"time"
)

// cpuTime is this process's user plus system CPU time so far.
func cpuTime(testing.TB) time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
