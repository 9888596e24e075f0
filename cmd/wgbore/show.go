package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/uapi"
)

const showUsage = `Usage: wgbore show [-uapi-dir DIR] [NAME | all | interfaces] [FIELD]

Prints a running tunnel's interface and peers as wg show does, read from
its UAPI socket DIR/NAME.sock. wg looks only in ` + uapi.SocketDir + `; this
reads the socket wherever up and serve were told to put it, so it also works
for a tunnel run without root, with -uapi-dir.

Without NAME, or with all, every tunnel in DIR is shown; interfaces lists
their names. FIELD prints one field per line for scripts, as wg show's do:
public-key, listen-port, fwmark, peers, endpoints, allowed-ips,
latest-handshakes, transfer or persistent-keepalive. Keys are never printed:
private-key, preshared-keys and dump are left to wg.

Examples:
  wgbore show
  wgbore show -uapi-dir ~/.wgbore wg0
  wgbore show wg0 latest-handshakes
`

// showFields are the FIELD arguments of wg show that print no key.
var showFields = []string{"public-key", "listen-port", "fwmark", "peers", "endpoints", "allowed-ips", "latest-handshakes", "transfer", "persistent-keepalive"}

func cmdShow(ctx context.Context, e *env, args []string) int {
	fset := newFlagSet(e, "show", showUsage)
	dir := fset.String("uapi-dir", uapi.DefaultDir(), "`directory` of the UAPI sockets, as given to up or serve")
	if code, done := parseFlagsAndArgs(e, fset, args, 2); done {
		return code
	}
	rest := fset.Args()
	target, field := "all", ""
	if len(rest) > 0 {
		target = rest[0]
	}
	if len(rest) > 1 {
		field = rest[1]
		if !slices.Contains(showFields, field) {
			fmt.Fprintf(e.stderr, "wgbore show: unknown field %q; want one of %s (keys are shown only by wg)\n", field, strings.Join(showFields, ", "))
			return exitUsage
		}
	}

	if strings.ContainsAny(target, `/\`) || target == "." || target == ".." {
		fmt.Fprintf(e.stderr, "wgbore show: %q is not an interface name; the directory goes in -uapi-dir\n", target)
		return exitUsage
	}
	if target == "interfaces" && field != "" {
		fmt.Fprintln(e.stderr, "wgbore show: interfaces takes no field")
		return exitUsage
	}

	if target != "all" && target != "interfaces" {
		st, err := getDevice(ctx, *dir, target)
		if err != nil {
			fmt.Fprintf(e.stderr, "wgbore show: %v\n", err)
			return exitFailure
		}
		if field != "" {
			printField(e.stdout, target, st, field, false)
		} else {
			printDevice(e.stdout, target, st, time.Now())
		}
		return exitOK
	}

	names, err := socketNames(*dir)
	if err != nil {
		fmt.Fprintf(e.stderr, "wgbore show: %v\n", err)
		return exitFailure
	}
	if len(names) == 0 {
		fmt.Fprintf(e.stderr, "wgbore show: no UAPI socket in %s: no tunnel is up there; if it was started with -uapi-dir, pass the same -uapi-dir\n", *dir)
		return exitFailure
	}
	if target == "interfaces" {
		fmt.Fprintln(e.stdout, strings.Join(names, " "))
		return exitOK
	}
	code := exitOK
	first := true
	for _, name := range names {
		st, err := getDevice(ctx, *dir, name)
		if err != nil {
			// A tunnel that stopped since the listing is not the others' failure.
			fmt.Fprintf(e.stderr, "wgbore show: %v\n", err)
			code = exitFailure
			continue
		}
		if field != "" {
			printField(e.stdout, name, st, field, true)
			continue
		}
		if !first {
			fmt.Fprintln(e.stdout)
		}
		first = false
		printDevice(e.stdout, name, st, time.Now())
	}
	return code
}

// socketNames lists the interfaces with a socket in dir, sorted, as wg
// show lists /var/run/wireguard.
func socketNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing UAPI sockets: %w", err)
	}
	var names []string
	for _, ent := range entries {
		name, ok := strings.CutSuffix(ent.Name(), ".sock")
		if ok && name != "" && ent.Type() == fs.ModeSocket {
			names = append(names, name)
		}
	}
	return names, nil
}

// getDevice asks the tunnel named name for its state.
func getDevice(ctx context.Context, dir, name string) (*uapi.DeviceState, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, path, err := dialUAPI(ctx, dir, name)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	st, err := uapi.Get(c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// dialUAPI connects to the tunnel's socket, with ctx's deadline on the
// connection too. A socket that does not answer is reported with its
// path and a hint, since the usual cause is a tunnel started with another
// -uapi-dir.
func dialUAPI(ctx context.Context, dir, name string) (net.Conn, string, error) {
	path := filepath.Join(dir, name+".sock")
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		hint := "is the tunnel up? if it was started with -uapi-dir, pass the same -uapi-dir"
		if errors.Is(err, fs.ErrPermission) {
			hint = "run as the tunnel's user, or start it with -uapi-group"
		}
		return nil, path, fmt.Errorf("cannot reach %s: %w; %s", path, unwrapOp(err), hint)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return c, path, nil
}

// unwrapOp drops net.OpError's "dial unix PATH:" prefix, since the
// message names the path already.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// printDevice prints st as wg show NAME does (wireguard-tools' pretty_print),
// without the colours, so that what people and scripts know of wg's output
// holds for ours. The private key is "(hidden)" as wg prints it by default;
// there is no WG_HIDE_KEYS=never here, since st does not hold it.
func printDevice(w io.Writer, name string, st *uapi.DeviceState, now time.Time) {
	fmt.Fprintf(w, "interface: %s\n", name)
	if st.HasPrivateKey {
		fmt.Fprintf(w, "  public key: %s\n", st.PublicKey)
		fmt.Fprintf(w, "  private key: (hidden)\n")
	}
	if st.ListenPort != 0 {
		fmt.Fprintf(w, "  listening port: %d\n", st.ListenPort)
	}
	if st.FwMark != 0 {
		fmt.Fprintf(w, "  fwmark: 0x%x\n", st.FwMark)
	}
	peers := slices.Clone(st.Peers)
	// wg lists the most recent handshake first and never-handshaken
	// peers last.
	slices.SortStableFunc(peers, func(a, b protocol.PeerStatus) int {
		switch {
		case a.LastHandshake.IsZero() && b.LastHandshake.IsZero():
			return 0
		case a.LastHandshake.IsZero():
			return 1
		case b.LastHandshake.IsZero():
			return -1
		}
		return b.LastHandshake.Compare(a.LastHandshake)
	})
	if len(peers) > 0 {
		fmt.Fprintln(w)
	}
	for i, p := range peers {
		fmt.Fprintf(w, "peer: %s\n", p.PublicKey)
		if p.HasPresharedKey {
			fmt.Fprintf(w, "  preshared key: (hidden)\n")
		}
		if p.Endpoint.IsValid() {
			fmt.Fprintf(w, "  endpoint: %s\n", p.Endpoint)
		}
		fmt.Fprintf(w, "  allowed ips: %s\n", joinPrefixes(p, ", "))
		if !p.LastHandshake.IsZero() && p.LastHandshake.Unix() != 0 {
			fmt.Fprintf(w, "  latest handshake: %s\n", ago(p.LastHandshake, now))
		}
		if p.RxBytes != 0 || p.TxBytes != 0 {
			fmt.Fprintf(w, "  transfer: %s received, %s sent\n", humanBytes(p.RxBytes), humanBytes(p.TxBytes))
		}
		if p.PersistentKeepalive != 0 {
			fmt.Fprintf(w, "  persistent keepalive: every %s\n", prettyTime(uint64(p.PersistentKeepalive/time.Second)))
		}
		if i < len(peers)-1 {
			fmt.Fprintln(w)
		}
	}
}

// printField prints one field as wg show NAME FIELD does (ugly_print):
// tab-separated, peers in the socket's order, each line prefixed with the
// interface's name when several interfaces are shown.
func printField(w io.Writer, name string, st *uapi.DeviceState, field string, withName bool) {
	prefix := ""
	if withName {
		prefix = name + "\t"
	}
	switch field {
	case "public-key":
		key := "(none)"
		if st.HasPrivateKey {
			key = st.PublicKey.String()
		}
		fmt.Fprintf(w, "%s%s\n", prefix, key)
		return
	case "listen-port":
		fmt.Fprintf(w, "%s%d\n", prefix, st.ListenPort)
		return
	case "fwmark":
		if st.FwMark != 0 {
			fmt.Fprintf(w, "%s0x%x\n", prefix, st.FwMark)
		} else {
			fmt.Fprintf(w, "%soff\n", prefix)
		}
		return
	}
	for _, p := range st.Peers {
		fmt.Fprintf(w, "%s%s", prefix, p.PublicKey)
		switch field {
		case "peers":
		case "endpoints":
			if p.Endpoint.IsValid() {
				fmt.Fprintf(w, "\t%s", p.Endpoint)
			} else {
				fmt.Fprint(w, "\t(none)")
			}
		case "allowed-ips":
			fmt.Fprintf(w, "\t%s", joinPrefixes(p, " "))
		case "latest-handshakes":
			var sec int64
			if !p.LastHandshake.IsZero() {
				sec = p.LastHandshake.Unix()
			}
			fmt.Fprintf(w, "\t%d", sec)
		case "transfer":
			fmt.Fprintf(w, "\t%d\t%d", p.RxBytes, p.TxBytes)
		case "persistent-keepalive":
			if p.PersistentKeepalive != 0 {
				fmt.Fprintf(w, "\t%d", int(p.PersistentKeepalive/time.Second))
			} else {
				fmt.Fprint(w, "\toff")
			}
		}
		fmt.Fprintln(w)
	}
}

func joinPrefixes(p protocol.PeerStatus, sep string) string {
	if len(p.AllowedIPs) == 0 {
		return "(none)"
	}
	s := make([]string, len(p.AllowedIPs))
	for i, a := range p.AllowedIPs {
		s[i] = a.String()
	}
	return strings.Join(s, sep)
}

// ago is wg's: whole seconds of the clocks' difference, "Now" within the
// same second, and a warning when the handshake is in the future.
func ago(t, now time.Time) string {
	switch d := now.Unix() - t.Unix(); {
	case d == 0:
		return "Now"
	case d < 0:
		return "(System clock wound backward; connection problems may ensue.)"
	default:
		return prettyTime(uint64(d)) + " ago"
	}
}

// prettyTime spells a duration as wg does: "1 minute, 2 seconds", a year
// being 365 days, zero units left out.
func prettyTime(secs uint64) string {
	units := []struct {
		name string
		size uint64
	}{
		{"year", 365 * 24 * 60 * 60},
		{"day", 24 * 60 * 60},
		{"hour", 60 * 60},
		{"minute", 60},
		{"second", 1},
	}
	var parts []string
	for _, u := range units {
		n := secs / u.size
		secs %= u.size
		if n == 0 {
			continue
		}
		plural := "s"
		if n == 1 {
			plural = ""
		}
		parts = append(parts, fmt.Sprintf("%d %s%s", n, u.name, plural))
	}
	return strings.Join(parts, ", ")
}

// humanBytes is wg's: bytes below 1 KiB, then two decimals of the
// largest binary unit below the figure, up to TiB.
func humanBytes(b uint64) string {
	const k = 1024
	switch {
	case b < k:
		return fmt.Sprintf("%d B", b)
	case b < k*k:
		return fmt.Sprintf("%.2f KiB", float64(b)/k)
	case b < k*k*k:
		return fmt.Sprintf("%.2f MiB", float64(b)/(k*k))
	case b < k*k*k*k:
		return fmt.Sprintf("%.2f GiB", float64(b)/(k*k*k))
	default:
		return fmt.Sprintf("%.2f TiB", float64(b)/(k*k*k)/k)
	}
}
