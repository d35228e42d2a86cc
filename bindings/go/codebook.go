package commvq

/*
#include <stdlib.h>
#include "api.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Codebook owns a commvq_codebook_t: the quantization tables of one model.
type Codebook struct {
	lib *Library
	ptr *C.commvq_codebook_t
}

// RopeInfo is commvq_rope_info_t.
type RopeInfo struct {
	Theta               float64
	Scaling             int32
	Factor              float64
	LowFreqFactor       float64
	HighFreqFactor      float64
	OriginalMaxPosition float64
}

// CodebookInfo is commvq_codebook_info_t.
type CodebookInfo struct {
	NLayers, NKVHeads, NQHeads, HeadDim uint32
	KeyStages, SubCenters               uint32
	ValueBits, ValueHidden              uint32
	PairLayout, ScaleMode               int32
	FormatVersion                       uint32
	Rope                                RopeInfo
	Fingerprint                         uint64
	CompressedTokenBytes                uint32
}

func (l *Library) ownCodebook(ptr *C.commvq_codebook_t) *Codebook {
	cb := &Codebook{lib: l, ptr: ptr}
	runtime.SetFinalizer(cb, (*Codebook).Close)
	return cb
}

// LoadCodebook reads a codebook file.
func (l *Library) LoadCodebook(path string) (*Codebook, error) {
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	var ptr *C.commvq_codebook_t
	if err := l.call(func() C.commvq_status_t { return C.cq_codebook_load(l.api, cPath, &ptr) }); err != nil {
		return nil, err
	}
	return l.ownCodebook(ptr), nil
}

// LoadCodebookBytes reads a codebook from the bytes of a codebook file (copied).
func (l *Library) LoadCodebookBytes(data []byte) (*Codebook, error) {
	if len(data) == 0 {
		return nil, refuse(ErrInvalidArgument, "empty codebook data")
	}
	var ptr *C.commvq_codebook_t
	err := l.call(func() C.commvq_status_t {
		return C.cq_codebook_load_memory(l.api, unsafe.Pointer(&data[0]), C.size_t(len(data)), &ptr)
	})
	if err != nil {
		return nil, err
	}
	return l.ownCodebook(ptr), nil
}

func (cb *Codebook) live() (*C.commvq_codebook_t, error) {
	if cb.ptr == nil {
		return nil, ErrClosed
	}
	return cb.ptr, nil
}

// Save writes the codebook file.
func (cb *Codebook) Save(path string) error {
	ptr, err := cb.live()
	if err != nil {
		return err
	}
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	err = cb.lib.call(func() C.commvq_status_t { return C.cq_codebook_save(cb.lib.api, ptr, cPath) })
	runtime.KeepAlive(cb)
	return err
}

// SaveAs writes the codebook file with a storage dtype: DtypeF32 (as Save),
// DtypeF16 or DtypeBF16, which round the key sub-centers and value matrices
// to that type (about half the file; the file's fingerprint is then that of
// the rounded values).
func (cb *Codebook) SaveAs(path string, dtype int32) error {
	ptr, err := cb.live()
	if err != nil {
		return err
	}
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	err = cb.lib.call(func() C.commvq_status_t { return C.cq_codebook_save_as(cb.lib.api, ptr, cPath, C.int32_t(dtype)) })
	runtime.KeepAlive(cb)
	return err
}

// Info describes the model and the codebook.
func (cb *Codebook) Info() (CodebookInfo, error) {
	ptr, err := cb.live()
	if err != nil {
		return CodebookInfo{}, err
	}
	var c C.commvq_codebook_info_t
	C.cq_codebook_info_init(cb.lib.api, &c)
	err = cb.lib.call(func() C.commvq_status_t { return C.cq_codebook_get_info(cb.lib.api, ptr, &c) })
	runtime.KeepAlive(cb)
	if err != nil {
		return CodebookInfo{}, err
	}
	return CodebookInfo{
		NLayers: uint32(c.n_layers), NKVHeads: uint32(c.n_kv_heads), NQHeads: uint32(c.n_q_heads),
		HeadDim: uint32(c.head_dim), KeyStages: uint32(c.key_stages), SubCenters: uint32(c.sub_centers),
		ValueBits: uint32(c.value_bits), ValueHidden: uint32(c.value_hidden),
		PairLayout: int32(c.pair_layout), ScaleMode: int32(c.scale_mode),
		FormatVersion: uint32(c.format_version),
		Rope: RopeInfo{Theta: float64(c.rope.theta), Scaling: int32(c.rope.scaling), Factor: float64(c.rope.factor),
			LowFreqFactor: float64(c.rope.low_freq_factor), HighFreqFactor: float64(c.rope.high_freq_factor),
			OriginalMaxPosition: float64(c.rope.original_max_position)},
		Fingerprint: uint64(c.fingerprint), CompressedTokenBytes: uint32(c.compressed_token_bytes),
	}, nil
}

// Close frees the codebook; later calls fail. Closing twice is fine. Caches
// made from it keep what they need and stay usable.
func (cb *Codebook) Close() error {
	if cb.ptr != nil {
		C.cq_codebook_free(cb.lib.api, cb.ptr)
		cb.ptr = nil
		runtime.SetFinalizer(cb, nil)
	}
	return nil
}
