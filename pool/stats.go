package pool

import (
	"time"
)

// Stats is a snapshot of every pool, for the admin console (package
// console): pool-wide counts, each tenant's share, and the idle
// connections one by one. Connections in use are counted, not listed:
// their holder owns them and the pool does not track them.
type Stats struct {
	Pools   []PoolStats
	Tenants []TenantShare
	Idle    []IdleConn
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
}

// IdleConn is an idle server connection.
type IdleConn struct {
	Addr, Database, User string
	PID                  uint32
	LocalAddr            string
	Created, IdleSince   time.Time
}

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
			share := TenantShare{Tenant: tq.name, Database: p.key.database, User: p.key.user, Held: tq.held, Waiting: len(tq.waiters)}
			if len(tq.waiters) > 0 && !tq.waiters[0].since.IsZero() {
				share.MaxWait = now.Sub(tq.waiters[0].since)
			}
			st.Tenants = append(st.Tenants, share)
		}
		for _, c := range p.idle {
			ic := IdleConn{Addr: p.key.addr, Database: p.key.database, User: p.key.user, PID: c.pid, Created: c.createdAt, IdleSince: c.idleSince}
			if c.netConn != nil && c.netConn.LocalAddr() != nil {
				ic.LocalAddr = c.netConn.LocalAddr().String()
			}
			st.Idle = append(st.Idle, ic)
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
func (m *Manager) Config() Config { return m.cfg }

func (m *Manager) allPools() []*pool {
	m.mu.Lock()
	defer m.mu.Unlock()
	pools := make([]*pool, 0, len(m.pools))
	for _, p := range m.pools {
		pools = append(pools, p)
	}
	return pools
}
