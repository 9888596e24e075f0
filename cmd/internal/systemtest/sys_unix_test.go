//go:build unix

package systemtest

import (
	"io/fs"
	"syscall"
	"testing"
	"time"
)

// raiseNoFile lifts this process's descriptor limit to the hard limit:
// the benchmark holds one client socket per connection.
func raiseNoFile(b testing.TB) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
}

// selfCPU is this process's user plus system CPU time so far.
func selfCPU(testing.TB) time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fileOwner is the user and group IDs that own the file fi describes.
func fileOwner(fi fs.FileInfo) (uid, gid int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}
