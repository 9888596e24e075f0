package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	xproxy "golang.org/x/net/proxy"

	"github.com/wgbore/wgbore/cmd/internal/service"
	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/udpbind"
)

const demoUsage = `Usage: wgbore demo [flags]

Runs a WireGuard server and a client in this one process, on 127.0.0.1,
with keys made up on the spot: no config file, no root, no VPN provider.
The client serves SOCKS5 and HTTP proxies; the server serves a small web
page at http://demo.wg/ inside its tunnel, named by its own DNS server.
It prints the curl commands to try and runs until Ctrl-C.

Examples:
  wgbore demo
  wgbore demo -check                  # one request through each proxy, exit 0 or 1
  wgbore demo -write-configs ./demo   # the two wg-quick files, to run apart:
  wgbore serve -c demo/server.conf &  wgbore up -c demo/client.conf
`

// The demo's tunnel: the server is demoServerIP, the client demoClientIP.
// 10.77.0.0/24 is unlikely to clash with a real network, and it never
// leaves the process.
var (
	demoServerIP = netip.MustParseAddr("10.77.0.1")
	demoClientIP = netip.MustParseAddr("10.77.0.2")
)

const demoName = "demo.wg"

const demoServerConf = `# wgbore demo: the server. Run it with: wgbore serve -c server.conf
[Interface]
PrivateKey = %s
Address = %s/24
ListenPort = %d

[Peer]
# the demo client
PublicKey = %s
AllowedIPs = %s/32

[DNSServer]
# the demo page's name, for peers that use DNS = %s
Record = %s %s
`

const demoClientConf = `# wgbore demo: the client. Run it with: wgbore up -c client.conf
[Interface]
PrivateKey = %s
Address = %s/32
DNS = %s

[Peer]
# the demo server
PublicKey = %s
Endpoint = 127.0.0.1:%d
AllowedIPs = 0.0.0.0/0

[Socks5]
BindAddress = %s

[http]
BindAddress = %s
`

func cmdDemo(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "demo", demoUsage)
	socksAddr := fs.String("socks", "127.0.0.1:1080", "`address` of the client's SOCKS5 proxy (port 0: any free port)")
	httpAddr := fs.String("http", "127.0.0.1:8080", "`address` of the client's HTTP proxy (port 0: any free port)")
	check := fs.Bool("check", false, "make one request through each proxy, print the results, and exit 0 if both worked, 1 if not")
	writeDir := fs.String("write-configs", "", "write server.conf and client.conf to `dir` and exit")
	grace := fs.Duration("grace", 2*time.Second, "how long open connections may finish after Ctrl-C")
	lf := logFlags{}
	lf.register(fs)
	fs.Lookup("log-level").DefValue = "warn"
	lf.level = "warn"
	if code, done := parseFlags(e, fs, args); done {
		return code
	}
	log, err := lf.logger(e.stderr)
	if err != nil {
		fmt.Fprintf(e.stderr, "wgbore demo: %v\n", err)
		return exitUsage
	}
	// -check must not fail because 1080 or 8080 is taken by something
	// else on this machine; any free port will do for it.
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	if *check {
		if !explicit["socks"] {
			*socksAddr = "127.0.0.1:0"
		}
		if !explicit["http"] {
			*httpAddr = "127.0.0.1:0"
		}
	}

	serverConf, clientConf, err := demoConfigs(*socksAddr, *httpAddr)
	if err != nil {
		fmt.Fprintf(e.stderr, "wgbore demo: %v\n", err)
		return exitFailure
	}
	if *writeDir != "" {
		return writeDemoConfigs(e, *writeDir, serverConf, clientConf)
	}
	if e.catchSignals != nil {
		e.catchSignals()
	}

	server, err := startDemoSide(ctx, e, log.With("side", "server"), "server.conf", serverConf, true)
	if err != nil {
		log.Error("cannot start the demo server", "err", err)
		return exitFailure
	}
	client, err := startDemoSide(ctx, e, log.With("side", "client"), "client.conf", clientConf, false)
	if err != nil {
		server.Shutdown(context.Background())
		log.Error("cannot start the demo client", "err", err)
		return exitFailure
	}
	if err := startDemoPage(server); err != nil {
		client.Shutdown(context.Background())
		server.Shutdown(context.Background())
		log.Error("cannot start the demo page", "err", err)
		return exitFailure
	}
	socks, httpProxy := client.ListenAddr("socks5 "), client.ListenAddr("http ")

	code := exitOK
	if *check {
		code = demoCheck(ctx, e, socks, httpProxy)
	} else {
		fmt.Fprintf(e.stdout, `wgbore demo: a WireGuard server and client in this process, on 127.0.0.1.
The client's proxies lead into the tunnel; http://%s/ is a page inside it.

Try:
  curl --socks5-hostname %s http://%s/
  curl -x http://%s http://%s/

Ctrl-C to stop.
`, demoName, socks, demoName, httpProxy, demoName)
		select {
		case <-e.signals:
		case <-ctx.Done():
		}
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	client.Shutdown(graceCtx)
	server.Shutdown(graceCtx)
	return code
}

