// Package metricstest reads wgbore's /metrics, /healthz and /readyz in
// tests. It parses /metrics with the Prometheus reference parser, so a
// test that passes proves the output is what a real scraper accepts, and
// it checks /readyz's status and body against each other. The endpoints
// are reached through an http.Handler: the service's own, in-process, or
// a running process's, through [Remote], so that both are checked alike.
package metricstest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Get serves one request to h and returns the status and body.
func Get(t testing.TB, h http.Handler, path string) (int, string, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String(), rec.Header()
}

// Parse checks /metrics with the reference parser and returns its
// families by name, and the body.
func Parse(t testing.TB, h http.Handler) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	code, body, hdr := Get(t, h, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d: %s", code, body)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("/metrics Content-Type = %q", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return fams, body
}

// Value returns the value of the sample of family name whose labels
// include want, failing the test if there is none.
func Value(t testing.TB, fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == want[i] && l.GetValue() == want[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		default:
			return m.GetUntyped().GetValue()
		}
	}
	t.Fatalf("family %s has no sample with labels %v", name, want)
	return 0
}

// Readiness is /readyz's JSON body, decoded here by its field names, as
// a probe or a person reads it.
type Readiness struct {
	Ready   bool     `json:"ready"`
	Basis   string   `json:"basis"`
	Reasons []string `json:"reasons"`
}

// Readyz asks h and decodes the answer, checking that the status and
// the body agree.
func Readyz(t testing.TB, h http.Handler) Readiness {
	t.Helper()
	code, body, hdr := Get(t, h, "/readyz")
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("/readyz Content-Type = %q", ct)
	}
	var r Readiness
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	if want := map[bool]int{true: 200, false: 503}[r.Ready]; code != want {
		t.Fatalf("/readyz = %d with ready=%v", code, r.Ready)
	}
	if r.Ready != (len(r.Reasons) == 0) {
		t.Fatalf("/readyz ready=%v with reasons %q", r.Ready, r.Reasons)
	}
	return r
}

// WaitReady polls /readyz until the CheckAlive rule says want.
func WaitReady(t testing.TB, h http.Handler, want bool, within time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := Readyz(t, h)
		if r.Ready == want && r.Basis == "check_alive" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: /readyz still %+v after %v", what, r, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Remote is the [Metrics] endpoints of a running up or serve
// ("http://127.0.0.1:port") as a Handler, so Parse, Readyz and WaitReady
// check a live process as they check the service's own handler.
type Remote string

func (base Remote) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// One connection per request, closed after it: a Transport per call
	// would otherwise leave each connection open for the server to keep.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 10 * time.Second}
	res, err := client.Get(string(base) + r.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer res.Body.Close()
	w.Header().Set("Content-Type", res.Header.Get("Content-Type"))
	w.WriteHeader(res.StatusCode)
	io.Copy(w, res.Body)
}
