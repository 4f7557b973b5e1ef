// Package admin serves the operator's HTTP endpoints beside the proxy and
// the chat API: /metrics from a Prometheus gatherer, /healthz (the process
// is alive) and /readyz (the caller's readiness check passes; serve and
// chat use the catalog's Ping, so an unreachable control database answers
// 503). Extra handlers can be mounted on the same listener.
//
// It exists so that probes and scrapes have a listener of their own
// (--admin-listen, 127.0.0.1:9090 by default) and never compete with
// tenants for the client listener, and so that both commands that serve
// traffic expose the same endpoints the same way.
package admin
