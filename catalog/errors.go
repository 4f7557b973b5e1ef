package catalog

import "errors"

// ErrNotFound is returned (wrapped) by look-ups of a tenant, backend or user
// that the catalog does not hold.
var ErrNotFound = errors.New("not found")
