//go:build !linux

package proxy

// Parking needs epoll: elsewhere an idle transaction-mode client waits in
// a blocked read on its own goroutine.
const parkingSupported = false

type parking struct{}

func (*parking) park(*txSession) bool { return false }
func (*parking) unpark(*txSession)    {}
func (*parking) stop()                {}
