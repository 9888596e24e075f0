package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/systemtest"
	"github.com/wgbore/wgbore/protocol"
)

func TestShowFormatsAsWG(t *testing.T) {
	now := time.Unix(1_700_000_000, 900_000_000)
	for _, tc := range []struct {
		secs int64
		want string
	}{
		{0, "Now"},
		{1, "1 second ago"},
		{62, "1 minute, 2 seconds ago"},
		{3600, "1 hour ago"},
		{2*86400 + 3*3600 + 1, "2 days, 3 hours, 1 second ago"},
		{366 * 86400, "1 year, 1 day ago"},
		{-5, "(System clock wound backward; connection problems may ensue.)"},
	} {
		// Only whole seconds count, as wg compares time(NULL) with tv_sec.
		hs := time.Unix(now.Unix()-tc.secs, 999_999_999)
		if got := ago(hs, now); got != tc.want {
			t.Errorf("ago(%d s) = %q, want %q", tc.secs, got, tc.want)
		}
	}
	for _, tc := range []struct {
		b    uint64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.00 KiB"},
		{1264, "1.23 KiB"},
		{5 << 20, "5.00 MiB"},
		{3 << 30, "3.00 GiB"},
		{5 << 40, "5.00 TiB"},
	} {
		if got := humanBytes(tc.b); got != tc.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tc.b, got, tc.want)
		}
	}
	if got := prettyTime(25); got != "25 seconds" {
		t.Errorf("prettyTime(25) = %q", got)
	}
}

func TestShowWithoutSocket(t *testing.T) {
	dir := systemtest.ShortTempDir(t)
	code, out, errOut := runCLI(t, "", "show", "-uapi-dir", dir, "wg0")
	path := filepath.Join(dir, "wg0.sock")
	if code != exitFailure || out != "" || strings.Count(errOut, "\n") != 1 ||
		!strings.Contains(errOut, path) || !strings.Contains(errOut, "-uapi-dir") {
		t.Fatalf("show of a missing socket: exit %d, stdout %q, stderr %q; want exit 1 and one line naming %s and -uapi-dir", code, out, errOut, path)
	}
	code, _, errOut = runCLI(t, "", "show", "-uapi-dir", dir)
	if code != exitFailure || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, dir) {
		t.Fatalf("show of an empty directory: exit %d, stderr %q", code, errOut)
	}
	for _, args := range [][]string{
		{"show", "wg0", "-uapi-dir", dir},
		{"show", "-uapi-dir", dir, "wg0", "private-key"},
		{"show", "-uapi-dir", dir, filepath.Join(dir, "wg0")},
	} {
		if code, _, errOut := runCLI(t, "", args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d: %s", args, code, exitUsage, errOut)
		}
	}
}

func TestUnknownUAPIGroupIsUsageError(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	conf := systemtest.WriteFile(t, t.TempDir(), "wg0.conf", "[Interface]\nPrivateKey = "+key.Base64()+"\n")
	code, _, errOut := runCLI(t, "", "up", "-c", conf, "-uapi-dir", systemtest.ShortTempDir(t), "-uapi-group", "no-such-group-wgbore")
	if code != exitUsage || !strings.Contains(errOut, `no group "no-such-group-wgbore"`) {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 2 naming the group", code, errOut)
	}
}
