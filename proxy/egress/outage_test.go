package egress

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// TestEgressUploadAfterPausesAndOutage: a client on gVisor's TCP with
// its defaults (RACK on, timestamps offered, as wireguard-go's netstack
// ships it) uploads 16 MiB through our server on a keep-alive connection
// on which both ends paused first: the host's server while it prepared
// an answer, then the client before its next request. Early in the
// upload the path goes dark for 2 s. The upload must end within 30 s of
// the path's return, as it does without the pauses. Our acknowledgements
// once took the two pauses for a sender stalled while catching up and
// echoed the newest timestamp, and the client then crawled one segment
// per retransmission timeout.
func TestEgressUploadAfterPausesAndOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode: an upload through a 2 s outage")
	}
	ourKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	clientKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	n := openNet(t, ourKey, clientKey.PublicKey(), "", netip.PrefixFrom(peersite.TheirV4, 32))
	if _, err := Start(n, Config{Policy: allowHostLoopback()}); err != nil {
		t.Fatal(err)
	}
	relay, err := wgtest.NewRelay(wgtest.RelayConfig{B: netip.AddrPortFrom(hostLoopback, n.LocalPort()), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	client := peersite.StartClient(t, ourKey.PublicKey(), peersite.Options{PrivateKey: clientKey, Endpoint: relay.AddrA().String()})

	const think = 500 * time.Millisecond
	mux := http.NewServeMux()
	mux.HandleFunc("/think", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(think)
		w.Write(peersite.Body(64 << 10))
	})
	mux.HandleFunc("/sha256", hashBody)
	l := hostListen(t, hostLoopback)
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	tr := &http.Transport{DialContext: client.DialContext}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Minute}

	resp, err := hc.Get(fmt.Sprintf("http://%s/think", l.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	const upSize = 16 << 20 // longer than the wait for the outage, even unhindered
	body := peersite.Body(upSize)
	want := fmt.Sprintf("%x %d", sha256.Sum256(body), upSize)
	time.Sleep(think) // the client's pause

	const outage = 2 * time.Second
	back := make(chan time.Time, 1)
	go func() {
		time.Sleep(50 * time.Millisecond) // the upload is under way
		relay.Blackout(outage)
		back <- time.Now().Add(outage)
	}()
	resp, err = hc.Post(fmt.Sprintf("http://%s/sha256", l.Addr()), "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	returned := <-back
	if string(answer) != want {
		t.Fatalf("the host saw %q, want %q", answer, want)
	}
	if after := time.Since(returned); after > 30*time.Second {
		t.Errorf("the upload ended %v after the path returned from a %v outage, more than 30 s", after.Round(time.Millisecond), outage)
	} else {
		t.Logf("the upload ended %v after the path returned", after.Round(time.Millisecond))
	}
	if st := relay.Stats().Dir(wgtest.AToB); st.DroppedBlackout == 0 {
		t.Errorf("the outage dropped nothing of the upload: %+v", st)
	}
}
