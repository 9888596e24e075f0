//go:build race

package netstack

// raceEnabled: the race detector makes sync.Pool drop items at random,
// so what comes from a pool is sometimes allocated.
const raceEnabled = true
