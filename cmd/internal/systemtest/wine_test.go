package systemtest

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// wineTools finds Wine and the MinGW compiler, or skips the test saying
// what to install.
func wineTools(t *testing.T) (wine, wineserver, cc string) {
	t.Helper()
	find := func(names ...string) string {
		for _, n := range names {
			if p, err := exec.LookPath(n); err == nil {
				return p
			}
		}
		return ""
	}
	wine = find("wine64", "/usr/lib/wine/wine64")
	wineserver = find("wineserver", "/usr/lib/wine/wineserver64")
	cc = find("x86_64-w64-mingw32-gcc")
	if wine == "" || wineserver == "" || cc == "" {
		t.Skip("needs Wine and MinGW (apt-get install wine64 gcc-mingw-w64-x86-64-win32, as .ci/run does)")
	}
	return wine, wineserver, cc
}

// winePrefix makes a fresh Wine prefix that can run a Go 1.26+ Windows
// program. Go's runtime takes its random bytes from ProcessPrng in
// bcryptprimitives.dll, which Wine 8 lacks; a stub built from
// testdata/wine, which calls RtlGenRandom instead, goes into the
// prefix's system32. The prefix's wineserver is stopped when the test
// ends.
func winePrefix(t *testing.T, wine, wineserver, cc string) []string {
	t.Helper()
	prefix := t.TempDir()
	env := append(os.Environ(), "WINEPREFIX="+prefix, "WINEDEBUG=-all")
	t.Cleanup(func() {
		kill := exec.Command(wineserver, "-k")
		kill.Env = env
		kill.Run()
	})
	boot := exec.Command(wine, "wineboot", "--init")
	boot.Env = env
	if out, err := boot.CombinedOutput(); err != nil {
		t.Fatalf("wineboot: %v\n%s", err, out)
	}
	dll := filepath.Join(prefix, "drive_c", "windows", "system32", "bcryptprimitives.dll")
	src, _ := filepath.Abs(filepath.Join("testdata", "wine"))
	build := exec.Command(cc, "-shared", "-O2", "-o", dll, filepath.Join(src, "prng.c"), filepath.Join(src, "prng.def"), "-ladvapi32")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the ProcessPrng stub: %v\n%s", err, out)
	}
	return env
}

// TestWindowsUnderWine runs the Windows build of wgbore, wgbore.exe up,
// under Wine against a wireguard-go peer on 127.0.0.1, and moves 64 MiB
// each way through it with Linux's curl: down through the SOCKS5 proxy,
// up through the HTTP proxy, both checked byte for byte. Wine is not
// Windows, but the program, its Winsock UDP path and Go's Windows
// runtime and net package are the ones Windows users run. Wine 8 has no
// AF_UNIX sockets, so the UAPI socket goes untested here (up logs that it
// has none and carries on).
func TestWindowsUnderWine(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds for Windows, starts Wine and moves 128 MiB")
	}
	wine, wineserver, cc := wineTools(t)
	NeedTool(t, "curl")
	env := winePrefix(t, wine, wineserver, cc)

	exe := filepath.Join(t.TempDir(), "wgbore.exe")
	build := exec.Command("go", "build", "-o", exe, wgborePackage)
	build.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build for windows: %v\n%s", err, out)
	}

	conf := proxiedSite(t)
	// Wine's drive Z: is the Linux root.
	cmd := exec.Command(wine, exe, "up", "-c", "Z:"+conf, "-log-format", "json", "-log-level", "debug", "-uapi-dir", "Z:"+ShortTempDir(t))
	cmd.Env = env
	cmd.Stdout = io.Discard
	d := runDaemon(t, cmd)
	if !strings.Contains(d.log(), `"path":"winsock"`) {
		t.Fatalf("the Windows build did not open its sockets with Winsock:\n%s", d.log())
	}

	curlBothWays(t, d, 64<<20)
}
