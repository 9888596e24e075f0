package systemtest

import (
	"bufio"
	"context"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

// nonrootUID is distroless's nonroot user and group, the image's USER.
const nonrootUID = "65532"

// TestStaticBuildRunsUnprivileged checks the container image without a
// Docker engine: it runs the build script the Dockerfile runs, checks
// that the result needs no dynamic loader or shared library (distroless
// static has neither), and runs it as the image does, as UID 65532 with
// no capabilities and no way to gain any.
func TestStaticBuildRunsUnprivileged(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds wgbore from scratch, 20-40 s")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the image is Linux; the build script is sh and the checks read ELF and /proc")
	}
	// A fresh directory that UID 65532 can traverse: t.TempDir's parents
	// are private to the user running the test.
	dir, err := os.MkdirTemp("", "wgbore-static")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "wgbore")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "sh", filepath.Join("..", "..", "..", ".ci", "build-static"), bin)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("sh .ci/build-static: %v\n%s", err, out)
	}
	assertStatic(t, bin)

	if os.Geteuid() != 0 {
		t.Skip("running the binary as UID 65532 needs root to switch to it (CI runs as root); the static build was checked")
	}
	setpriv := NeedTool(t, "setpriv")
	// The binary belongs to the user, as the image's COPY --chown makes
	// it: the kernel gives back its pages only to a process that owns it.
	uid, _ := strconv.Atoi(nonrootUID)
	if err := os.Chown(bin, uid, uid); err != nil {
		t.Fatal(err)
	}
	unprivileged := func(ctx context.Context, args ...string) *exec.Cmd {
		all := append([]string{"--reuid=" + nonrootUID, "--regid=" + nonrootUID, "--clear-groups",
			"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", bin}, args...)
		cmd := exec.CommandContext(ctx, setpriv, all...)
		cmd.Dir = dir
		return cmd
	}

	// The README's first command: a server, a client and a request
	// through each proxy, all in one unprivileged process.
	if out, err := unprivileged(ctx, "demo", "-check").CombinedOutput(); err != nil {
		t.Fatalf("demo -check as UID %s: %v\n%s", nonrootUID, err, out)
	}

	// up as in the image: a config readable by all, the key from the
	// environment, and the UAPI socket in a world-writable directory,
	// as the image's -uapi-dir /tmp.
	uapiDir := filepath.Join(dir, "uapi")
	if err := os.Mkdir(uapiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(uapiDir, 0o1777); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "wg0.conf")
	if err := os.WriteFile(conf, []byte("[Interface]\nPrivateKey = $WG_KEY\nAddress = 10.0.0.1/32\n\n[Socks5]\nBindAddress = 127.0.0.1:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	key, _ := protocol.GeneratePrivateKey()
	up := unprivileged(ctx, "up", "-c", conf, "-uapi-dir", uapiDir, "-handshake-wait", "0s")
	up.Env = append(os.Environ(), "WG_KEY="+key.Base64())
	stderr, err := up.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	defer up.Process.Kill()
	logs := make(chan string, 1)
	upLogged := make(chan struct{})
	go func(isUp chan struct{}) {
		var all strings.Builder
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			if isUp != nil && strings.Contains(sc.Text(), `msg="wgbore is up"`) {
				close(isUp)
				isUp = nil
			}
		}
		io.Copy(io.Discard, stderr)
		logs <- all.String()
	}(upLogged)
	select {
	case <-upLogged:
	case l := <-logs:
		t.Fatalf("up as UID %s ended before it was up:\n%s", nonrootUID, l)
	case <-time.After(30 * time.Second):
		t.Fatal("up did not log that it was up within 30 s")
	}

	// setpriv execs wgbore, so the child's PID is wgbore's, and once it
	// logs, the credentials are the ones it runs with.
	status, err := os.ReadFile("/proc/" + strconv.Itoa(up.Process.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	fields := procStatus(string(status))
	for key, want := range map[string]string{
		"Uid":        strings.Repeat(nonrootUID+"\t", 3) + nonrootUID,
		"Gid":        strings.Repeat(nonrootUID+"\t", 3) + nonrootUID,
		"Groups":     "",
		"CapInh":     "0000000000000000",
		"CapPrm":     "0000000000000000",
		"CapEff":     "0000000000000000",
		"CapBnd":     "0000000000000000",
		"CapAmb":     "0000000000000000",
		"NoNewPrivs": "1",
	} {
		if got, ok := fields[key]; !ok || got != want {
			t.Errorf("/proc/%d/status %s: %q, want %q", up.Process.Pid, key, got, want)
		}
	}
	// Once start-up settles, the binary's pages that it touched go back to
	// the kernel: resident file pages fall to well under what they were
	// when up logged (the next timer brings some back within seconds).
	upFile := statusKiB(t, up.Process.Pid, "RssFile")
	released := false
	for deadline := time.Now().Add(30 * time.Second); !released && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		released = statusKiB(t, up.Process.Pid, "RssFile") < upFile/2
	}
	if !released {
		t.Errorf("the binary's resident pages did not fall below half of %d KiB within 30 s of up as UID %s: they were not given back", upFile, nonrootUID)
	}

	// The UAPI socket belongs to the unprivileged user, so wg show run as
	// that user (or root) can reach it.
	if fi, err := os.Stat(filepath.Join(uapiDir, "wg0.sock")); err != nil {
		t.Errorf("UAPI socket: %v", err)
	} else if uid, _ := fileOwner(fi); strconv.Itoa(uid) != nonrootUID {
		t.Errorf("UAPI socket owned by UID %d, want %s", uid, nonrootUID)
	}

	if err := up.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var l string
	select {
	case l = <-logs:
	case <-time.After(30 * time.Second):
		t.Fatal("up did not stop within 30 s of SIGTERM")
	}
	if err := up.Wait(); err != nil {
		t.Fatalf("up as UID %s: %v\n%s", nonrootUID, err, l)
	}
	if strings.Contains(l, key.Base64()) {
		t.Fatal("the private key reached the log")
	}
}

// assertStatic fails unless the ELF file at path would run with no
// dynamic loader and no shared library, as on distroless/static.
func assertStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a PT_INTERP program header: it needs a dynamic loader", path)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatalf("%s: reading DT_NEEDED: %v", path, err)
	}
	if len(libs) > 0 {
		t.Errorf("%s needs shared libraries (DT_NEEDED): %v", path, libs)
	}
}

