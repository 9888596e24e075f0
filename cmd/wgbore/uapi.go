package main

import (
	"context"
	"path/filepath"
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
	base := filepath.Base(configPath)
	return strings.TrimSuffix(base, filepath.Ext(base))
}

// startUAPI serves WireGuard's userspace API on dir/name.sock, so `wg
// show` and `wg set` work against the engine. A socket that cannot be
// created (an unprivileged user cannot write /var/run/wireguard) is not
// fatal: the tunnel works without it, and the log says why and what to
// do.
func (s *service) startUAPI(dir, name string) {
	l, err := uapi.Listen(dir, name, 0o600)
	if err != nil {
		s.log.Warn("no UAPI socket: wg show and wg set will not see this tunnel; try -uapi-dir", "dir", dir, "name", name, "err", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		uapi.Serve(ctx, l, s.tun.Engine(), s.log)
	}()
	s.servers = append(s.servers, server{desc: "uapi " + l.Addr().String(), close: func() error {
		cancel()
		<-done
		return nil
	}})
}
