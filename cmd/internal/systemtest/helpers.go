package systemtest

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// WriteFile writes content to dir/name, mode 0600 as a file with keys
// should be, and returns its path.
func WriteFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ShortTempDir is a private directory for a UAPI socket, so tests never
// touch /var/run/wireguard unless they mean to. Its path is short: a unix
// socket's path is limited to about 100 bytes, which t.TempDir's can pass.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wgb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// NeedTool finds a system tool the test compares against. CI installs
// them all (.ci/run), so there a missing tool fails the test instead of
// skipping it.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed, and CI must install it (.ci/run)", name)
		}
		t.Skipf("%s is not installed; this test compares against it (CI installs it)", name)
	}
	return path
}

// EchoThrough sends size random bytes through a connection to an echo
// server, half-closes, and checks the same bytes come back before EOF.
func EchoThrough(t testing.TB, dial func() (net.Conn, error), size int) {
	t.Helper()
	var c net.Conn
	var err error
	for range 5 {
		if c, err = dial(); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	want := make([]byte, size)
	rand.Read(want)
	go func() {
		c.Write(want)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("after %d of %d bytes: %v", len(got), size, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echoed %d bytes that differ from the %d sent", len(got), size)
	}
}

// SyncBuffer is an output sink the test reads while a command writes.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
