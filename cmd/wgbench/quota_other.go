//go:build !linux

package main

import "errors"

// cpuQuota is a cgroup that holds one process to a share of the CPUs:
// Linux only.
type cpuQuota struct{}

func capCPU(pid int, cores float64) (*cpuQuota, error) {
	return nil, errors.New("a CPU quota needs Linux's cgroups")
}

func (q *cpuQuota) remove() error { return nil }
