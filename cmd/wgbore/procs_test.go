package main

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/systemtest"
	"github.com/wgbore/wgbore/protocol"
)

func TestServeProcs(t *testing.T) {
	for _, c := range []struct {
		env           string
		current, cpus int
		quotaCores    float64 // 0: none
		want          int
		change        bool
	}{
		{"", 1, 1, 0, 2, true}, // a one-core machine: the case that gains most
		{"", 2, 2, 0, 3, true},
		{"", 2, 2, 1, 2, false}, // a quota below the cores: Go's default follows it
		{"", 2, 8, 1.5, 2, false},
		{"", 2, 2, 2, 3, true}, // a quota of the cores cannot throttle
		{"2", 2, 2, 0, 2, false},
		{"8", 8, 2, 0, 8, false}, // the user's choice, even above the cores
		{"", 3, 2, 0, 3, false},  // set by someone else: left alone
		{"", 0, 0, 0, 0, false},
	} {
		got, change := serveProcs(c.env, c.current, c.cpus, c.quotaCores)
		if got != c.want || change != c.change {
			t.Errorf("serveProcs(%q, %d, %d, %v) = %d, %v; want %d, %v", c.env, c.current, c.cpus, c.quotaCores, got, change, c.want, c.change)
		}
	}
}

// TestServeSetsProcessors runs serve and up in-process with a recording
// GOMAXPROCS: serve asks for a processor more than the cores; up leaves
// the setting alone, and so does serve under the GOMAXPROCS variable or
// a cgroup's CPU quota.
func TestServeSetsProcessors(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	peer, _ := protocol.GeneratePrivateKey()
	conf := fmt.Sprintf("[Interface]\nPrivateKey = %s\nAddress = 10.0.0.1/24\nListenPort = 0\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.0.0.2/32\n",
		key.Base64(), peer.PublicKey())
	path := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", conf)
	const cpus = 2
	quota := fstest.MapFS{
		"proc/self/cgroup":      {Data: []byte("0::/\n")},
		"sys/fs/cgroup/cpu.max": {Data: []byte("100000 100000\n")},
	}
	noQuota := fstest.MapFS{
		"proc/self/cgroup":      {Data: []byte("0::/\n")},
		"sys/fs/cgroup/cpu.max": {Data: []byte("max 100000\n")},
	}
	for _, c := range []struct {
		cmd, env string
		root     fstest.MapFS
		want     []int
	}{
		{"serve", "", nil, []int{0, cpus + 1}},
		{"serve", "", noQuota, []int{0, cpus + 1}},
		{"serve", "4", nil, []int{0}},
		{"serve", "", quota, []int{0}},
		{"up", "", nil, nil},
	} {
		var mu sync.Mutex
		var calls []int
		p := runInProcessWith(t, func(e *env) {
			e.lookupEnv = func(name string) (string, bool) { return c.env, name == "GOMAXPROCS" && c.env != "" }
			if c.root != nil {
				e.root = c.root
			}
			e.numCPU = func() int { return cpus }
			e.maxProcs = func(n int) int {
				mu.Lock()
				defer mu.Unlock()
				calls = append(calls, n)
				if c.env != "" {
					return 4
				}
				return cpus
			}
		}, c.cmd, "-c", path, "-handshake-wait", "0")
		waitForLog(t, &p.stderr, `msg="wgbore is up"`)
		p.signals <- os.Interrupt
		p.exit(t, exitOK, 30*time.Second, c.cmd+" did not return after the signal")
		mu.Lock()
		got := fmt.Sprint(calls)
		mu.Unlock()
		if got != fmt.Sprint(c.want) {
			t.Errorf("%s with GOMAXPROCS=%q, quota %v: GOMAXPROCS calls %s, want %v", c.cmd, c.env, c.root != nil, got, c.want)
		}
	}
}
