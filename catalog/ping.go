package catalog

import "context"

// Ping reports whether the control database answers; the proxy is ready
// only while it does, since new connections cannot be routed without it.
func (c *Catalog) Ping(ctx context.Context) error {
	return c.db.Ping(ctx)
}
