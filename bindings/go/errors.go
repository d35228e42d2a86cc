package commvq

/*
#include "api.h"
*/
import "C"

import (
	"errors"
	"fmt"
)

// Status is a commvq_status_t. It is an error, so each status constant is a
// sentinel that errors.Is matches against any failure with that status, the
// way syscall.Errno works:
//
//	if errors.Is(err, commvq.ErrCapacity) { /* evict, retry */ }
type Status int32

const (
	OK                  Status = C.COMMVQ_OK
	ErrInvalidArgument  Status = C.COMMVQ_ERR_INVALID_ARGUMENT
	ErrShapeMismatch    Status = C.COMMVQ_ERR_SHAPE_MISMATCH
	ErrOutOfRange       Status = C.COMMVQ_ERR_OUT_OF_RANGE
	ErrInvalidState     Status = C.COMMVQ_ERR_INVALID_STATE
	ErrCapacity         Status = C.COMMVQ_ERR_CAPACITY
	ErrOutOfMemory      Status = C.COMMVQ_ERR_OUT_OF_MEMORY
	ErrIO               Status = C.COMMVQ_ERR_IO
	ErrFormat           Status = C.COMMVQ_ERR_FORMAT
	ErrCorrupt          Status = C.COMMVQ_ERR_CORRUPT
	ErrCodebookMismatch Status = C.COMMVQ_ERR_CODEBOOK_MISMATCH
	ErrNotSupported     Status = C.COMMVQ_ERR_NOT_SUPPORTED
	ErrCUDA             Status = C.COMMVQ_ERR_CUDA
	ErrCancelled        Status = C.COMMVQ_ERR_CANCELLED
	ErrInternal         Status = C.COMMVQ_ERR_INTERNAL
)

// The names commvq_status_string gives, known without a loaded library (a
// status must name itself before Open succeeds); the golden test checks
// them against the library's.
var statusNames = map[Status]string{
	OK: "COMMVQ_OK", ErrInvalidArgument: "COMMVQ_ERR_INVALID_ARGUMENT", ErrShapeMismatch: "COMMVQ_ERR_SHAPE_MISMATCH",
	ErrOutOfRange: "COMMVQ_ERR_OUT_OF_RANGE", ErrInvalidState: "COMMVQ_ERR_INVALID_STATE",
	ErrCapacity: "COMMVQ_ERR_CAPACITY", ErrOutOfMemory: "COMMVQ_ERR_OUT_OF_MEMORY", ErrIO: "COMMVQ_ERR_IO",
	ErrFormat: "COMMVQ_ERR_FORMAT", ErrCorrupt: "COMMVQ_ERR_CORRUPT",
	ErrCodebookMismatch: "COMMVQ_ERR_CODEBOOK_MISMATCH", ErrNotSupported: "COMMVQ_ERR_NOT_SUPPORTED",
	ErrCUDA: "COMMVQ_ERR_CUDA", ErrCancelled: "COMMVQ_ERR_CANCELLED", ErrInternal: "COMMVQ_ERR_INTERNAL",
}

// Error is the status's name, e.g. "COMMVQ_ERR_CAPACITY".
func (s Status) Error() string {
	if name, ok := statusNames[s]; ok {
		return name
	}
	return fmt.Sprintf("COMMVQ_STATUS_%d", int32(s))
}

// Error is a failed call: its status, the status's name and the library's
// message (or the binding's, for what it refuses before calling).
type Error struct {
	Status  Status
	Name    string
	Message string
}

func (e *Error) Error() string { return e.Name + ": " + e.Message }

// Unwrap gives the status, so errors.Is(err, commvq.ErrIO) and
// errors.As(err, &status) see through an *Error.
func (e *Error) Unwrap() error { return e.Status }

var (
	// ErrClosed: a Codebook or Cache used after Close.
	ErrClosed = errors.New("commvq: used after Close")
	// ErrLoad: Open found no usable libcommvq (no such file, a missing
	// symbol, another major version); the error says which.
	ErrLoad = errors.New("commvq: cannot load libcommvq")
)

// refuse is the *Error of a call the binding refuses before reaching the
// library (a buffer of the wrong size, say), with the status the library
// would use.
func refuse(status Status, format string, args ...any) error {
	return &Error{Status: status, Name: status.Error(), Message: fmt.Sprintf(format, args...)}
}
