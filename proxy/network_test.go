package proxy

import "github.com/wgbore/wgbore/netstack"

// The tunnel is the Network and Tunnel that wgbore serves in production.
var (
	_ Network = (*netstack.Net)(nil)
	_ Tunnel  = (*netstack.Net)(nil)
)