// procStatus splits /proc/PID/status into its fields.
func procStatus(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// TestDockerfileUsesBuildScript keeps TestStaticBuildRunsUnprivileged
// meaningful: it checks the image only as long as the Dockerfile builds
// with the same script, with the Go that script pins, and runs as the
// same user, who owns the binary.
func TestDockerfileUsesBuildScript(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile(filepath.Join("..", "..", "..", ".ci", "build-static"))
	if err != nil {
		t.Fatal(err)
	}
	pinned := regexp.MustCompile(`GOTOOLCHAIN:-go([0-9.]+)\}`).FindSubmatch(script)
	if pinned == nil {
		t.Fatal(".ci/build-static pins no Go toolchain (GOTOOLCHAIN:-goX.Y.Z)")
	}
	var run, user, image, owned bool
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "FROM ") && strings.Contains(line, " golang:") {
			image = strings.Contains(line, " golang:"+string(pinned[1])+" ")
		}
		if strings.HasSuffix(line, "sh .ci/build-static /out/wgbore") && !strings.HasPrefix(line, "#") {
			run = true
		}
		if line == "USER "+nonrootUID+":"+nonrootUID {
			user = true
		}
		if strings.HasPrefix(line, "COPY ") && strings.HasSuffix(line, " /wgbore") {
			owned = strings.Contains(line, " --chown="+nonrootUID+":"+nonrootUID+" ")
		}
	}
	if !run {
		t.Error("the Dockerfile does not build with sh .ci/build-static, which CI checks in its place")
	}
	if !user {
		t.Errorf("the Dockerfile does not run as USER %s:%s, the user CI runs the binary as", nonrootUID, nonrootUID)
	}
	if !image {
		t.Errorf("the Dockerfile's build stage is not golang:%s, the Go .ci/build-static pins", pinned[1])
	}
	if !owned {
		t.Errorf("the Dockerfile does not give /wgbore to UID %s, as CI does before it runs the binary as that user", nonrootUID)
	}
}
