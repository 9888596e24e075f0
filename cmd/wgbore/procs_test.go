package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/systemtest"
	"github.com/wgbore/wgbore/protocol"
)

func TestServeProcs(t *testing.T) {
	for _, c := range []struct {
		env           string
		current, cpus int
		want          int
		change        bool
	}{
		{"", 1, 1, 2, true},  // a one-core machine: the case that gains most
		{"", 2, 2, 3, true},  // no quota: the runtime's default is the cores
		{"", 1, 2, 1, false}, // a quota of one core of two: the runtime sized it
		{"2", 2, 2, 2, false},
		{"8", 8, 2, 8, false}, // the user's choice, even above the cores
		{"", 3, 2, 3, false},  // set by someone else: left alone
		{"", 0, 0, 0, false},
	} {
		got, change := serveProcs(c.env, c.current, c.cpus)
		if got != c.want || change != c.change {
			t.Errorf("serveProcs(%q, %d, %d) = %d, %v; want %d, %v", c.env, c.current, c.cpus, got, change, c.want, c.change)
		}
	}
}

// TestServeSetsProcessors runs serve and up in-process with a recording
// GOMAXPROCS: serve asks for a processor more than the cores, up leaves
// the setting alone, and so does serve when the variable is set.
func TestServeSetsProcessors(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	peer, _ := protocol.GeneratePrivateKey()
	conf := fmt.Sprintf("[Interface]\nPrivateKey = %s\nAddress = 10.0.0.1/24\nListenPort = 0\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.0.0.2/32\n",
		key.Base64(), peer.PublicKey())
	path := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", conf)
	for _, c := range []struct {
		cmd, env string
		want     []int
	}{
		{"serve", "", []int{0, runtime.NumCPU() + 1}},
		{"serve", "4", []int{0}},
		{"up", "", nil},
	} {
		var mu sync.Mutex
		var calls []int
		p := &inProcess{signals: make(chan os.Signal, 2), hangups: make(chan os.Signal, 1), done: make(chan int, 1)}
		e := &env{stdin: strings.NewReader(""), stdout: &strings.Builder{}, stderr: &p.stderr, signals: p.signals, hangups: p.hangups,
			lookupEnv: func(name string) (string, bool) { return c.env, name == "GOMAXPROCS" && c.env != "" },
			maxProcs: func(n int) int {
				mu.Lock()
				defer mu.Unlock()
				calls = append(calls, n)
				if c.env != "" {
					return 4
				}
				return runtime.NumCPU()
			}}
		go func() {
			p.done <- run(context.Background(), e, []string{c.cmd, "-c", path, "-handshake-wait", "0", "-uapi-dir", systemtest.ShortTempDir(t)})
		}()
		waitForLog(t, &p.stderr, `msg="wgbore is up"`)
		p.signals <- os.Interrupt
		p.exit(t, exitOK, 30*time.Second, c.cmd+" did not return after the signal")
		mu.Lock()
		got := fmt.Sprint(calls)
		mu.Unlock()
		if got != fmt.Sprint(c.want) {
			t.Errorf("%s with GOMAXPROCS=%q: GOMAXPROCS calls %s, want %v", c.cmd, c.env, got, c.want)
		}
	}
}
