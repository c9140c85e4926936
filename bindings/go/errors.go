package mptrain

/*
#include <mptrain.h>
*/
import "C"

// Status says why a call failed (mpt_status without MPT_OK). Statuses are errors, so
// errors.Is(err, mptrain.StatusInvalidConfig) tells an *Error's kind.
type Status int

const (
	StatusInvalidArgument Status = C.MPT_ERR_INVALID_ARGUMENT
	StatusInvalidConfig   Status = C.MPT_ERR_INVALID_CONFIG
	StatusNotSupported    Status = C.MPT_ERR_NOT_SUPPORTED
	StatusIO              Status = C.MPT_ERR_IO
	StatusCorruptData     Status = C.MPT_ERR_CORRUPT_DATA
	StatusOutOfMemory     Status = C.MPT_ERR_OUT_OF_MEMORY
	StatusDistributed     Status = C.MPT_ERR_DISTRIBUTED
	StatusDevice          Status = C.MPT_ERR_DEVICE
	StatusNumerical       Status = C.MPT_ERR_NUMERICAL
	StatusInternal        Status = C.MPT_ERR_INTERNAL
)

// Error is the library's short text for the status ("invalid configuration", ...).
func (s Status) Error() string { return C.GoString(C.mpt_status_string(C.mpt_status(s))) }

// Error is a failed call: its status and the library's message (for a recipe, every
// problem as "file:line: section.key: rule").
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return e.Status.Error() + ": " + e.Message }

// Unwrap gives the status, for errors.Is.
func (e *Error) Unwrap() error { return e.Status }

func newError(status Status, message string) *Error {
	return &Error{Status: status, Message: message}
}
