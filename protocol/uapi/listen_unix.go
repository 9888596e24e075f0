//go:build !windows

package uapi

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// DefaultDir is where the UAPI sockets go unless told otherwise: SocketDir,
// where wg looks.
func DefaultDir() string { return SocketDir }

// bindSocket binds the socket in a fresh 0700 directory, gives it its
// group and mode, and only then renames it to path, so there is no moment
// when it is reachable with the umask's looser mode.
func bindSocket(dir, name, path string, mode os.FileMode, gid int) (*net.UnixListener, error) {
	tmp, err := os.MkdirTemp(dir, "."+name+"-")
	if err != nil {
		return nil, fmt.Errorf("uapi: %w", err)
	}
	defer os.RemoveAll(tmp)
	tmpPath := filepath.Join(tmp, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmpPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("uapi: %w", err)
	}
	// The path changes under the listener, so removing it on Close is
	// ours to do, not the net package's.
	l.SetUnlinkOnClose(false)
	if gid >= 0 {
		if err := os.Chown(tmpPath, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("uapi: giving the socket to group %d: %w", gid, err)
		}
	}
	if err := os.Chmod(tmpPath, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("uapi: %w", err)
	}
	if err := os.Rename(tmpPath, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("uapi: %w", err)
	}
	return l, nil
}

// refused reports a connection refused: a socket file nobody listens on.
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
