package uapi

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// On Windows the socket is an AF_UNIX socket too (Windows 10 and later
// have them), not the named pipe wg.exe uses: wireguard-windows keeps its
// pipes under \\.\pipe\ProtectedPrefix\Administrators\, where only an
// elevated process may create one, and wgbore runs without privileges.
// wgbore show and wgbore reload use the socket.

// DefaultDir is where the UAPI sockets go unless told otherwise: a
// directory of the user's local application data, which other users
// cannot open, since file modes mean nothing on Windows.
func DefaultDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "wgbore")
	}
	return filepath.Join(os.TempDir(), "wgbore")
}

// bindSocket binds the socket at path itself: Windows has no mode bits
// to set first (the directory's access list is what protects it) and no
// socket groups.
func bindSocket(_, _, path string, _ os.FileMode, gid int) (*net.UnixListener, error) {
	if gid >= 0 {
		return nil, errors.New("uapi: a socket group needs Unix; on Windows the directory's access list decides who may connect")
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("uapi: %w", err)
	}
	l.SetUnlinkOnClose(false)
	return l, nil
}

// wsaECONNREFUSED is what connecting to a socket file nobody listens on
// fails with.
const wsaECONNREFUSED = syscall.Errno(10061)

// refused reports a connection refused: a socket file nobody listens on.
func refused(err error) bool {
	return errors.Is(err, wsaECONNREFUSED) || errors.Is(err, syscall.ECONNREFUSED)
}
