package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// cpuQuota is a cgroup that holds one process to a share of the CPUs.
type cpuQuota struct {
	dir, parent string
	pid         int
}

// quotaPeriod is the cgroup's accounting period, the kernel's default:
// the process runs for its quota in each, and waits out the rest.
const quotaPeriod = 100000 // µs

// capCPU moves pid into a cgroup of its own whose CPU quota is cores
// CPUs: cgroup v2's cpu.max where the unified hierarchy is mounted at
// /sys/fs/cgroup, else cgroup v1's cpu controller. It needs root.
func capCPU(pid int, cores float64) (*cpuQuota, error) {
	quota := int(cores * quotaPeriod)
	if quota < 1000 {
		return nil, fmt.Errorf("a CPU quota of %g cores is too small", cores)
	}
	name := fmt.Sprintf("wgbench-%d", os.Getpid())
	var q *cpuQuota
	var limits map[string]string
	if ctl, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		if !bytes.Contains(append(append([]byte(" "), bytes.TrimSpace(ctl)...), ' '), []byte(" cpu ")) {
			return nil, errors.New("cgroup v2 has no cpu controller here")
		}
		// A child's cpu.max exists once the parent hands it the controller.
		if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu"), 0); err != nil {
			return nil, fmt.Errorf("cgroup v2: enabling the cpu controller: %w", err)
		}
		q = &cpuQuota{dir: "/sys/fs/cgroup/" + name, parent: "/sys/fs/cgroup", pid: pid}
		limits = map[string]string{"cpu.max": fmt.Sprintf("%d %d", quota, quotaPeriod)}
	} else if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err == nil {
		q = &cpuQuota{dir: "/sys/fs/cgroup/cpu/" + name, parent: "/sys/fs/cgroup/cpu", pid: pid}
		limits = map[string]string{"cpu.cfs_period_us": strconv.Itoa(quotaPeriod), "cpu.cfs_quota_us": strconv.Itoa(quota)}
	} else {
		return nil, errors.New("no cgroup cpu controller found under /sys/fs/cgroup")
	}
	if err := os.Mkdir(q.dir, 0o755); err != nil {
		return nil, fmt.Errorf("a CPU quota: %w", err)
	}
	// The period before the quota: v1 refuses a quota over a period
	// that does not hold it.
	for _, f := range []string{"cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.max"} {
		v, ok := limits[f]
		if !ok {
			continue
		}
		if err := os.WriteFile(filepath.Join(q.dir, f), []byte(v), 0); err != nil {
			os.Remove(q.dir)
			return nil, fmt.Errorf("a CPU quota: %s: %w", f, err)
		}
	}
	if err := os.WriteFile(filepath.Join(q.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		os.Remove(q.dir)
		return nil, fmt.Errorf("a CPU quota: moving process %d: %w", pid, err)
	}
	return q, nil
}

// remove moves the process back to the parent group, if it still runs,
// and deletes the cgroup.
func (q *cpuQuota) remove() error {
	os.WriteFile(filepath.Join(q.parent, "cgroup.procs"), []byte(strconv.Itoa(q.pid)), 0)
	return os.Remove(q.dir)
}
