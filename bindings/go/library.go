// Package commvq loads libcommvq at run time (cgo and dlopen) and wraps its C
// API: a Library, Codebooks and Caches that own their handles.
//
//	lib, err := commvq.Open("")                 // $COMMVQ_LIBRARY, else libcommvq.so.0 from the loader's path
//	cb, err := lib.LoadCodebook("model.cvq.safetensors")
//	defer cb.Close()
//	params := lib.DefaultCacheParams()
//	cache, err := cb.NewCache(params)
//	defer cache.Close()
//	err = cache.Append(layer, seq, k, v)          // []float32 [n][n_kv_heads][head_dim]
//	err = cache.Attend(layer, seq, q, out, lse, commvq.AttendCausal)
//
// Failures are *Error values that errors.Is matches against the status
// constants (errors.Is(err, commvq.ErrCapacity)); use after Close is ErrClosed.
// Handles are freed exactly once: by Close, or by a finalizer if Close was
// never called. A Codebook or Cache must not be used by two goroutines at once.
//
// Building needs the installed library's commvq.pc (pkg-config) for the
// header; the library itself is opened at run time, so a program starts
// without it and Open says what is wrong.
package commvq

/*
#cgo pkg-config: commvq
// Only the header is wanted at build time: the functions are resolved with
// dlsym, so --as-needed drops the -lcommvq that pkg-config adds (cgo puts
// these flags before pkg-config's).
#cgo LDFLAGS: -Wl,--as-needed -ldl
#include <stdlib.h>
#include "api.h"
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"
)

// Constants of commvq.h (the statuses are in errors.go).
const (
	VersionMajor             = C.COMMVQ_VERSION_MAJOR
	DeviceCPU                = C.COMMVQ_DEVICE_CPU
	DtypeF32                 = C.COMMVQ_DTYPE_F32
	DtypeF16                 = C.COMMVQ_DTYPE_F16
	DtypeBF16                = C.COMMVQ_DTYPE_BF16
	KeysPreRope              = C.COMMVQ_KEYS_PRE_ROPE
	KeysPostRope             = C.COMMVQ_KEYS_POST_ROPE
	PairsRotateHalf          = C.COMMVQ_PAIRS_ROTATE_HALF
	PairsInterleaved         = C.COMMVQ_PAIRS_INTERLEAVED
	ScaleToken               = C.COMMVQ_SCALE_TOKEN
	ScaleHead                = C.COMMVQ_SCALE_HEAD
	RopeScalingNone          = C.COMMVQ_ROPE_SCALING_NONE
	RopeScalingLinear        = C.COMMVQ_ROPE_SCALING_LINEAR
	RopeScalingLlama3        = C.COMMVQ_ROPE_SCALING_LLAMA3
	AttendCausal      uint32 = C.COMMVQ_ATTEND_CAUSAL
	AttendNonCausal   uint32 = C.COMMVQ_ATTEND_NON_CAUSAL
)

// Library is a loaded libcommvq. It stays loaded for the life of the process.
type Library struct {
	api  *C.commvq_go_api
	Path string
}

// Open loads libcommvq from path; "" means $COMMVQ_LIBRARY, else
// libcommvq.so.<major> from the loader's search path. It checks the major
// version and resolves every function, naming the first one missing; its
// errors match ErrLoad.
func Open(path string) (*Library, error) {
	if path == "" {
		path = os.Getenv("COMMVQ_LIBRARY")
	}
	if path == "" {
		path = fmt.Sprintf("libcommvq.so.%d", VersionMajor)
	}
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	var message [512]C.char
	api := C.commvq_go_open(cPath, &message[0], C.size_t(len(message)))
	if api == nil {
		return nil, fmt.Errorf("%w: %s", ErrLoad, C.GoString(&message[0]))
	}
	return &Library{api: api, Path: path}, nil
}

func (l *Library) VersionNumber() uint32 { return uint32(C.cq_version_number(l.api)) }
func (l *Library) Version() string       { return C.GoString(C.cq_version_string(l.api)) }
func (l *Library) CUDAAvailable() bool   { return C.cq_cuda_available(l.api) != 0 }
func (l *Library) DeviceCount() int      { return int(C.cq_device_count(l.api)) }

// StatusString is the status's name, e.g. "COMMVQ_ERR_CAPACITY".
func (l *Library) StatusString(s Status) string {
	return C.GoString(C.cq_status_string(l.api, C.commvq_status_t(s)))
}

// call runs one library call and turns its status into an *Error. The
// goroutine stays on its OS thread in between, because the message is the
// thread's last error.
func (l *Library) call(f func() C.commvq_status_t) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	status := f()
	if status == C.COMMVQ_OK {
		return nil
	}
	message := C.GoString(C.cq_last_error(l.api)) // first: the next call may replace it
	return &Error{Status: Status(status), Name: l.StatusString(Status(status)), Message: message}
}
