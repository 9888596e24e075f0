// Package cgroup reads the limits a container runtime or service manager
// puts on this process through Linux control groups: its memory limit
// and its CPU quota. Every read goes through an injected root file
// system, so tests give it the files they want, and outside Linux, where
// there are none, each answer is "no limit".
package cgroup

import (
	"bufio"
	"bytes"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// noMemoryLimit is the value past which a memory limit means none:
// cgroup v1 writes the largest page-aligned int64 for "unlimited".
const noMemoryLimit = 1 << 60

// MemoryLimit returns the memory limit of the cgroup this process runs
// in, as a container runtime sets it (docker --memory, a Kubernetes
// limit), read from fsys, the root file system. It knows cgroup v2's
// memory.max and v1's memory.limit_in_bytes; ok is false when there is
// no limit or no cgroup file system.
func MemoryLimit(fsys fs.FS) (limit int64, ok bool) {
	raw, ok := read(fsys, "memory", "memory.max", "memory.limit_in_bytes")
	if !ok {
		return 0, false
	}
	// v2's "max" fails to parse, and v1's near-2^63 is past noMemoryLimit:
	// both mean none.
	n, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil || n <= 0 || n >= noMemoryLimit {
		return 0, false
	}
	return n, true
}

// CPUQuota reports whether the cgroup this process runs in has a CPU
// quota (docker --cpus, a Kubernetes CPU limit, systemd's CPUQuota=), and
// how many cores' worth it is. It knows cgroup v2's cpu.max and v1's
// cpu.cfs_quota_us with cpu.cfs_period_us. It reads the process's own
// cgroup only, not the ones above it.
func CPUQuota(fsys fs.FS) (cores float64, ok bool) {
	if raw, found := read(fsys, "cpu", "cpu.max", ""); found {
		// "max 100000" or "50000 100000": quota, then period.
		f := strings.Fields(string(raw))
		if len(f) == 0 || f[0] == "max" {
			return 0, false
		}
		period := "100000"
		if len(f) > 1 {
			period = f[1]
		}
		return share(f[0], period)
	}
	raw, found := read(fsys, "cpu", "", "cpu.cfs_quota_us")
	if !found {
		return 0, false
	}
	period := "100000"
	if p, found := read(fsys, "cpu", "", "cpu.cfs_period_us"); found {
		period = strings.TrimSpace(string(p))
	}
	return share(strings.TrimSpace(string(raw)), period)
}

// share is quota/period in cores, both in microseconds; a quota that is
// negative (v1's -1 for none) or unreadable is no quota.
func share(quota, period string) (float64, bool) {
	q, err1 := strconv.ParseInt(quota, 10, 64)
	p, err2 := strconv.ParseInt(period, 10, 64)
	if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
		return 0, false
	}
	return float64(q) / float64(p), true
}

// read returns the first of the process's cgroup files that exists: v2's
// file (when v2 is not empty), then v1's in the controller's hierarchy.
// Inside a cgroup namespace the process's own cgroup is mounted at the
// root; outside one it sits at its path, which is tried first.
func read(fsys fs.FS, controller, v2, v1 string) ([]byte, bool) {
	v2dir, v1dir := "/", "/"
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
				v2dir = f[2]
			case hasController(f[1], controller):
				v1dir = f[2]
			}
		}
	}
	var paths []string
	if v2 != "" {
		paths = append(paths, path.Join("sys/fs/cgroup", v2dir, v2), path.Join("sys/fs/cgroup", v2))
	}
	if v1 != "" {
		// v1 mounts cpu together with cpuacct, under either name, and
		// usually links "cpu" to it.
		mounts := []string{controller}
		if controller == "cpu" {
			mounts = append(mounts, "cpu,cpuacct", "cpuacct,cpu")
		}
		for _, m := range mounts {
			paths = append(paths, path.Join("sys/fs/cgroup", m, v1dir, v1), path.Join("sys/fs/cgroup", m, v1))
		}
	}
	for _, p := range paths {
		if raw, err := fs.ReadFile(fsys, p); err == nil {
			return raw, true
		}
	}
	return nil, false
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
