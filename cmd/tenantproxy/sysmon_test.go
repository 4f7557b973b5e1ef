package main

import (
	"slices"
	"testing"
)

func TestWithSysmonAwakeAddsToGODEBUGUnlessSchedtraceIsSet(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want []string // nil: left alone
	}{
		{"no GODEBUG", []string{"PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=" + sysmonAwake}},
		{"other settings kept", []string{"GODEBUG=madvdontneed=1", "HOME=/"}, []string{"HOME=/", "GODEBUG=madvdontneed=1," + sysmonAwake}},
		{"empty GODEBUG", []string{"GODEBUG="}, []string{"GODEBUG=" + sysmonAwake}},
		{"opted out", []string{"GODEBUG=schedtrace=0"}, nil},
		{"operator's trace", []string{"GODEBUG=gctrace=1, schedtrace=1000"}, nil},
		{"after the re-exec", []string{"GODEBUG=" + sysmonAwake}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := withSysmonAwake(tc.env)
			if tc.want == nil {
				if ok || !slices.Equal(got, tc.env) {
					t.Fatalf("withSysmonAwake(%q) = %q, %v; want it left alone", tc.env, got, ok)
				}
				return
			}
			if !ok || !slices.Equal(got, tc.want) {
				t.Fatalf("withSysmonAwake(%q) = %q, %v; want %q, true", tc.env, got, ok, tc.want)
			}
		})
	}
}

func TestServesFindsTheServeCommandBehindGlobalFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"serve", "--listen", "127.0.0.1:6432"}, true},
		{[]string{"--log-level", "warn", "serve"}, true},
		{[]string{"--config=proxy.yaml", "serve", "--pool-mode", "transaction"}, true},
		{[]string{"bench", "--proxy-binary", "serve"}, false},
		{[]string{"version"}, false},
		{nil, false},
	} {
		if got := serves(tc.args); got != tc.want {
			t.Errorf("serves(%q) = %v; want %v", tc.args, got, tc.want)
		}
	}
}
