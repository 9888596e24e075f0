package proxy

import "github.com/wgbore/wgbore/netstack"

// The tunnel's network is what the proxies serve in production; this keeps
// the two from drifting apart without the proxy code importing netstack.
var _ Network = (*netstack.Net)(nil)
