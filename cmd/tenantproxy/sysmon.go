package main

import (
	"os"
	"strings"
	"syscall"
)

// sysmonAwake is the GODEBUG setting serve runs with. It keeps the Go
// runtime's monitor thread (sysmon) out of its deep sleep. Left alone,
// sysmon sleeps on a futex whenever every P is idle, which a proxy
// waiting on its sockets is between any two messages; the next system
// call (the relay's read of the client) must then wake it, and sysmon
// polls every 20 µs before it sleeps again. At one transaction at a time
// that is a futex wake, a few nanosleeps and a futex wait per
// transaction: 27% of the proxy's CPU samples under perf (pgbench-like
// point selects, one client) went to sysmon and 7% to waking it. Only
// the scheduler trace keeps sysmon from its deep sleep (runtime/proc.go,
// sysmon), and only through GODEBUG at process start, hence the
// re-exec. With a period of 2^31-1 ms (24.8 days) the trace itself
// prints a line only when the machine has been up that long, then once
// per period. Awake, sysmon backs off to a 10 ms sleep while it has
// nothing to retake: about 100 wake-ups a second, whatever the load.
const sysmonAwake = "schedtrace=2147483647"

// withSysmonAwake returns env with sysmonAwake added to GODEBUG, or ok
// false when GODEBUG already sets schedtrace: that is the operator's
// choice, and GODEBUG=schedtrace=0 turns the re-exec off.
func withSysmonAwake(env []string) (_ []string, ok bool) {
	out := make([]string, 0, len(env)+1)
	godebug := ""
	for _, kv := range env {
		if v, found := strings.CutPrefix(kv, "GODEBUG="); found {
			godebug = v
			continue
		}
		out = append(out, kv)
	}
	for _, setting := range strings.Split(godebug, ",") {
		if key, _, _ := strings.Cut(setting, "="); strings.TrimSpace(key) == "schedtrace" {
			return env, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+sysmonAwake), true
}

// execServeWithSysmonAwake replaces this process (same pid, same
// arguments) with one that has sysmonAwake, when args run serve and
// GODEBUG does not set schedtrace yet. It returns when there is nothing
// to do or the exec failed: serve then runs as it is, only slower.
func execServeWithSysmonAwake(args []string) {
	if !serves(args) {
		return
	}
	env, ok := withSysmonAwake(os.Environ())
	if !ok {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	syscall.Exec(exe, os.Args, env)
}

// serves reports whether args (without the program name) run serve.
func serves(args []string) bool {
	cmd, _, err := newRootCommand().Find(args)
	return err == nil && cmd.Name() == "serve"
}
