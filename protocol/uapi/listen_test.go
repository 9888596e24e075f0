//go:build unix

// These tests are of groups, file modes and user credentials, which the
// socket only has on Unix.

package uapi

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// groupForTest is a group this process may give a socket to, and not
// its own primary group, so that the chown is seen to happen.
func groupForTest(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("giving a socket to another group needs root (or membership of a second group)")
	}
	for _, name := range []string{"daemon", "nogroup", "bin"} {
		g, err := user.LookupGroup(name)
		if err != nil {
			continue
		}
		gid, err := strconv.Atoi(g.Gid)
		if err == nil && gid != os.Getegid() {
			return gid
		}
	}
	t.Skip("no daemon, nogroup or bin group on this system")
	return -1
}

func TestListenGroup(t *testing.T) {
	gid := groupForTest(t)
	dir := t.TempDir()
	l, err := ListenGroup(dir, "wgt", 0, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(filepath.Join(dir, "wgt.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("mode %v, want 0660", fi.Mode().Perm())
	}
	if got := int(fi.Sys().(*syscall.Stat_t).Gid); got != gid {
		t.Errorf("group %d, want %d", got, gid)
	}
	if _, err := ListenGroup(dir, "wgu", 0, -1); err == nil {
		t.Error("a negative GID was accepted")
	}
}

// TestListenGroupAccess: a process of the socket's group connects and
// one of another group is refused, as the mode promises. The processes
// are this test binary run again as nobody, so the test needs root.
func TestListenGroupAccess(t *testing.T) {
	gid := groupForTest(t)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	nogroup := 65534
	if gid == nogroup {
		t.Skip("the socket's group would be nobody's own")
	}

	// Both the socket's directory and the binary must be reachable by
	// nobody, which go test's and t.TempDir's 0700 directories are not.
	pub, err := os.MkdirTemp("", "wgbg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pub) })
	if err := os.Chmod(pub, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(pub, "uapi.test")
	copyFile(t, os.Args[0], bin)

	l, err := ListenGroup(pub, "wgt", 0, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	dial := func(gid int) error {
		cmd := exec.Command(bin, "-test.run=^TestHelperDial$")
		cmd.Env = append(os.Environ(), "UAPI_TEST_DIAL="+l.Addr().String())
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return errors.New(string(out))
		}
		return nil
	}
	if err := dial(gid); err != nil {
		t.Errorf("a member of the socket's group cannot connect: %s", err)
	}
	// Refused for the mode's sake, not for some other failure of the child.
	if err := dial(nogroup); err == nil {
		t.Error("a process of neither the socket's user nor its group connected")
	} else if !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("the child failed otherwise than by a refused connection: %s", err)
	}
}

// TestHelperDial is TestListenGroupAccess's child process: it connects to
// the socket and fails if it cannot.
func TestHelperDial(t *testing.T) {
	path := os.Getenv("UAPI_TEST_DIAL")
	if path == "" {
		t.Skip("run by TestListenGroupAccess")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
