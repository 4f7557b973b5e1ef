//go:build !race

package test

// raceEnabled: see txpool_race_test.go.
const raceEnabled = false
