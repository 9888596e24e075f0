package systemtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

var (
	faultMiB = flag.Int("faults.mib", 4,
		"MiB each fault test moves each way; 256 is the lossy path's usual size")
	faultBlackout = flag.Duration("faults.blackout", 3*time.Second,
		"how long TestFaultsBlackout's path is down; 15s is the usual outage")
)

// lossyPath is the impaired path, each way: 5% loss, 2% reordering,
// 1% duplication, and 2 ms ± 1 ms of delay.
var lossyPath = wgtest.Impairment{Loss: 0.05, Reorder: 0.02, Duplicate: 0.01, Delay: 2 * time.Millisecond, Jitter: time.Millisecond}

// faultSetup is the built binary and a wireguard-go peer with an
// impairment relay between their WireGuard sockets: the binary's peer
// endpoint is the relay's side A, the peer is its side B.
type faultSetup struct {
	site  *peersite.Site
	relay *wgtest.Relay
	d     *daemon
	socks string
	ours  protocol.PrivateKey
}

func startFaults(t *testing.T, im wgtest.Impairment, socksExtra string) *faultSetup {
	t.Helper()
	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{WithoutRACK: true})
	relay, err := wgtest.NewRelay(wgtest.RelayConfig{B: netip.MustParseAddrPort(site.Endpoint()), Seed: 8, AToB: im, BToA: im})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	conf := site.WGQuick(ours, "[Socks5]\nBindAddress = 127.0.0.1:0\n"+socksExtra)
	conf = strings.Replace(conf, "Endpoint = "+site.Endpoint(), "Endpoint = "+relay.AddrA().String(), 1)
	d := startDaemon(t, WriteFile(t, t.TempDir(), "wg0.conf", conf), "-log-level", "info")
	return &faultSetup{site: site, relay: relay, d: d, socks: d.addr(t, "socks5 ", 0), ours: ours}
}

// download reads n bytes of the site's source service through SOCKS5,
// checks every byte, and returns MB/s. progress, if set, is called with
// the bytes read so far after every read.
func (f *faultSetup) download(t *testing.T, n int, limit time.Duration, progress func(int64)) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	c, err := sourceThrough(ctx, f.socks, uint64(n))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(limit))
	start := time.Now()
	var r io.Reader = c
	if progress != nil {
		r = &progressReader{r: c, f: progress}
	}
	if err := peersite.CheckBody(r, n); err != nil {
		t.Fatalf("download of %d bytes: %v", n, err)
	}
	return float64(n) / 1e6 / time.Since(start).Seconds()
}

type progressReader struct {
	r io.Reader
	n int64
	f func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	p.f(p.n)
	return n, err
}

// upload POSTs n bytes to the site's /sha256 through SOCKS5 and checks
// the digest it computed; it returns MB/s.
func (f *faultSetup) upload(t *testing.T, n int, limit time.Duration) float64 {
	t.Helper()
	client := &http.Client{Timeout: limit, Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			return socksclient.Connect(ctx, f.socks, socksclient.Auth{}, ap)
		},
	}}
	defer client.CloseIdleConnections()
	body := peersite.Body(n)
	sum := sha256.Sum256(body)
	start := time.Now()
	res, err := client.Post(fmt.Sprintf("http://%s/sha256", peersite.TheirV4), "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("upload of %d bytes: %v", n, err)
	}
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	rate := float64(n) / 1e6 / time.Since(start).Seconds()
	if want := fmt.Sprintf("%s %d", hex.EncodeToString(sum[:]), n); strings.TrimSpace(string(got)) != want {
		t.Fatalf("upload: the peer computed %q, want %q", got, want)
	}
	return rate
}

// TestFaultsLossyPath moves data both ways through SOCKS5 over a path
// with 5% loss, 2% reordering, 1% duplication and 2 ms ± 1 ms of delay
// each way, and checks every byte. -faults.mib=256 is the long variant.
func TestFaultsLossyPath(t *testing.T) {
	f := startFaults(t, lossyPath, "")
	n := *faultMiB << 20
	limit := time.Duration(*faultMiB)*10*time.Second + time.Minute
	down := f.download(t, n, limit, nil)
	up := f.upload(t, n, limit)
	s := f.relay.Stats()
	t.Logf("%d MiB each way, intact: download %.2f MB/s, upload %.2f MB/s", *faultMiB, down, up)
	for _, d := range []wgtest.Direction{wgtest.AToB, wgtest.BToA} {
		ds := s.Dir(d)
		t.Logf("relay %v: %d received, %d lost, %d duplicated, %d reordered", d, ds.Received, ds.DroppedLoss, ds.Duplicated, ds.Reordered)
		if ds.DroppedLoss == 0 || ds.Duplicated == 0 || ds.Reordered == 0 {
			t.Errorf("the relay did not impair %v: %+v", d, ds)
		}
	}
}

