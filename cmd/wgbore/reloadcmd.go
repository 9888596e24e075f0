package main

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/service"
	"github.com/wgbore/wgbore/protocol/uapi"
)

const reloadUsage = `Usage: wgbore reload [-uapi-dir DIR] [NAME]

Asks the running up or serve named NAME to re-read its configuration file
and apply the difference, as SIGHUP does, and prints what changed. Peers
are added, updated in place or removed; proxy and tunnel sections that
changed are restarted; everything else, with its connections, is left
alone. A file with errors is refused with file:line messages, and the
tunnel keeps running the configuration it had.

The request goes over the tunnel's UAPI socket, DIR/NAME.sock, so whoever
may run wg set on it may reload it. NAME may be left out when DIR holds
one tunnel.

Exit status: 0 when everything applied, 1 when some change failed (the
rest applied) or the tunnel cannot be reached, 2 when the file was refused.

Examples:
  wgbore reload wg0
  wgbore reload -uapi-dir /run/wgbore wg0
`

// reloadTimeout bounds the wait for the reply: a reload stops listeners
// and starts others, and resolves endpoints, all of it quick.
const reloadTimeout = 30 * time.Second

func cmdReload(ctx context.Context, e *env, args []string) int {
	fset := newFlagSet(e, "reload", reloadUsage)
	dir := fset.String("uapi-dir", uapi.DefaultDir(), "`directory` of the UAPI sockets, as given to up or serve")
	if code, done := parseFlagsAndArgs(e, fset, args, 1); done {
		return code
	}
	var name string
	switch rest := fset.Args(); len(rest) {
	case 0:
		names, err := socketNames(*dir)
		if err != nil {
			fmt.Fprintf(e.stderr, "wgbore reload: %v\n", err)
			return exitFailure
		}
		if len(names) != 1 {
			fmt.Fprintf(e.stderr, "wgbore reload: %d tunnels have a socket in %s (%s): name one\n", len(names), *dir, strings.Join(names, ", "))
			return exitUsage
		}
		name = names[0]
	default:
		name = rest[0]
	}

	ctx, cancel := context.WithTimeout(ctx, reloadTimeout)
	defer cancel()
	lines, errno, err := requestReload(ctx, *dir, name)
	if err != nil {
		fmt.Fprintf(e.stderr, "wgbore reload: %v\n", err)
		return exitFailure
	}
	for _, l := range lines {
		key, value, _ := strings.Cut(l, "=")
		switch key {
		case "change":
			fmt.Fprintln(e.stdout, value)
		case "kept":
			fmt.Fprintln(e.stdout, "not applied: "+value)
		case "error":
			fmt.Fprintln(e.stderr, value)
		}
	}
	switch errno {
	case 0:
		fmt.Fprintf(e.stdout, "%s: reloaded, %d change(s)\n", name, count(lines, "change="))
		return exitOK
	case service.ReloadRejected:
		fmt.Fprintf(e.stderr, "wgbore reload: %s kept its previous configuration\n", name)
		return exitUsage
	default:
		fmt.Fprintf(e.stderr, "wgbore reload: %s applied the rest (errno %d)\n", name, errno)
		return exitFailure
	}
}

func count(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// requestReload sends the reload operation to the tunnel's socket and
// returns the reply's lines and errno.
func requestReload(ctx context.Context, dir, name string) ([]string, int, error) {
	c, path, err := dialUAPI(ctx, dir, name)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	if _, err := c.Write([]byte(service.ReloadOperation + "=1\n\n")); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	r := bufio.NewReader(c)
	var lines []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, 0, fmt.Errorf("%s: reading the reply: %w", path, err)
		}
		line = strings.TrimSuffix(line, "\n")
		if v, ok := strings.CutPrefix(line, "errno="); ok {
			errno, err := strconv.Atoi(v)
			if err != nil {
				return nil, 0, fmt.Errorf("%s: bad errno %q", path, v)
			}
			if errno == 22 && len(lines) == 0 {
				return nil, 0, fmt.Errorf("%s does not take reload requests: is it wgbore?", path)
			}
			return lines, errno, nil
		}
		lines = append(lines, line)
	}
}
