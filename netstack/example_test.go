package netstack_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"

	"golang.zx2c4.com/wireguard/device"
	wgnetstack "golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// A web server that exists only inside the tunnel, on a wireguard-go peer
// at 10.0.0.2, fetched with net/http as if it were on the local network.
func ExampleNet_HTTPClient() {
	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		log.Fatal(err)
	}
	remote, err := startRemotePeer(ours.PublicKey(), "hello from inside the tunnel\n")
	if err != nil {
		log.Fatal(err)
	}
	defer remote.Close()

	n, err := netstack.Open(context.Background(), netstack.Config{
		PrivateKey:  ours,
		Addresses:   []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")},
		ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Peers: []protocol.PeerConfig{{
			PublicKey:  remote.PublicKey,
			Endpoint:   remote.Endpoint,
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")},
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close()

	resp, err := n.HTTPClient().Get("http://10.0.0.2/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Status)
	fmt.Print(string(body))
	// Output:
	// 200 OK
	// hello from inside the tunnel
}

// remotePeer is the far end for the examples: a wireguard-go device on
// loopback with its own userspace stack at 10.0.0.2, serving one page
// over HTTP inside its tunnel.
type remotePeer struct {
	PublicKey protocol.PublicKey
	Endpoint  string // host:port of its WireGuard UDP socket

	dev *device.Device
	srv *http.Server
}

func startRemotePeer(peer protocol.PublicKey, page string) (*remotePeer, error) {
	key, err := protocol.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	tun, tnet, err := wgnetstack.CreateNetTUN([]netip.Addr{netip.MustParseAddr("10.0.0.2")}, nil, protocol.DefaultMTU)
	if err != nil {
		return nil, err
	}
	bind := &wgtest.LoopbackBind{Addr: netip.MustParseAddr("127.0.0.1")}
	dev := device.NewDevice(tun, bind, device.NewLogger(device.LogLevelSilent, ""))
	uapi := fmt.Sprintf("private_key=%s\nlisten_port=0\npublic_key=%s\nallowed_ip=10.0.0.1/32\n",
		hex.EncodeToString(key[:]), hex.EncodeToString(peer[:]))
	if err := dev.IpcSet(uapi); err != nil {
		dev.Close()
		return nil, err
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, err
	}
	l, err := tnet.ListenTCPAddrPort(netip.MustParseAddrPort("10.0.0.2:80"))
	if err != nil {
		dev.Close()
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, page)
	})}
	go srv.Serve(l)
	return &remotePeer{
		PublicKey: key.PublicKey(),
		Endpoint:  fmt.Sprintf("127.0.0.1:%d", bind.Port()),
		dev:       dev,
		srv:       srv,
	}, nil
}

func (r *remotePeer) Close() error {
	r.srv.Close()
	// Down first: Close alone closes tun/netstack's TUN while a receiver
	// may still be delivering into its stack, whose answer then goes to
	// a closed channel.
	r.dev.Down()
	r.dev.Close()
	return nil
}
