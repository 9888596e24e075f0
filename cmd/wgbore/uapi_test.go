package main

import "testing"

// TestInterfaceName: the socket is named as wg-quick names interfaces,
// after the file, and a configuration from the environment, which has
// no file name, gets a fixed one rather than "$WGBORE_CONFIG".
func TestInterfaceName(t *testing.T) {
	for _, c := range []struct{ flag, path, want string }{
		{"", "/etc/wireguard/wg0.conf", "wg0"},
		{"", "office.conf", "office"},
		{"tun1", "/etc/wireguard/wg0.conf", "tun1"},
		{"", configEnvName, "wgbore"},
		{"side", configEnvName, "side"},
	} {
		if got := interfaceName(c.flag, c.path); got != c.want {
			t.Errorf("interfaceName(%q, %q) = %q, want %q", c.flag, c.path, got, c.want)
		}
	}
}
