package membudget

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The executable's resident pages fall when they are released: those the
// test touches again come back, far fewer than start-up left.
func TestReleaseBinary(t *testing.T) {
	before := binaryResident(t)
	if err := ReleaseBinary(); err != nil {
		t.Fatalf("ReleaseBinary: %v", err)
	}
	after := binaryResident(t)
	t.Logf("the test binary's resident pages: %d KiB before, %d KiB after", before, after)
	if after >= before {
		t.Fatalf("the binary's resident pages did not fall: %d KiB before, %d KiB after", before, after)
	}
}

// binaryResident sums the Rss of the executable's read-only mappings, in
// KiB, from /proc/self/smaps.
func binaryResident(t *testing.T) int64 {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if p, err := filepath.EvalSymlinks(exe); err == nil {
		exe = p
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var kib int64
	ours := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			// A mapping's header: address perms offset dev inode [path].
			ours = len(fields) >= 6 && fields[5] == exe && fields[1][1] != 'w'
		case ours && len(fields) >= 2 && fields[0] == "Rss:":
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			kib += n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return kib
}