// demoConfigs makes the two wg-quick files: fresh keys, and a server port
// picked on 127.0.0.1 so the written files work as they are.
func demoConfigs(socksAddr, httpAddr string) (server, client string, err error) {
	serverKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		return "", "", err
	}
	clientKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		return "", "", err
	}
	port, err := freeUDPPort()
	if err != nil {
		return "", "", err
	}
	server = fmt.Sprintf(demoServerConf, serverKey.Base64(), demoServerIP, port, clientKey.PublicKey(), demoClientIP,
		demoServerIP, demoName, demoServerIP)
	client = fmt.Sprintf(demoClientConf, clientKey.Base64(), demoClientIP, demoServerIP, serverKey.PublicKey(), port,
		socksAddr, httpAddr)
	return server, client, nil
}

// freeUDPPort asks the kernel for a free UDP port on loopback. Another
// process could take it before the server binds it; for a demo, that
// rare failure is a clear error, not a wrong result. It opens the socket
// as the tunnel does, which works where net.ListenUDP does not (Wine).
func freeUDPPort() (int, error) {
	b, err := udpbind.Listen(udpbind.Config{Addrs: []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}})
	if err != nil {
		return 0, err
	}
	defer b.Close()
	return int(b.Port()), nil
}

func writeDemoConfigs(e *env, dir, server, client string) int {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fmt.Fprintf(e.stderr, "wgbore demo: %v\n", err)
		return exitFailure
	}
	for name, text := range map[string]string{"server.conf": server, "client.conf": client} {
		// The files hold private keys: readable by the owner only.
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			fmt.Fprintf(e.stderr, "wgbore demo: %v\n", err)
			return exitFailure
		}
	}
	fmt.Fprintf(e.stdout, "wrote %s and %s\nrun them with:\n  wgbore serve -c %s\n  wgbore up -c %s\n",
		filepath.Join(dir, "server.conf"), filepath.Join(dir, "client.conf"),
		filepath.Join(dir, "server.conf"), filepath.Join(dir, "client.conf"))
	return exitOK
}

// startDemoSide runs one side from its config text, as up or serve
// would, with its WireGuard socket on loopback only.
func startDemoSide(ctx context.Context, e *env, log *slog.Logger, name, text string, serve bool) (*service.Service, error) {
	cfg, err := config.Parse(name, []byte(text), config.Options{})
	if err != nil {
		return nil, err
	}
	p, err := service.Check(cfg, name)
	if err != nil {
		return nil, err
	}
	return service.Start(ctx, p, service.Options{
		Logger: log, Serve: serve, ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Root: e.root, Stdin: e.stdin, Stdout: e.stdout,
	})
}

// startDemoPage serves the demo page on the server's tunnel address. It
// reports what the server's engine knows of the requesting peer, so the
// page itself shows that the request came through WireGuard.
func startDemoPage(s *service.Service) error {
	started := time.Now()
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Hello from inside the WireGuard tunnel.\n\n")
		fmt.Fprintf(w, "Your request came from %s and reached %s through wgbore's WireGuard server.\n", r.RemoteAddr, demoServerIP)
		for _, p := range s.Peers() {
			age := "never"
			if !p.LastHandshake.IsZero() {
				age = time.Since(p.LastHandshake).Round(time.Millisecond).String() + " ago"
			}
			fmt.Fprintf(w, "Peer %s: last handshake %s, %d bytes received, %d bytes sent.\n", p.PublicKey, age, p.RxBytes, p.TxBytes)
		}
		fmt.Fprintf(w, "The server has been up for %s.\n", time.Since(started).Round(time.Second))
	})
	return s.ServeInTunnel(netip.AddrPortFrom(demoServerIP, 80), "demo page http://"+demoName+"/", page)
}

// demoCheck fetches the demo page once through each proxy.
func demoCheck(ctx context.Context, e *env, socks, httpProxy string) int {
	target := "http://" + demoName + "/"
	socksDialer, err := xproxy.SOCKS5("tcp", socks, nil, &net.Dialer{})
	if err != nil {
		fmt.Fprintf(e.stdout, "FAIL socks5: %v\n", err)
		return exitFailure
	}
	hurl, _ := url.Parse("http://" + httpProxy)
	clients := []struct {
		name string
		tr   *http.Transport
	}{
		{"socks5 " + socks, &http.Transport{DialContext: socksDialer.(xproxy.ContextDialer).DialContext}},
		{"http " + httpProxy, &http.Transport{Proxy: http.ProxyURL(hurl)}},
	}
	code := exitOK
	for _, c := range clients {
		body, err := demoFetch(ctx, c.tr, target)
		c.tr.CloseIdleConnections()
		if err != nil {
			fmt.Fprintf(e.stdout, "FAIL %s → %s: %v\n", c.name, target, err)
			code = exitFailure
			continue
		}
		first, _, _ := strings.Cut(body, "\n")
		fmt.Fprintf(e.stdout, "ok   %s → %s: %q\n", c.name, target, first)
	}
	return code
}

func demoFetch(ctx context.Context, tr *http.Transport, target string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", err
	}
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if res.StatusCode != http.StatusOK {
		return "", errors.New(res.Status)
	}
	return string(body), nil
}
