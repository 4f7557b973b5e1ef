package pool

import (
	"time"
)

// Stats is a snapshot of every pool, for the admin console (package
// console): pool-wide counts, each tenant's share, and every server
// connection.
type Stats struct {
	Pools   []PoolStats
	Tenants []TenantShare
	Servers []ServerConn
}

// PoolStats counts the connections of one pool key.
type PoolStats struct {
	Addr, Database, User string
	// Open is every connection holding a slot (idle, in use, parked or
	// being dialled); Idle those waiting in the pool.
	Open, Idle int
	// Waiting are the acquires queued for a connection.
	Waiting int
}

// TenantShare is one tenant's part of one pool: the connections it holds
// and its acquires waiting, with how long the oldest has waited.
type TenantShare struct {
	Tenant, Database, User string
	Held, Waiting          int
	MaxWait                time.Duration
	// Cap is the most it may hold at once: the pool's share per tenant
	// or its own lower limit (0: none).
	Cap int
}

// ServerConn is one open server connection.
type ServerConn struct {
	Addr, Database, User string
	// State is "active" (held), "idle", or "being_canceled" (given back
	// while a cancel request to it is in flight).
	State string
	// Tenant holds it; "" when idle or between a session's holders.
	Tenant    string
	PID       uint32
	LocalAddr string
	// Created is when it was dialled, Since when it was last given back.
	Created, Since time.Time
}

var stateNames = map[connState]string{stateActive: "active", stateIdle: "idle", stateParked: "being_canceled"}

// Stats takes the snapshot; each pool is locked only while it is read.
func (m *Manager) Stats() Stats {
	var st Stats
	now := time.Now()
	for _, p := range m.allPools() {
		p.mu.Lock()
		st.Pools = append(st.Pools, PoolStats{Addr: p.key.addr, Database: p.key.database, User: p.key.user,
			Open: p.open, Idle: len(p.idle), Waiting: p.waiting})
		for _, tq := range p.tenants {
			if tq.held == 0 && len(tq.waiters) == 0 {
				continue
			}
			share := TenantShare{Tenant: tq.name, Database: p.key.database, User: p.key.user, Held: tq.held, Waiting: len(tq.waiters), Cap: p.capLocked(tq)}
			if len(tq.waiters) > 0 {
				share.MaxWait = now.Sub(tq.waiters[0].since)
			}
			st.Tenants = append(st.Tenants, share)
		}
		for c := range p.all {
			sc := ServerConn{Addr: p.key.addr, Database: p.key.database, User: p.key.user, State: stateNames[c.state],
				PID: c.pid, Created: c.createdAt, Since: c.idleSince}
			if c.holder != nil {
				sc.Tenant = c.holder.name
			}
			if c.netConn != nil && c.netConn.LocalAddr() != nil {
				sc.LocalAddr = c.netConn.LocalAddr().String()
			}
			st.Servers = append(st.Servers, sc)
		}
		p.mu.Unlock()
	}
	return st
}

// Reconnect makes every pool of database (every pool when database is
// empty) open fresh server connections: idle ones are closed now, those in
// use when they are given back. The console's RECONNECT runs it, e.g.
// after a backend's settings or address changed.
func (m *Manager) Reconnect(database string) {
	all := func(*Conn) bool { return true }
	for _, p := range m.allPools() {
		if database != "" && p.key.database != database {
			continue
		}
		p.mu.Lock()
		p.gen++
		p.mu.Unlock()
		p.evict(all, all, 0)
	}
}

// Config is the configuration the Manager runs with, defaults applied.
func (m *Manager) Config() Config { return *m.cfg.Load() }

func (m *Manager) allPools() []*pool {
	m.mu.Lock()
	defer m.mu.Unlock()
	pools := make([]*pool, 0, len(m.pools))
	for _, p := range m.pools {
		pools = append(pools, p)
	}
	return pools
}
