package catalog

// SetFailpoint makes every later Create of c call f after each provisioning
// step ("catalog", "objects", "migrate", "activate") and fail with its error.
func SetFailpoint(c *Catalog, f func(step string) error) { c.failpoint = f }

// SetNameSource makes every later Create of c draw tenant object names from
// f instead of NewObjectName.
func SetNameSource(c *Catalog, f func() string) { c.nameSource = f }
