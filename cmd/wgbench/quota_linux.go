package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// cpuQuota is a cgroup that holds a process to a share of the CPUs.
type cpuQuota struct{ dir string }

// quotaPeriod is the cgroup's accounting period, the kernel's default:
// the process runs for its quota in each, and waits out the rest.
const quotaPeriod = 100000 // µs

// cgroupFile is a value to write to one of a cgroup's files.
type cgroupFile struct{ file, value string }

// newCPUQuota makes a cgroup whose CPU quota is cores CPUs: cgroup v2's
// cpu.max where the unified hierarchy is mounted at /sys/fs/cgroup, else
// cgroup v1's cpu controller. It needs root.
func newCPUQuota(cores float64) (*cpuQuota, error) {
	quota := int(math.Round(cores * quotaPeriod))
	if quota < 1000 {
		return nil, fmt.Errorf("a CPU quota of %g cores is too small", cores)
	}
	name := fmt.Sprintf("wgbench-%d", os.Getpid())
	var q *cpuQuota
	var limits []cgroupFile
	if ctl, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		if !slices.Contains(strings.Fields(string(ctl)), "cpu") {
			return nil, errors.New("cgroup v2 has no cpu controller here")
		}
		// A child's cpu.max exists once the parent hands it the controller.
		if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu"), 0); err != nil {
			return nil, fmt.Errorf("cgroup v2: enabling the cpu controller: %w", err)
		}
		q = &cpuQuota{dir: "/sys/fs/cgroup/" + name}
		limits = []cgroupFile{{"cpu.max", fmt.Sprintf("%d %d", quota, quotaPeriod)}}
	} else if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err == nil {
		q = &cpuQuota{dir: "/sys/fs/cgroup/cpu/" + name}
		limits = []cgroupFile{{"cpu.cfs_period_us", strconv.Itoa(quotaPeriod)}, {"cpu.cfs_quota_us", strconv.Itoa(quota)}}
	} else {
		return nil, errors.New("no cgroup cpu controller found under /sys/fs/cgroup")
	}
	if err := os.Mkdir(q.dir, 0o755); err != nil {
		return nil, fmt.Errorf("a CPU quota: %w", err)
	}
	for _, l := range limits {
		if err := os.WriteFile(filepath.Join(q.dir, l.file), []byte(l.value), 0); err != nil {
			os.Remove(q.dir)
			return nil, fmt.Errorf("a CPU quota: %w", err)
		}
	}
	return q, nil
}

// procs is the file that a process writes its pid to, to join the group.
func (q *cpuQuota) procs() string { return filepath.Join(q.dir, "cgroup.procs") }

// remove deletes the cgroup, once the processes in it have exited.
func (q *cpuQuota) remove() error {
	if err := os.Remove(q.dir); err != nil {
		return fmt.Errorf("removing the CPU quota's cgroup: %w", err)
	}
	return nil
}
