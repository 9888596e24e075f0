package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// procCPU is a process's user plus system time from /proc/PID/stat. The
// parties run as separate processes so that each one's share can be read
// here without the others' mixed in.
func procCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(raw))
}

// parseStatCPU reads utime and stime, in USER_HZ ticks of 1/100 s, from a
// /proc/PID/stat line. The command name is in parentheses and may hold
// spaces, so fields are counted from its closing parenthesis.
func parseStatCPU(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat line without a command name: %q", s)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("stat line too short: %q", s)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("stat utime/stime %q %q", fields[11], fields[12])
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// procRSS is a process's resident set in bytes, from VmRSS in
// /proc/PID/status.
func procRSS(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseVmRSS(string(raw))
}

// procRSSParts splits a process's RSS into anonymous memory (heap,
// stacks) and file-backed pages (mostly its own binary's code and
// read-only data, mapped as it runs).
func procRSSParts(pid int) (anon, file int64, err error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	if anon, err = statusBytes(string(raw), "RssAnon:"); err != nil {
		return 0, 0, err
	}
	file, err = statusBytes(string(raw), "RssFile:")
	return anon, file, err
}

func parseVmRSS(status string) (int64, error) { return statusBytes(status, "VmRSS:") }

// statusBytes reads a "Key:  123 kB" line of /proc/PID/status.
func statusBytes(status, key string) (int64, error) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, key)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected %s line %q", key, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		return kb * 1024, err
	}
	return 0, fmt.Errorf("no %s in status", key)
}

// cpuTotals reads the aggregate "cpu" line of /proc/stat: idle (idle plus
// iowait) and total ticks.
func cpuTotals() (idle, total uint64, err error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseCPULine(string(raw))
}

func parseCPULine(stat string) (idle, total uint64, err error) {
	for line := range strings.Lines(stat) {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != "cpu" {
			continue
		}
		for i, s := range f[1:] {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return 0, 0, err
			}
			// guest and guest_nice (9 and 10) are already in user.
			if i >= 8 {
				break
			}
			total += v
			if i == 3 || i == 4 {
				idle += v
			}
		}
		return idle, total, nil
	}
	return 0, 0, fmt.Errorf("no cpu line in /proc/stat")
}

// waitQuiet waits until the machine is at least 90% idle over half a
// second, so that one measurement does not pay for another program's
// work. It gives up after limit and returns the last idle share seen, for
// the report to say the figure was taken on a busy machine.
func waitQuiet(limit time.Duration) (idle float64, quiet bool) {
	deadline := time.Now().Add(limit)
	for {
		i0, t0, err := cpuTotals()
		if err != nil {
			return 0, false
		}
		time.Sleep(500 * time.Millisecond)
		i1, t1, err := cpuTotals()
		if err != nil || t1 == t0 {
			return 0, false
		}
		idle = float64(i1-i0) / float64(t1-t0)
		if idle >= 0.9 {
			return idle, true
		}
		if time.Now().After(deadline) {
			return idle, false
		}
	}
}

// median of xs; the figure each measurement reports over its repeats,
// since one disturbed run moves it least.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile is the nearest-rank p-th percentile (0 < p <= 100) of
// sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

// machine describes where the figures come from: ratios travel between
// machines, raw figures do not.
func machine() string {
	cpu := "unknown CPU"
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(raw)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown kernel"
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(raw))
	}
	return fmt.Sprintf("%s, %d cores, Linux %s, %s %s/%s", cpu, runtime.NumCPU(), kernel, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// revision names the code measured: the commit, and "+dirty" when the
// working tree differs from it, since the suite builds what is on disk.
func revision() string {
	out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown revision (no git)"
	}
	rev := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		rev += "+dirty"
	}
	return rev
}

// udpRcvbufErrors is the kernel's count of UDP datagrams dropped because
// a socket's receive buffer was full, machine-wide (Linux's
// /proc/net/snmp); ok is false where it cannot be read.
func udpRcvbufErrors() (n uint64, ok bool) {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0, false
	}
	return parseUDPRcvbufErrors(string(b))
}

// parseUDPRcvbufErrors reads RcvbufErrors from the two Udp: lines of
// /proc/net/snmp, names then values.
func parseUDPRcvbufErrors(snmp string) (uint64, bool) {
	var names []string
	for _, line := range strings.Split(snmp, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "RcvbufErrors" && i < len(f) {
				v, err := strconv.ParseUint(f[i], 10, 64)
				return v, err == nil
			}
		}
		return 0, false
	}
	return 0, false
}
