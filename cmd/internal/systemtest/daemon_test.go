package systemtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The end-to-end tests run the wgbore binary as users do, built once per
// test process and set of build tags.

// wgborePackage is the command under test, built by its import path so
// that the build does not depend on the directory the test runs in.
const wgborePackage = "github.com/wgbore/wgbore/cmd/wgbore"

// The exit statuses the command's documentation promises, as a script
// sees them: 1 is a runtime failure, 2 a usage or configuration error.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

var builtBinaries struct {
	mu    sync.Mutex
	dir   string
	byTag map[string]*builtBinary
}

type builtBinary struct {
	once sync.Once
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBinaries.dir != "" {
		os.RemoveAll(builtBinaries.dir)
	}
	os.Exit(code)
}

// wgboreBinary builds cmd/wgbore into a temporary directory.
func wgboreBinary(t testing.TB) string {
	t.Helper()
	return wgboreBinaryTagged(t, "")
}

// wgboreBinaryTagged builds cmd/wgbore with the build tags given (go
// build -tags), once per test process.
func wgboreBinaryTagged(t testing.TB, tags string) string {
	t.Helper()
	builtBinaries.mu.Lock()
	if builtBinaries.byTag == nil {
		builtBinaries.byTag = make(map[string]*builtBinary)
	}
	b := builtBinaries.byTag[tags]
	if b == nil {
		b = new(builtBinary)
		builtBinaries.byTag[tags] = b
	}
	builtBinaries.mu.Unlock()
	b.once.Do(func() {
		builtBinaries.mu.Lock()
		if builtBinaries.dir == "" {
			builtBinaries.dir, b.err = os.MkdirTemp("", "wgbore-e2e-")
		}
		dir := builtBinaries.dir
		builtBinaries.mu.Unlock()
		if b.err != nil {
			return
		}
		name := "wgbore"
		if tags != "" {
			name += "-" + strings.ReplaceAll(tags, ",", "-")
		}
		b.path = filepath.Join(dir, name)
		out, err := exec.Command("go", "build", "-tags", tags, "-o", b.path, wgborePackage).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build -tags %q: %v\n%s", tags, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// runWgbore runs the built wgbore with args, as a user's shell would,
// and returns its exit status, stdout and stderr.
func runWgbore(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, wgboreBinary(t), args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("wgbore %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
}

// daemon is a running `wgbore up`.
type daemon struct {
	cmd  *exec.Cmd
	done chan struct{}
	code int

	mu    sync.Mutex
	lines []map[string]any // every JSON log line so far
	// listen maps a listener's description prefix ("socks5", "http",
	// "tcp", "udp") to the addresses in the start-up summary.
	listen  []string
	summary map[string]any
}

// startDaemon runs `wgbore up -c FILE` with JSON logs and waits for its
// start-up summary. It is stopped with SIGTERM when the test ends.
func startDaemon(t testing.TB, confPath string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(wgboreBinary(t), append([]string{"up", "-c", confPath, "-log-format", "json", "-log-level", "debug", "-uapi-dir", ShortTempDir(t)}, args...)...)
	cmd.Stdout = io.Discard
	return runDaemon(t, cmd)
}

// startServeDaemon runs `wgbore serve -c FILE` as startDaemon runs up.
func startServeDaemon(t testing.TB, confPath string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(wgboreBinary(t), append([]string{"serve", "-c", confPath, "-log-format", "json", "-log-level", "debug", "-uapi-dir", ShortTempDir(t)}, args...)...)
	cmd.Stdout = io.Discard
	return runDaemon(t, cmd)
}

// runDaemon starts cmd, a `wgbore up` logging JSON to stderr, and waits
// for its start-up summary.
func runDaemon(t testing.TB, cmd *exec.Cmd) *daemon {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				line = map[string]any{"msg": "(not JSON) " + sc.Text()}
			}
			d.mu.Lock()
			d.lines = append(d.lines, line)
			if line["msg"] == "wgbore is up" {
				d.summary = line
				if l, ok := line["listen"].([]any); ok {
					for _, x := range l {
						d.listen = append(d.listen, fmt.Sprint(x))
					}
				}
				readyOnce.Do(func() { close(ready) })
			}
			d.mu.Unlock()
		}
		cmd.Wait()
		d.code = cmd.ProcessState.ExitCode()
		readyOnce.Do(func() { close(ready) })
		close(d.done)
	}()
	t.Cleanup(func() { d.stop(t) })
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("no start-up summary after 60s; log:\n%s", d.log())
	}
	if d.summary == nil {
		<-d.done
		t.Fatalf("wgbore up exited %d before its summary; log:\n%s", d.code, d.log())
	}
	return d
}

// addr returns the listener address whose description starts with
// prefix, e.g. "socks5 " or "tcp ".
func (d *daemon) addr(t testing.TB, prefix string, nth int) string {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.listen {
		if strings.HasPrefix(l, prefix) {
			if nth == 0 {
				rest := strings.TrimPrefix(l, prefix)
				return strings.Fields(strings.Split(rest, "→")[0])[0]
			}
			nth--
		}
	}
	t.Fatalf("no listener %q in the summary %v", prefix, d.listen)
	return ""
}

func (d *daemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	for _, l := range d.lines {
		j, _ := json.Marshal(l)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

// logged reports whether a line with this message was logged.
func (d *daemon) logged(msg string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.lines {
		if l["msg"] == msg {
			return true
		}
	}
	return false
}

// stop sends SIGTERM and waits for the exit; a process that ignores it is
// killed and the test fails.
func (d *daemon) stop(t testing.TB) int {
	select {
	case <-d.done:
		return d.code
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		// SIGQUIT makes the Go runtime print every goroutine's stack
		// before exiting: where the shutdown hangs.
		d.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
		}
		t.Errorf("wgbore up ignored SIGTERM for 30s; log, then its goroutines:\n%s", d.log())
	}
	return d.code
}
