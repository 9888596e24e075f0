//go:build !unix

package systemtest

import (
	"io/fs"
	"runtime"
	"testing"
	"time"
)

// raiseNoFile does nothing: there is no descriptor limit to raise here
// (Windows has no soft limit on handles).
func raiseNoFile(testing.TB) {}

// selfCPU skips the benchmark, whose CPU figure it cannot measure.
func selfCPU(tb testing.TB) time.Duration {
	tb.Skip("the CPU figure needs getrusage, which " + runtime.GOOS + " lacks")
	return 0
}

// fileOwner reports -1 for both IDs: files here have no Unix owner,
// so a check of them fails rather than passes by accident.
func fileOwner(fs.FileInfo) (uid, gid int) { return -1, -1 }
