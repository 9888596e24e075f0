package config_test

import (
	"bytes"
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/config"
)

// FuzzParse checks that no input panics the parser, that every error is
// positioned inside the file, that every section's Pos is a header line
// of it, and that whatever parses renders back to
// text that parses to the same config. Seeds come from the tests and from
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		providerFile,
		wireproxySample,
		wireproxyMultiPeer,
		realKeys.Replace(wireproxyMultiPeer),
		uncensor(wireproxyHealth),
		wireproxyInclude,
		"[Interface]\nPrivateKey = " + privA + "\n[Socks5]\nBindAddress = :1\nPassword = \"a#b\" ; c\nUsername = '\"x'\n",
		"[Interface]\nPrivateKey = " + privA + "\n[http]\nBindAddress = 127.0.0.1:8080\nUsername = $$x\nPassword = $X\n",
		"[Interface]\nPrivateKey = " + privA + "\nAddress = 10.0.0.1, fd00::1/64\nDNS = 1.1.1.1, example.com\nCheckAlive = 1.1.1.1\nCheckAliveInterval = 3\n" +
			"[Peer]\nPublicKey = " + pubA + "\nEndpoint = [::1]:1\nPersistentKeepalive = off\nAllowedIPs = ::/0\n[Resolve]\nResolveStrategy = ipv4\n",
	} {
		f.Add([]byte(s))
	}
	opts := config.Options{
		LookupEnv: func(string) (string, bool) { return "", false },
		ReadFile: func(name string) ([]byte, error) {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		},
		Stat: func(name string) (fs.FileInfo, error) { return nil, fs.ErrNotExist },
	}
	utf8BOM := []byte{0xEF, 0xBB, 0xBF}
	f.Fuzz(func(t *testing.T, src []byte) {
		c, err := config.Parse("fuzz.conf", src, opts)
		if err != nil {
			var errs config.Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v is not a non-empty config.Errors", err, err)
			}
			lines := strings.Count(string(src), "\n") + 1
			for _, e := range errs {
				if e.File != "fuzz.conf" || e.Line < 0 || e.Line > lines || e.Msg == "" {
					t.Fatalf("error out of place: %+v (file has %d lines)", e, lines)
				}
				if strings.Contains(e.Error(), "\n") {
					t.Fatalf("error spans lines: %q", e.Error())
				}
			}
			return
		}
		srcLines := strings.Split(string(src), "\n")
		for _, pos := range sectionPositions(c) {
			if pos.File != "fuzz.conf" || pos.Line < 1 || pos.Line > len(srcLines) ||
				!strings.HasPrefix(strings.TrimSpace(string(bytes.TrimPrefix([]byte(srcLines[pos.Line-1]), utf8BOM))), "[") {
				t.Fatalf("section position %+v is not a header of the input %q", pos, src)
			}
		}
		text := c.Render(config.RenderOptions{IncludeSecrets: true})
		again, err := config.Parse("fuzz.conf", []byte(text), opts)
		if err != nil {
			t.Fatalf("render does not parse: %v\n--- input ---\n%q\n--- render ---\n%s", err, src, text)
		}
		if !reflect.DeepEqual(contentOnly(again), contentOnly(c)) {
			t.Fatalf("round trip changed the config\n--- input ---\n%q\n--- render ---\n%s\n--- again ---\n%s",
				src, text, again.Render(config.RenderOptions{IncludeSecrets: true}))
		}
		if redacted := c.Render(config.RenderOptions{}); strings.Contains(redacted, c.Interface.PrivateKey.Base64()) {
			t.Fatalf("redacted render shows the private key:\n%s", redacted)
		}
	})
}
