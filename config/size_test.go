package config

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"64MiB": 64 << 20, "64mib": 64 << 20, "64M": 64 << 20, "64m": 64 << 20,
		"1GiB": 1 << 30, "2g": 2 << 30, "512KiB": 512 << 10, "100": 100, "100B": 100,
		" 32 MiB ": 32 << 20, "1TiB": 1 << 40,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
		if back, err := ParseSize(FormatSize(got)); err != nil || back != got {
			t.Errorf("FormatSize(%d) = %q reads back as %d, %v", got, FormatSize(got), back, err)
		}
	}
	for _, in := range []string{"", "MiB", "-1MiB", "1.5GiB", "64 MB s", "9999999999TiB", "0x10", "1e6"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestMemoryLimitKey(t *testing.T) {
	const minimalInterface = "[Interface]\nPrivateKey = GHuMbZ6SHfJmDUCJ1CnQT5JDb8P4QQNDL6BafNgGDX0=\n"
	cfg, err := Parse("wg0.conf", []byte(minimalInterface+"MemoryLimit = 64MiB\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Interface.MemoryLimit != 64<<20 {
		t.Fatalf("MemoryLimit = %d, want %d", cfg.Interface.MemoryLimit, 64<<20)
	}
	for _, bad := range []string{"MemoryLimit = 8MiB\n", "MemoryLimit = lots\n"} {
		_, err := Parse("wg0.conf", []byte(minimalInterface+bad), Options{})
		if err == nil || !strings.Contains(err.Error(), "wg0.conf:") || !strings.Contains(err.Error(), "MemoryLimit") {
			t.Errorf("%q: error %v, want one naming wg0.conf's line and MemoryLimit", bad, err)
		}
	}
}
