package config_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/config"
)

func TestMetricsSection(t *testing.T) {
	for _, tc := range []struct{ bind, line string }{
		{"127.0.0.1:9586", "BindAddress = 127.0.0.1:9586"},
		{":9586", "bindaddress = :9586"},
		{"[::1]:9586", "BindAddress = [::1]:9586"},
		{"localhost:9586", "BindAddress = localhost:9586"},
	} {
		src := "[Interface]\nPrivateKey = " + privA + "\n\n[metrics]\n" + tc.line + "\n"
		c, err := config.Parse("wg0.conf", []byte(src), config.Options{})
		if err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		want := &config.Metrics{BindAddress: tc.bind, Pos: config.Position{File: "wg0.conf", Line: 4}}
		if !reflect.DeepEqual(c.Metrics, want) {
			t.Fatalf("%s: Metrics = %+v, want %+v", tc.line, c.Metrics, want)
		}
		text := c.Render(config.RenderOptions{IncludeSecrets: true})
		if !strings.Contains(text, "[Metrics]\nBindAddress = "+tc.bind+"\n") {
			t.Fatalf("render lacks the section:\n%s", text)
		}
		again, err := config.Parse("render.conf", []byte(text), config.Options{})
		if err != nil {
			t.Fatal(err)
		}
		assertSameConfig(t, again, c)
	}

	plain, err := config.Parse("wg0.conf", []byte("[Interface]\nPrivateKey = "+privA+"\n"), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if plain.Metrics != nil {
		t.Fatalf("Metrics = %+v; want nil without the section", plain.Metrics)
	}
}

// TestMetricsFromEnv: a container sets the address without editing the
// mounted file.
func TestMetricsFromEnv(t *testing.T) {
	src := "[Interface]\nPrivateKey = " + privA + "\n[Metrics]\nBindAddress = $METRICS_ADDR\n"
	env := func(name string) (string, bool) {
		if name == "METRICS_ADDR" {
			return "0.0.0.0:9586", true
		}
		return "", false
	}
	c, err := config.Parse("wg0.conf", []byte(src), config.Options{LookupEnv: env})
	if err != nil {
		t.Fatal(err)
	}
	if c.Metrics == nil || c.Metrics.BindAddress != "0.0.0.0:9586" {
		t.Fatalf("Metrics = %+v", c.Metrics)
	}
}

func TestMetricsSectionErrors(t *testing.T) {
	src := "[Interface]\nPrivateKey = " + privA + "\n" + // 1-2
		"[Metrics]\n" + // 3
		"BindAddress = 127.0.0.1\n" + // 4
		"[Metrics]\n" + // 5
		"BindAddress = 127.0.0.1:9586\n" + // 6
		"[Metrics]\n" + // 7
		"[Metrics]\n" + // 8
		"Listen = :9586\n" // 9
	_, err := config.Parse("wg0.conf", []byte(src), config.Options{})
	want := []string{
		`wg0.conf:4: BindAddress: "127.0.0.1": want IPv4:port, [IPv6]:port or hostname:port`,
		"wg0.conf:5: [Metrics] appears twice (first on line 3)",
		"wg0.conf:7: [Metrics] appears twice (first on line 3)",
		"wg0.conf:8: [Metrics] appears twice (first on line 3)",
		`wg0.conf:9: unknown key "Listen" in [Metrics]`,
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Fatalf("errors:\n%v\nwant:\n%s", err, strings.Join(want, "\n"))
	}

	_, err = config.Parse("wg0.conf", []byte("[Interface]\nPrivateKey = "+privA+"\n[Metrics]\n# none\n"), config.Options{})
	if err == nil || err.Error() != "wg0.conf:3: [Metrics] has no BindAddress" {
		t.Fatalf("err = %v", err)
	}
}
