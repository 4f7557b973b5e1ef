//go:build race

package test

// raceEnabled scales the largest transaction-pooling test down under the
// race detector, whose limit of 8128 goroutines 2,000 clients (each with
// goroutines in pgx and two in the proxy) would exceed.
const raceEnabled = true
