package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/wgbore/wgbore/cmd/internal/service"
	"github.com/wgbore/wgbore/config"
)

const checkUsage = `Usage: wgbore check -c FILE

Reads a wg-quick or wireproxy configuration file and reports every problem,
one per line as FILE:LINE: KEY: message, then warnings. It opens no socket
and contacts no peer. The exit status is 0 when the file would run, 2 when
it would not.

Without -c, the configuration's text comes from the WGBORE_CONFIG
environment variable, as for up and serve, and messages name it
$WGBORE_CONFIG:LINE.

Examples:
  wgbore check -c /etc/wireguard/wg0.conf
  wgbore check -c wireproxy.conf && wgbore up -c wireproxy.conf
  WGBORE_CONFIG="$(cat wg0.conf)" wgbore check
`

func cmdCheck(_ context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "check", checkUsage)
	path := fs.String("c", "", "configuration `file` to check")
	if code, done := parseFlags(e, fs, args); done {
		return code
	}
	if !configGiven(e, "check", path) {
		return exitUsage
	}
	cfg, ok := loadConfig(e, *path)
	if !ok {
		return exitUsage
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(e.stderr, "warning: %s\n", w)
	}
	p, err := service.Check(cfg, *path)
	if err != nil {
		printErrors(e, err)
		return exitUsage
	}
	for _, w := range p.Warnings() {
		fmt.Fprintf(e.stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(e.stdout, "%s: OK: %d peer(s), %d listener(s)\n", *path, len(cfg.Peers), countListeners(cfg))
	return exitOK
}

// printErrors prints one problem per line, each prefixed with its
// position, so editors and CI logs can link to the line.
func printErrors(e *env, err error) {
	var list config.Errors
	if errors.As(err, &list) {
		for _, ce := range list {
			fmt.Fprintln(e.stderr, ce)
		}
		return
	}
	if multi, ok := err.(interface{ Unwrap() []error }); ok {
		for _, one := range multi.Unwrap() {
			fmt.Fprintln(e.stderr, one)
		}
		return
	}
	fmt.Fprintln(e.stderr, err)
}

func countListeners(c *config.Config) int {
	return len(c.Socks5) + len(c.HTTP) + len(c.TCPClientTunnels) + len(c.TCPServerTunnels) +
		len(c.UDPProxyTunnels) + len(c.UDPServerTunnels) + len(c.STDIOTunnels)
}
