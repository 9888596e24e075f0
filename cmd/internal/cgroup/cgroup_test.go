package cgroup

import (
	"testing"
	"testing/fstest"
)

func TestCPUQuota(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files fstest.MapFS
		want  float64
		ok    bool
	}{
		{"no cgroup file system", fstest.MapFS{}, 0, false},
		{"v2 without a quota", fstest.MapFS{
			"proc/self/cgroup":      {Data: []byte("0::/\n")},
			"sys/fs/cgroup/cpu.max": {Data: []byte("max 100000\n")},
		}, 0, false},
		{"v2, one core of a namespace", fstest.MapFS{
			"proc/self/cgroup":      {Data: []byte("0::/\n")},
			"sys/fs/cgroup/cpu.max": {Data: []byte("100000 100000\n")},
		}, 1, true},
		{"v2 at its path, half a core", fstest.MapFS{
			"proc/self/cgroup": {Data: []byte("0::/system.slice/wgbore.service\n")},
			"sys/fs/cgroup/system.slice/wgbore.service/cpu.max": {Data: []byte("50000 100000\n")},
			"sys/fs/cgroup/cpu.max":                             {Data: []byte("max 100000\n")},
		}, 0.5, true},
		{"v1, two cores", fstest.MapFS{
			"proc/self/cgroup": {Data: []byte("12:cpu,cpuacct:/docker/abc\n7:memory:/docker/abc\n")},
			"sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us":  {Data: []byte("200000\n")},
			"sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us": {Data: []byte("100000\n")},
		}, 2, true},
		{"v1 without a quota", fstest.MapFS{
			"proc/self/cgroup":                   {Data: []byte("12:cpu,cpuacct:/\n")},
			"sys/fs/cgroup/cpu/cpu.cfs_quota_us": {Data: []byte("-1\n")},
		}, 0, false},
		{"v1 mounted as cpu,cpuacct, half a core", fstest.MapFS{
			"proc/self/cgroup": {Data: []byte("0::/\n4:cpu,cpuacct:/svc\n")},
			"sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_quota_us":  {Data: []byte("25000\n")},
			"sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_period_us": {Data: []byte("50000\n")},
		}, 0.5, true},
		{"v2 quota without a period", fstest.MapFS{
			"proc/self/cgroup":      {Data: []byte("0::/\n")},
			"sys/fs/cgroup/cpu.max": {Data: []byte("300000\n")},
		}, 3, true},
		{"NaN", fstest.MapFS{
			"proc/self/cgroup":      {Data: []byte("0::/\n")},
			"sys/fs/cgroup/cpu.max": {Data: []byte("NaN 100000\n")},
		}, 0, false},
		{"garbage", fstest.MapFS{
			"proc/self/cgroup":      {Data: []byte("nonsense")},
			"sys/fs/cgroup/cpu.max": {Data: []byte("lots 0\n")},
		}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := CPUQuota(tc.files)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("CPUQuota = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files fstest.MapFS
		want  int64
		ok    bool
	}{
		{"no cgroup file system", fstest.MapFS{}, 0, false},
		{"v2 in a namespace", fstest.MapFS{
			"proc/self/cgroup":         {Data: []byte("0::/\n")},
			"sys/fs/cgroup/memory.max": {Data: []byte("67108864\n")},
		}, 64 << 20, true},
		{"v2 at its path", fstest.MapFS{
			"proc/self/cgroup": {Data: []byte("0::/system.slice/wgbore.service\n")},
			"sys/fs/cgroup/system.slice/wgbore.service/memory.max": {Data: []byte("134217728\n")},
			"sys/fs/cgroup/memory.max":                             {Data: []byte("max\n")},
		}, 128 << 20, true},
		{"v2 unlimited", fstest.MapFS{
			"proc/self/cgroup":         {Data: []byte("0::/\n")},
			"sys/fs/cgroup/memory.max": {Data: []byte("max\n")},
		}, 0, false},
		{"v1", fstest.MapFS{
			"proc/self/cgroup": {Data: []byte("12:cpu,cpuacct:/docker/abc\n7:memory:/docker/abc\n")},
			"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": {Data: []byte("268435456\n")},
		}, 256 << 20, true},
		{"v1 unlimited", fstest.MapFS{
			"proc/self/cgroup":                           {Data: []byte("7:memory:/\n")},
			"sys/fs/cgroup/memory/memory.limit_in_bytes": {Data: []byte("9223372036854771712\n")},
		}, 0, false},
		{"garbage", fstest.MapFS{
			"proc/self/cgroup":         {Data: []byte("nonsense")},
			"sys/fs/cgroup/memory.max": {Data: []byte("lots\n")},
		}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := MemoryLimit(tc.files)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("MemoryLimit = %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
