package main

import (
	"io/fs"

	"github.com/wgbore/wgbore/cmd/internal/cgroup"
)

// serveProcs is how many Go processors serve runs with: one more than
// the cores it may use, unless the user chose (the GOMAXPROCS variable),
// a CPU quota applies, or something else already moved the setting.
//
// Go reads a socket that became ready when a processor finds no
// goroutine to run, or from its monitor thread once no one has polled
// for 10 ms. A server that relays a saturating download keeps every
// processor busy, so a neighbour's packet or a host's reply can wait
// that long before anything reads it. With one processor more than the
// cores, whenever fewer goroutines are runnable than processors one
// thread sleeps in the kernel's poll, which wakes it as soon as a socket
// is ready; and the kernel shares the cores between the threads at a
// finer grain than Go's own preemption.
//
// Under a quota below the cores a processor more would spend the quota
// early in each period and then wait for the rest of it, so that case
// keeps Go's default, which follows the quota. A quota of the cores or
// more cannot be spent faster than the cores spend it.
//
// quotaCores is the quota in cores, 0 for none.
func serveProcs(envGOMAXPROCS string, current, cpus int, quotaCores float64) (int, bool) {
	if envGOMAXPROCS != "" || (quotaCores > 0 && quotaCores < float64(cpus)) || current != cpus || cpus < 1 {
		return current, false
	}
	return cpus + 1, true
}

// cpuQuota is the process's cgroup CPU quota in cores, 0 for none; a
// nil root is a host without cgroups.
func cpuQuota(root fs.FS) float64 {
	if root == nil {
		return 0
	}
	cores, _ := cgroup.CPUQuota(root)
	return cores
}
