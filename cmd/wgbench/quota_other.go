//go:build !linux

package main

import "errors"

// cpuQuota is a cgroup that holds a process to a share of the CPUs:
// Linux only.
type cpuQuota struct{}

func newCPUQuota(cores float64) (*cpuQuota, error) {
	return nil, errors.New("a CPU quota needs Linux's cgroups")
}

func (q *cpuQuota) procs() string { return "" }

func (q *cpuQuota) remove() error { return nil }
