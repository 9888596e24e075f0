//go:build linux

// Command kvmguest is the /init of the tiny Linux guest that
// the kernel test boots under QEMU, so wgbore can be proven against
// the Linux kernel's own WireGuard module. It is a test fixture, built
// static (CGO off) into an initramfs by the test, never shipped.
//
// It loads the kernel modules it finds under /modules in name order,
// brings up the NIC and a WireGuard interface wg0 through netlink, serves
// on wg0's address (TCP echo on 7, HTTP on 80, UDP echo on 7), prints
// "ready" on the console, and then obeys one-line commands read from the
// console, answering each with a line that starts "result ":
//
//	dial ADDR N   connect to ADDR through wg0, send N bytes while reading
//	              the echo back, and compare both sha256 sums
//	show          the peer's latest handshake (Unix seconds), rx and tx bytes
//	poweroff      power the guest off
//
// Its configuration arrives on the kernel command line, as
// wgguest=PRIVATE,PEER,PSK,ENDPOINT (keys in hex, ENDPOINT an IPv4
// address:port), which the kernel hands to init as an environment variable.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The guest's addresses: QEMU's user-mode network gives the NIC
// 10.0.2.15 and maps 10.0.2.2 to the host's loopback; the tunnel is
// 10.77.0.0/24, with the guest at .2 and wgbore at .1.
var (
	nicPrefix    = netip.MustParsePrefix("10.0.2.15/24")
	tunnelPrefix = netip.MustParsePrefix("10.77.0.2/24")
	wgborePrefix = netip.MustParsePrefix("10.77.0.1/32")
)

const (
	iface      = "wg0"
	listenPort = 51820
)

type config struct {
	private, peer, psk []byte
	endpoint           netip.AddrPort
}

func main() {
	if err := run(); err != nil {
		fmt.Printf("kvmguest: %v\n", err)
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func run() error {
	conf, err := parseConfig(os.Getenv("wgguest"))
	if err != nil {
		return err
	}
	if err := loadModules("/modules"); err != nil {
		return err
	}
	rt, err := dialNetlink(unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer rt.close()
	if err := bringUpNIC(rt); err != nil {
		return err
	}
	if err := rt.newWireGuardLink(iface); err != nil {
		return fmt.Errorf("create %s: %w", iface, err)
	}
	wg, err := net.InterfaceByName(iface)
	if err != nil {
		return err
	}
	if err := rt.addAddress(wg.Index, tunnelPrefix); err != nil {
		return fmt.Errorf("address %s: %w", iface, err)
	}
	gn, err := dialNetlink(unix.NETLINK_GENERIC)
	if err != nil {
		return err
	}
	defer gn.close()
	family, err := gn.familyID(unix.WG_GENL_NAME)
	if err != nil {
		return fmt.Errorf("wireguard genetlink family: %w", err)
	}
	if err := gn.configure(family, conf); err != nil {
		return fmt.Errorf("configure %s: %w", iface, err)
	}
	if err := rt.setUp(wg.Index); err != nil {
		return fmt.Errorf("up %s: %w", iface, err)
	}
	if err := serve(tunnelPrefix.Addr()); err != nil {
		return err
	}
	fmt.Println("ready")
	return obey(os.Stdin, gn, family)
}

func parseConfig(s string) (config, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 4 {
		return config{}, fmt.Errorf("wgguest=%q: want PRIVATE,PEER,PSK,ENDPOINT", s)
	}
	var c config
	for i, dst := range []*[]byte{&c.private, &c.peer, &c.psk} {
		b, err := hex.DecodeString(parts[i])
		if err != nil || len(b) != 32 {
			return config{}, fmt.Errorf("wgguest: field %d is not a 32-byte hex key", i+1)
		}
		*dst = b
	}
	ep, err := netip.ParseAddrPort(parts[3])
	if err != nil || !ep.Addr().Is4() {
		return config{}, fmt.Errorf("wgguest: endpoint %q is not IPv4 address:port", parts[3])
	}
	c.endpoint = ep
	return c, nil
}

// loadModules loads every module file in dir in name order; the test
// names them so that dependencies come first, as modules.dep orders them.
func loadModules(dir string) error {
	names, err := filepath.Glob(filepath.Join(dir, "*.ko*"))
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		flags := 0
		if !strings.HasSuffix(name, ".ko") {
			flags = unix.MODULE_INIT_COMPRESSED_FILE
		}
		err = unix.FinitModule(int(f.Fd()), "", flags)
		f.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("load %s: %w", filepath.Base(name), err)
		}
	}
	return nil
}

func bringUpNIC(rt *netlinkConn) error {
	ifs, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, ifc := range ifs {
		if err := rt.setUp(ifc.Index); err != nil {
			return fmt.Errorf("up %s: %w", ifc.Name, err)
		}
		if ifc.Flags&net.FlagLoopback == 0 {
			if err := rt.addAddress(ifc.Index, nicPrefix); err != nil {
				return fmt.Errorf("address %s: %w", ifc.Name, err)
			}
			return nil
		}
	}
	return fmt.Errorf("no network interface besides loopback (is the NIC's driver among the modules?)")
}

// serve starts the tunnel-side servers the host tests against.
func serve(addr netip.Addr) error {
	echo, err := net.Listen("tcp", netip.AddrPortFrom(addr, 7).String())
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	web, err := net.Listen("tcp", netip.AddrPortFrom(addr, 80).String())
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/bytes/{n}", serveBytes)
	mux.HandleFunc("/sha256", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x %d", h.Sum(nil), n)
	})
	go http.Serve(web, mux)
	udp, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 7)))
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := udp.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			udp.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return nil
}

