package service

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/egress"
)

// BenchmarkWriteMetrics renders one scrape of a server with many peers,
// each with its flows: the work a scrape costs the process, which a
// server with thousands of peers pays on every scrape.
func BenchmarkWriteMetrics(b *testing.B) {
	const n = 2000
	peers := make([]protocol.PeerStatus, n)
	flows := make(map[protocol.PublicKey]egress.FlowCounts, n)
	for i := range peers {
		rand.Read(peers[i].PublicKey[:])
		peers[i].RxBytes, peers[i].TxBytes = uint64(i)<<20, uint64(i)<<18
		peers[i].LastHandshake = time.Unix(1_800_000_000+int64(i), 0)
		peers[i].HandshakesCompleted = uint64(i)
		flows[peers[i].PublicKey] = egress.FlowCounts{Open: i % 50, RefusedPeerCap: uint64(i % 3)}
	}
	o := newObserver(observerConfig{
		Peers: func() []protocol.PeerStatus { return append([]protocol.PeerStatus(nil), peers...) },
		Stats: func() protocol.StatsSnapshot { return protocol.StatsSnapshot{} },
		Flows: func() map[protocol.PublicKey]egress.FlowCounts { return flows },
	})
	b.ReportAllocs()
	var size int
	for b.Loop() {
		size = o.scrape().Len()
	}
	b.ReportMetric(float64(size), "bytes/scrape")
}
