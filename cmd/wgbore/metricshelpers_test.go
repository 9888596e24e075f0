package main

import "github.com/wgbore/wgbore/cmd/internal/metricstest"

// The tests that read a running process's /metrics and /readyz use
// metricstest's helpers, which the service's own tests share, under the
// names they have always had here.
var (
	parseMetrics    = metricstest.Parse
	sampleValue     = metricstest.Value
	readyz          = metricstest.Readyz
	waitReadyzState = metricstest.WaitReady
)

type remoteEndpoints = metricstest.Remote
