package uapi

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// SocketDir is where `wg` looks for userspace interfaces' sockets on Unix;
// it has no option or environment variable to look anywhere else.
const SocketDir = "/var/run/wireguard"

// Listen opens the UAPI socket dir/name.sock with the given mode (0 means
// 0600: the socket hands out the private key). dir is created, mode 0755
// as wireguard-tools makes it, if missing.
//
// A socket already at that path is replaced only when it is stale: if
// connecting to it is refused, its owner is gone and it is removed; if
// it answers, another instance serves that name and Listen fails. Any
// other file there is left alone and Listen fails.
//
// The socket is bound in a fresh 0700 directory, given its mode, and
// only then renamed into place, so there is no moment when it is
// reachable with the umask's looser mode. Closing the listener removes
// the socket.
func Listen(dir, name string, mode os.FileMode) (net.Listener, error) {
	return listen(dir, name, mode, -1)
}

// ListenGroup is Listen for a socket that the members of group gid may
// use too, so that an operator's group can run wg show without root.
// The group is set in the private directory, with the mode, so the
// socket never becomes reachable by the group's members before it is
// theirs. mode 0 means 0660. Only root, or a member of the group, may
// give the socket to it.
func ListenGroup(dir, name string, mode os.FileMode, gid int) (net.Listener, error) {
	if gid < 0 {
		return nil, fmt.Errorf("uapi: invalid group ID %d", gid)
	}
	if mode == 0 {
		mode = 0o660
	}
	return listen(dir, name, mode, gid)
}

// listen is Listen and ListenGroup; gid -1 leaves the socket's group as
// the process's.
func listen(dir, name string, mode os.FileMode, gid int) (net.Listener, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
		return nil, fmt.Errorf("uapi: invalid interface name %q", name)
	}
	if mode == 0 {
		mode = 0o600
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("uapi: %w", err)
	}
	path := filepath.Join(dir, name+".sock")
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := bindSocket(dir, name, path, mode, gid)
	if err != nil {
		return nil, err
	}
	return &socketListener{UnixListener: l, path: path}, nil
}

// removeStale clears path for a new socket, or says why it cannot.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("uapi: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("uapi: %s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("uapi: %s answers: another instance serves this interface", path)
	}
	if !refused(err) {
		return fmt.Errorf("uapi: checking %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("uapi: removing stale %s: %w", path, err)
	}
	return nil
}

// socketListener removes the socket's final path on Close.
type socketListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

// Addr is the socket's final path, not the temporary one it was bound at.
func (l *socketListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *socketListener) Close() error {
	var err error
	l.once.Do(func() {
		// Remove before closing: once closed, the name could be taken
		// by a new instance whose socket we must not delete.
		os.Remove(l.path)
		err = l.UnixListener.Close()
	})
	return err
}