// serveBytes answers N pseudo-random bytes, or with ?sum, their sha256,
// so the host can check a download against bytes it never had.
func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "bad length", http.StatusBadRequest)
		return
	}
	body := io.LimitReader(rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24)}), n)
	if r.URL.Query().Has("sum") {
		h := sha256.New()
		io.Copy(h, body)
		fmt.Fprintf(w, "%x", h.Sum(nil))
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	io.Copy(w, body)
}

func obey(console io.Reader, gn *netlinkConn, family uint16) error {
	lines := bufio.NewScanner(console)
	for lines.Scan() {
		f := strings.Fields(lines.Text())
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "dial" && len(f) == 3:
			n, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				fmt.Printf("result error %v\n", err)
				continue
			}
			start := time.Now()
			if err := echoThrough(f[1], n); err != nil {
				fmt.Printf("result error %v\n", err)
				continue
			}
			fmt.Printf("result ok %d bytes each way in %.2f s\n", n, time.Since(start).Seconds())
		case f[0] == "show":
			hs, rx, tx, err := gn.peerStats(family)
			if err != nil {
				fmt.Printf("result error %v\n", err)
				continue
			}
			fmt.Printf("result handshake %d rx %d tx %d\n", hs, rx, tx)
		case f[0] == "poweroff":
			return nil
		default:
			fmt.Printf("result error unknown command %q\n", lines.Text())
		}
	}
	return lines.Err()
}

// echoThrough sends n bytes to an echo server at addr while reading them
// back, and compares what came back with what went. Connecting retries for
// a while: the first attempt is what makes the kernel start a handshake.
func echoThrough(addr string, n int64) error {
	var c net.Conn
	var err error
	for deadline := time.Now().Add(60 * time.Second); ; {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("connect %s: %w", addr, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	sent := make(chan []byte, 1)
	go func() {
		h := sha256.New()
		io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.NewChaCha8([32]byte{1}), n))
		c.(*net.TCPConn).CloseWrite()
		sent <- h.Sum(nil)
	}()
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("after %d bytes back: %w", got, err)
	}
	if want := <-sent; got != n || string(h.Sum(nil)) != string(want) {
		return fmt.Errorf("got %d bytes back with sha256 %x, sent %d with %x", got, h.Sum(nil), n, want)
	}
	return nil
}
