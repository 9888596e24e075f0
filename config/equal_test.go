package config_test

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/wgbore/wgbore/config"
)

// equalFieldsHold checks a section type's Equal against every field: a
// copy with Pos moved says the same, and a copy with any other field
// changed does not. It walks the fields by reflection, so a field added
// to the type later and forgotten in Equal fails here.
func equalFieldsHold[T interface{ Equal(T) bool }](t *testing.T, base T) {
	t.Helper()
	name := reflect.TypeFor[T]().Name()
	if !base.Equal(base) {
		t.Fatalf("%s: a section differs from itself", name)
	}
	for i := range reflect.TypeFor[T]().NumField() {
		changed := base
		f := reflect.ValueOf(&changed).Elem().Field(i)
		field := reflect.TypeFor[T]().Field(i).Name
		if field == "Pos" {
			f.Set(reflect.ValueOf(config.Position{File: "other.conf", Line: 99}))
			if !base.Equal(changed) || !changed.Equal(base) {
				t.Errorf("%s: moving the section changes what it says", name)
			}
			continue
		}
		if !changeValue(f) {
			t.Errorf("%s.%s: the test cannot change a field of kind %s; teach changeValue", name, field, f.Kind())
			continue
		}
		if base.Equal(changed) || changed.Equal(base) {
			t.Errorf("%s.%s: Equal does not see a change to it", name, field)
		}
	}
}

// changeValue makes v different from what it was, by kind; it reports
// false for a kind it does not know.
func changeValue(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.String:
		v.SetString(v.String() + "x")
	case reflect.Int, reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.Slice:
		v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem())))
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for it := v.MapRange(); it.Next(); {
			m.SetMapIndex(it.Key(), it.Value())
		}
		m.SetMapIndex(reflect.ValueOf("added.wg."), reflect.Zero(v.Type().Elem()))
		v.Set(m)
	default:
		return false
	}
	return true
}

func TestSectionEqualSeesEveryField(t *testing.T) {
	pos := config.Position{File: "wg0.conf", Line: 3}
	equalFieldsHold(t, config.Socks5{Pos: pos, BindAddress: "127.0.0.1:1080", Username: "u", Password: "p", MaxConnections: 5, DialTimeout: time.Second})
	equalFieldsHold(t, config.HTTP{Pos: pos, BindAddress: "127.0.0.1:8080", Username: "u", Password: "p", CertFile: "c.pem", KeyFile: "k.pem", MaxConnections: 5, DialTimeout: time.Second})
	equalFieldsHold(t, config.TCPClientTunnel{Pos: pos, BindAddress: "127.0.0.1:2222", Target: "10.0.0.2:22", MaxConnections: 5, IdleTimeout: time.Minute})
	equalFieldsHold(t, config.TCPServerTunnel{Pos: pos, ListenPort: 80, Target: "127.0.0.1:8080", MaxConnections: 5, IdleTimeout: time.Minute})
	equalFieldsHold(t, config.UDPProxyTunnel{Pos: pos, BindAddress: "127.0.0.1:5353", Target: "10.0.0.2:53", InactivityTimeout: time.Minute})
	equalFieldsHold(t, config.UDPServerTunnel{Pos: pos, ListenPort: 53, Target: "127.0.0.1:53", InactivityTimeout: time.Minute})
	equalFieldsHold(t, config.Egress{
		Pos: pos, Allow: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, Deny: []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24")},
		HostAddresses: []netip.Addr{netip.MustParseAddr("203.0.113.7")}, MaxFlowsPerPeer: 10, MaxFlows: 100, FlowMemory: 64 << 20, UDPTimeout: time.Minute,
	})
	equalFieldsHold(t, config.DNSServer{
		Pos: pos, Upstream: []netip.AddrPort{netip.MustParseAddrPort("1.1.1.1:53")},
		Records: map[string][]netip.Addr{"demo.wg.": {netip.MustParseAddr("10.0.0.1")}},
	})
}

// A record's addresses count, not only its name.
func TestDNSServerEqualComparesAddresses(t *testing.T) {
	a := config.DNSServer{Records: map[string][]netip.Addr{"demo.wg.": {netip.MustParseAddr("10.0.0.1")}}}
	b := config.DNSServer{Records: map[string][]netip.Addr{"demo.wg.": {netip.MustParseAddr("10.0.0.2")}}}
	if a.Equal(b) {
		t.Error("records with other addresses compare equal")
	}
}

func TestSecretEqual(t *testing.T) {
	for _, c := range []struct {
		a, b config.Secret
		want bool
	}{
		{"", "", true},
		{"hunter2", "hunter2", true},
		{"hunter2", "hunter3", false},
		{"hunter2", "hunter22", false},
		{"", "x", false},
	} {
		if got := c.a.Equal(c.b); got != c.want {
			t.Errorf("Secret.Equal: got %v, want %v for a pair of length %d and %d", got, c.want, len(c.a), len(c.b))
		}
	}
}
