package membudget

import (
	"bufio"
	"bytes"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// noLimit is the value past which a cgroup's memory limit means none:
// cgroup v1 writes the largest page-aligned int64 for "unlimited".
const noLimit = 1 << 60

// CgroupLimit returns the memory limit of the cgroup this process runs
// in, as a container runtime sets it (docker --memory, a Kubernetes
// limit), read from fsys, the root file system. It knows cgroup v2's
// memory.max and v1's memory.limit_in_bytes; ok is false when there is
// no limit or no cgroup file system, as outside Linux.
func CgroupLimit(fsys fs.FS) (limit int64, ok bool) {
	v2, v1 := "/", "/"
	if raw, err := fs.ReadFile(fsys, "proc/self/cgroup"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(raw))
		for sc.Scan() {
			// hierarchy-ID:controllers:path
			f := strings.SplitN(sc.Text(), ":", 3)
			if len(f) != 3 {
				continue
			}
			switch {
			case f[0] == "0" && f[1] == "":
				v2 = f[2]
			case hasController(f[1], "memory"):
				v1 = f[2]
			}
		}
	}
	// Inside a cgroup namespace the process's own cgroup is mounted at
	// the root; outside one it sits at its path. Try the path first.
	for _, p := range []string{
		path.Join("sys/fs/cgroup", v2, "memory.max"),
		"sys/fs/cgroup/memory.max",
		path.Join("sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"),
		"sys/fs/cgroup/memory/memory.limit_in_bytes",
	} {
		raw, err := fs.ReadFile(fsys, p)
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(raw))
		if v == "max" {
			return 0, false
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n >= noLimit {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