// TestFaultsBlackout blacks the path out in the middle of a download.
// The transfer completes, every byte intact, without restarting wgbore;
// a SOCKS5 client that dials while the path is down gets its failure
// reply within the listener's DialTimeout (2 s here), not a hang. With
// -faults.blackout=15s the session must also re-handshake, since a 15 s
// silence outlasts KeepaliveTimeout + RekeyTimeout.
func TestFaultsBlackout(t *testing.T) {
	const dialTimeout = 2 * time.Second
	f := startFaults(t, wgtest.Impairment{}, fmt.Sprintf("DialTimeout = %d\n", int(dialTimeout.Seconds())))
	out := *faultBlackout
	n := max(*faultMiB, 32) << 20
	handshakes := func() uint64 {
		st, _ := f.site.Device.IpcGet()
		var hs uint64
		for _, line := range strings.Split(st, "\n") {
			if v, ok := strings.CutPrefix(line, "last_handshake_time_sec="); ok {
				fmt.Sscan(v, &hs)
			}
		}
		return hs
	}
	before := handshakes()

	var blackedAt, backAt atomic.Int64
	dialed := make(chan error, 1)
	var dialTook time.Duration
	progress := func(got int64) {
		if got < int64(n)/4 || blackedAt.Load() != 0 {
			return
		}
		blackedAt.Store(time.Now().UnixNano())
		f.relay.Blackout(out)
		time.AfterFunc(out, func() { backAt.Store(time.Now().UnixNano()) })
		go func() {
			// A client arriving while the path is down.
			time.Sleep(out / 4)
			start := time.Now()
			c, _, err := socksHoldWithin(f.socks, netip.AddrPortFrom(peersite.TheirV4, 7), 4*dialTimeout)
			dialTook = time.Since(start)
			if c != nil {
				c.Close()
				err = errors.New("a connection worked while the path was down")
			}
			dialed <- err
		}()
	}
	start := time.Now()
	rate := f.download(t, n, 10*time.Minute, progress)
	if blackedAt.Load() == 0 {
		t.Fatal("the download ended before the blackout began")
	}
	if err := <-dialed; err == nil {
		t.Fatal("a dial during the blackout reported no failure")
	} else {
		t.Logf("a dial during the blackout failed after %v: %v", dialTook.Round(time.Millisecond), err)
	}
	if dialTook > dialTimeout+time.Second {
		t.Errorf("the failure took %v, past the DialTimeout of %v", dialTook, dialTimeout)
	}
	after := time.Since(time.Unix(0, backAt.Load()))
	t.Logf("%d MiB intact through a %v blackout, %.1f MB/s overall (%v in all; the last bytes %v after the path came back)",
		n>>20, out, rate, time.Since(start).Round(time.Millisecond), after.Round(time.Millisecond))
	if out >= protocol.KeepaliveTimeout+protocol.RekeyTimeout && handshakes() == before {
		t.Errorf("no new handshake after a %v blackout", out)
	}
	fetchThrough(t, f.socks, "after the blackout")
}

// TestFaultsNATRebinding moves the peer, as wgbore sees it, to a new
// source port in the middle of a download (a NAT rebinding in front of
// the peer). wgbore roams to the new port on its first authenticated
// packet, the transfer completes intact, and nothing reaches the old port
// once the new one has heard from wgbore.
func TestFaultsNATRebinding(t *testing.T) {
	f := startFaults(t, wgtest.Impairment{}, "")
	old := f.relay.AddrA()
	n := max(*faultMiB, 32) << 20
	var rebound atomic.Bool
	f.download(t, n, 5*time.Minute, func(got int64) {
		if got >= int64(n)/4 && rebound.CompareAndSwap(false, true) {
			if err := f.relay.RebindA(); err != nil {
				t.Error(err)
			}
		}
	})
	fetchThrough(t, f.socks, "after the rebinding")
	s := f.relay.Stats().Side(wgtest.SideA)
	t.Logf("peer moved from %v to %v; %d datagrams reached the old port after the move, %d after wgbore's first to the new one", old, f.relay.AddrA(), s.Stale, s.StaleAfterNew)
	if s.Generations < 2 {
		t.Fatal("the relay never rebound")
	}
	if s.StaleAfterNew != 0 {
		t.Errorf("%d datagrams went to the old port after wgbore had used the new one", s.StaleAfterNew)
	}
}
