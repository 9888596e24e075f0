package service

import (
	"testing"

	"github.com/wgbore/wgbore/cmd/internal/membudget"
	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/proxy/egress"
)

// TestMaxFlows: the cap on all peers' flows comes from MaxFlows, else
// from FlowMemory, else from netstack's default, scaled to a memory
// budget when there is one.
func TestMaxFlows(t *testing.T) {
	small := membudget.New(64<<20, 32<<20)
	for _, c := range []struct {
		name   string
		egress *config.Egress
		budget *membudget.Budget
		want   int
	}{
		{"no section", nil, nil, egress.DefaultMaxFlows},
		{"MaxFlows", &config.Egress{MaxFlows: 300, FlowMemory: 1 << 30}, small, 300},
		{"FlowMemory", &config.Egress{FlowMemory: 256 << 20}, nil, 256 << 20 / flowCost},
		{"budget", &config.Egress{}, small, small.Connections(egress.DefaultMaxFlows)},
	} {
		if got := maxFlows(c.egress, c.budget); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	if got := maxFlows(nil, small); got >= egress.DefaultMaxFlows {
		t.Errorf("a 64 MiB budget leaves the default %d flows", got)
	}
}
