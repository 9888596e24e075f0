package systemtest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/metricstest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// In a real memory cgroup with a limit, as a container runtime makes one,
// `wgbore up` with no MemoryLimit takes the cgroup's limit as its budget:
// the start-up log says where the budget came from, and /metrics reports
// it. The test makes the cgroup (v2 memory.max, or v1
// memory.limit_in_bytes, whichever this host mounts), starts wgbore in
// it, and removes it afterwards.
func TestMemoryBudgetFromCgroup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("making a memory cgroup takes root")
	}
	const limit = 256 << 20
	dir, limitFile := makeMemoryCgroup(t)
	if err := os.WriteFile(filepath.Join(dir, limitFile), []byte(fmt.Sprint(limit)), 0o644); err != nil {
		t.Skipf("cannot set the cgroup's memory limit: %v", err)
	}

	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	conf := WriteFile(t, t.TempDir(), "wg0.conf", site.WGQuick(ours, "[Socks5]\nBindAddress = 127.0.0.1:0\n"))
	// The shell joins the cgroup, then becomes wgbore, which therefore
	// starts inside it.
	join := `echo $$ > "$CGROUP/cgroup.procs" && exec "$0" "$@"`
	cmd := exec.Command("sh", "-c", join, wgboreBinary(t), "up", "-c", conf, "-log-format", "json", "-log-level", "debug",
		"-uapi-dir", ShortTempDir(t), "-metrics", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "CGROUP="+dir)
	cmd.Stdout = io.Discard
	d := runDaemon(t, cmd)

	var line map[string]any
	d.mu.Lock()
	for _, l := range d.lines {
		if l["msg"] == "memory budget" {
			line = l
		}
	}
	d.mu.Unlock()
	if line == nil {
		t.Fatalf("no memory budget line in the log of a wgbore in a cgroup limited to 256 MiB:\n%s", d.log())
	}
	if line["limit"] != "256MiB" || line["from"] != "the container's limit" {
		t.Errorf("memory budget line %v, want limit 256MiB from the container's limit", line)
	}
	metrics := metricstest.Remote("http://" + strings.TrimSuffix(d.addr(t, "metrics http://", 0), "/metrics"))
	fams, _ := metricstest.Parse(t, metrics)
	if got := metricstest.Value(t, fams, "wgbore_memory_budget_bytes"); got != limit {
		t.Errorf("wgbore_memory_budget_bytes = %v, want %d", got, limit)
	}
}

// makeMemoryCgroup makes a child memory cgroup for the test and returns
// its directory and the name of its limit file; the cgroup is removed at
// cleanup, once its processes have gone. It skips the test where the
// host has no writable memory controller.
func makeMemoryCgroup(t *testing.T) (dir, limitFile string) {
	t.Helper()
	name := fmt.Sprintf("wgbore-test-%d", os.Getpid())
	switch {
	case fileExists("/sys/fs/cgroup/cgroup.controllers"): // v2
		if c, _ := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); !strings.Contains(string(c), "memory") {
			t.Skip("the cgroup v2 root does not delegate the memory controller")
		}
		dir, limitFile = filepath.Join("/sys/fs/cgroup", name), "memory.max"
	case fileExists("/sys/fs/cgroup/memory/memory.limit_in_bytes"): // v1
		dir, limitFile = filepath.Join("/sys/fs/cgroup/memory", name), "memory.limit_in_bytes"
	default:
		t.Skip("no memory cgroup controller is mounted")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a memory cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The daemon's cleanup, registered later, has run: the cgroup
		// empties as the kernel reaps it, so retry briefly.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := os.Remove(dir)
			if err == nil || time.Now().After(deadline) {
				if err != nil {
					t.Errorf("removing the test's cgroup %s: %v", dir, err)
				}
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	return dir, limitFile
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
