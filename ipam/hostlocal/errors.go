package hostlocal

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// Error codes this package returns besides the spec's well-known ones
// (types.ErrInvalidEnvironmentVariables and friends).
const (
	// ErrNotAvailable is the spec's "plugin not available" code, returned by
	// Status when an ADD could not be served.
	ErrNotAvailable uint = 50
	// ErrAddressExhausted means a range set has no free address.
	ErrAddressExhausted uint = 100
	// ErrDuplicateAllocation means the attachment already holds an address in
	// one of the network's range sets: the spec forbids a second ADD.
	ErrDuplicateAllocation uint = 101
	// ErrAddressInUse means a statically requested address belongs to
	// another attachment.
	ErrAddressInUse uint = 102
	// ErrAddressNotReserved means CHECK found an address of the attachment
	// no longer reserved for it.
	ErrAddressNotReserved uint = 103
)

// newError builds the *types.Error every verb returns; the message names the
// offending key and value so an operator can fix the config from it alone.
func newError(code uint, format string, args ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, args...), "")
}
