package catalog

import (
	"errors"
	"fmt"
)

// ErrNotFound is returned (wrapped) by look-ups of a tenant, backend or user
// that the catalog does not hold.
var ErrNotFound = errors.New("not found")

// ErrUserNotFound is the ErrNotFound of a missing login of a tenant that
// exists, so that callers can tell the two apart; errors.Is(err,
// ErrNotFound) holds for it too.
var ErrUserNotFound = fmt.Errorf("user %w", ErrNotFound)

// ValidationError rejects input before anything is created. Its message is
// written for the operator who typed the command.
type ValidationError struct {
	Field  string
	Value  string
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("invalid %s %q: %s", e.Field, e.Value, e.Reason)
}

// LimitError refuses what would take a tenant past a limit of its plan,
// such as max_users. It unwraps to the ValidationError the operator reads,
// so it is a ValidationError to errors.As too.
type LimitError struct {
	Tenant string
	// Limit names the plan's limit: "max_users".
	Limit string
	Max   int
	err   *ValidationError
}

func (e *LimitError) Error() string { return e.err.Error() }

func (e *LimitError) Unwrap() error { return e.err }

// StateError refuses a lifecycle change the tenant's status does not allow,
// such as suspending a tenant that is still being provisioned.
type StateError struct {
	Tenant string
	Status Status
	Op     string
}

func (e *StateError) Error() string {
	return fmt.Sprintf("cannot %s tenant %q: it is %s", e.Op, e.Tenant, e.Status)
}
