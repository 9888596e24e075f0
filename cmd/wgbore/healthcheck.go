package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

const healthcheckUsage = `Usage: wgbore healthcheck [-url URL] [-timeout D]

Gets URL and exits 0 if it answers 200 OK, 1 otherwise, printing the
status and the start of the body. It is for a Docker HEALTHCHECK in an
image that has no curl (distroless): point it at the [Metrics]
BindAddress of a running up or serve.

Examples:
  wgbore healthcheck
  wgbore healthcheck -url http://127.0.0.1:9586/readyz
  # Dockerfile:
  #   HEALTHCHECK CMD ["/wgbore", "healthcheck"]
`

// defaultHealthcheckURL is /healthz on the conventional metrics port.
const defaultHealthcheckURL = "http://127.0.0.1:9586/healthz"

// healthcheckBodyLimit bounds what is read and printed of the answer:
// /readyz explains itself in a line or two, and a probe pointed at the
// wrong server must not print a page.
const healthcheckBodyLimit = 4 << 10

func cmdHealthcheck(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "healthcheck", healthcheckUsage)
	url := fs.String("url", defaultHealthcheckURL, "`URL` to get")
	timeout := fs.Duration("timeout", 3*time.Second, "how long the whole request may take")
	if code, done := parseFlags(e, fs, args); done {
		return code
	}
	if err := healthcheck(ctx, *url, *timeout, e.stdout); err != nil {
		fmt.Fprintf(e.stderr, "wgbore healthcheck: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// healthcheck gets url and fails unless it answers 200; the body of a
// 200 goes to out, so readyz's JSON shows in docker inspect.
func healthcheck(ctx context.Context, url string, timeout time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("bad -url: %w", err)
	}
	// No proxy from the environment: the probe is for this host's own
	// listener, and HTTP_PROXY set for the tunnel's users must not
	// divert it.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	res, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, healthcheckBodyLimit))
	if err != nil {
		return fmt.Errorf("get %s: reading the answer: %w", url, err)
	}
	text := strings.TrimSpace(string(body))
	if res.StatusCode != http.StatusOK {
		if text == "" {
			return fmt.Errorf("get %s: %s", url, res.Status)
		}
		return fmt.Errorf("get %s: %s: %s", url, res.Status, text)
	}
	if text != "" {
		fmt.Fprintln(out, text)
	}
	return nil
}
