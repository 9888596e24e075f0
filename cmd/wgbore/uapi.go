package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/wgbore/wgbore/protocol/uapi"
)

// interfaceName is the UAPI socket's name: the flag's, or the config
// file's base name without its extension, as wg-quick names interfaces
// after their files (wg0.conf is wg0).
func interfaceName(flagValue, configPath string) string {
	if flagValue != "" {
		return flagValue
	}
	if configPath == configEnvName {
		return "wgbore"
	}
	base := filepath.Base(configPath)
	return strings.TrimSuffix(base, filepath.Ext(base))
}

// gidFlag is -uapi-group. It resolves the group while the flags are
// parsed, so that a mistyped group is a usage error before the tunnel
// starts, not a warning after.
type gidFlag struct {
	name string
	gid  int // -1 when not set
}

// groupFlag defines a -name flag taking a group name or numeric GID.
func groupFlag(fs *flag.FlagSet, name, usage string) *gidFlag {
	g := &gidFlag{gid: -1}
	fs.Var(g, name, usage)
	return g
}

func (g *gidFlag) String() string {
	if g == nil {
		return ""
	}
	return g.name
}

func (g *gidFlag) Set(s string) error {
	gid, err := lookupGID(s)
	if err != nil {
		return err
	}
	g.name, g.gid = s, gid
	return nil
}

// lookupGID accepts a number as it is, as chgrp does, since a group
// need not have a name in /etc/group.
func lookupGID(s string) (int, error) {
	if n, err := strconv.ParseUint(s, 10, 31); err == nil {
		return int(n), nil
	}
	grp, err := user.LookupGroup(s)
	var unknown user.UnknownGroupError
	if errors.As(err, &unknown) {
		return -1, fmt.Errorf("no group %q on this system", s)
	}
	if err != nil {
		return -1, fmt.Errorf("looking up group %q: %w", s, err)
	}
	n, err := strconv.Atoi(grp.Gid)
	if err != nil {
		return -1, fmt.Errorf("group %q has a non-numeric GID %q", s, grp.Gid)
	}
	return n, nil
}

// startUAPI serves WireGuard's userspace API on dir/name.sock, so `wg
// show` and `wg set` work against the engine. The socket is 0600, or
// 0660 owned by group when one is given, so that its members can run wg
// show without the tunnel's user's rights. A socket that cannot be
// created (an unprivileged user cannot write /var/run/wireguard) is not
// fatal: the tunnel works without it, and the log says why and what to
// do.
func (s *service) startUAPI(dir, name string, group *gidFlag) {
	var (
		l   net.Listener
		err error
	)
	if group != nil && group.gid >= 0 {
		l, err = uapi.ListenGroup(dir, name, 0o660, group.gid)
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
