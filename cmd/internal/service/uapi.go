package service

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/wgbore/wgbore/protocol/uapi"
)

// StartUAPI serves WireGuard's userspace API on dir/name.sock, so that
// `wg show` and `wg set` work against the engine, and `wgbore reload`
// against the service. The socket is 0600, or 0660 owned by the group
// gid when gid is not negative, so that the group's members can run wg
// show without the tunnel's user's rights. A socket that cannot be
// created (an unprivileged user cannot write /var/run/wireguard) is not
// fatal: the tunnel works without it, and the log says why and what to
// do.
func (s *Service) StartUAPI(dir, name string, gid int) {
	var (
		l   net.Listener
		err error
	)
	if gid >= 0 {
		l, err = uapi.ListenGroup(dir, name, 0o660, gid)
	} else {
		l, err = uapi.Listen(dir, name, 0o600)
	}
	if err != nil {
		s.log.Warn("no UAPI socket: wg show and wg set will not see this tunnel; try -uapi-dir DIR, then wgbore show -uapi-dir DIR", "dir", dir, "name", name, "err", err)
		return
	}
	switch {
	case runtime.GOOS == "windows":
		// wg.exe talks to named pipes that only an elevated process may
		// create; an unprivileged tunnel has a socket instead.
		show := "wgbore show " + name
		if dir != uapi.DefaultDir() {
			show = fmt.Sprintf("wgbore show -uapi-dir %q %s", dir, name)
		}
		s.log.Info("wg.exe cannot see this tunnel (its pipes need Administrator); see it with "+show, "socket", l.Addr().String())
	case dir != uapi.SocketDir:
		// wg cannot be told where to look, so say what can.
		s.log.Info("UAPI socket is outside "+uapi.SocketDir+", where wg looks; see it with wgbore show -uapi-dir "+dir+" "+name, "socket", l.Addr().String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		uapi.ServeHandler(ctx, l, s.uapiHandler(), s.log)
	}()
	s.addServer(server{desc: "uapi " + l.Addr().String(), impl: closeOnly(func() error {
		cancel()
		<-done
		return nil
	})})
}
