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

// CacheParams is commvq_cache_params_t; start from Library.DefaultCacheParams.
type CacheParams struct {
	Device        int32
	MaxSeqs       uint32
	MaxTokens     uint64
	BlockTokens   uint32
	Window        uint32
	SinkTokens    uint32
	IODtype       int32
	KeyConvention int32
	AttnScale     float32
	NThreads      uint32
}

// CacheStats is commvq_cache_stats_t.
type CacheStats struct {
	NSeqsUsed               uint32
	Tokens                  uint64
	CompressedTokens        uint64
	BlocksUsed, BlocksTotal uint64
	TokensFree              uint64
	BytesCompressed         uint64
	BytesWindow             uint64
	BytesCodebook           uint64
	BytesReserved           uint64
	BytesPerCompressedToken float64
	BytesPerToken16Bit      float64
}

// DefaultCacheParams is the library's default commvq_cache_params_t.
func (l *Library) DefaultCacheParams() CacheParams {
	var c C.commvq_cache_params_t
	C.cq_cache_params_init_size(l.api, &c, C.size_t(unsafe.Sizeof(c)))
	return CacheParams{Device: int32(c.device), MaxSeqs: uint32(c.max_seqs), MaxTokens: uint64(c.max_tokens),
		BlockTokens: uint32(c.block_tokens), Window: uint32(c.window), SinkTokens: uint32(c.sink_tokens),
		IODtype: int32(c.io_dtype), KeyConvention: int32(c.key_convention), AttnScale: float32(c.attn_scale),
		NThreads: uint32(c.n_threads)}
}

// Cache owns a commvq_cache_t, a compressed KV cache. Buffer lengths are
// checked here, before the call. Float32 methods need io dtype F32; the
// Half methods take F16 or BF16 as raw uint16 bits.
type Cache struct {
	lib                  *Library
	ptr                  *C.commvq_cache_t
	ioDtype              int32
	kvRow, qRow, nQHeads int
}

// NewCache creates a cache for the codebook's model.
func (cb *Codebook) NewCache(p CacheParams) (*Cache, error) {
	info, err := cb.Info()
	if err != nil {
		return nil, err
	}
	var c C.commvq_cache_params_t
	C.cq_cache_params_init_size(cb.lib.api, &c, C.size_t(unsafe.Sizeof(c))) // sets struct_size
	c.device = C.int32_t(p.Device)
	c.max_seqs = C.uint32_t(p.MaxSeqs)
	c.max_tokens = C.uint64_t(p.MaxTokens)
	c.block_tokens = C.uint32_t(p.BlockTokens)
	c.window = C.uint32_t(p.Window)
	c.sink_tokens = C.uint32_t(p.SinkTokens)
	c.io_dtype = C.int32_t(p.IODtype)
	c.key_convention = C.int32_t(p.KeyConvention)
	c.attn_scale = C.float(p.AttnScale)
	c.n_threads = C.uint32_t(p.NThreads)
	var ptr *C.commvq_cache_t
	err = cb.lib.call(func() C.commvq_status_t { return C.cq_cache_create(cb.lib.api, cb.ptr, &c, &ptr) })
	runtime.KeepAlive(cb)
	if err != nil {
		return nil, err
	}
	cache := &Cache{lib: cb.lib, ptr: ptr, ioDtype: p.IODtype,
		kvRow: int(info.NKVHeads * info.HeadDim), qRow: int(info.NQHeads * info.HeadDim), nQHeads: int(info.NQHeads)}
	runtime.SetFinalizer(cache, (*Cache).Close)
	return cache, nil
}

func (c *Cache) live() error {
	if c.ptr == nil {
		return ErrClosed
	}
	return nil
}

func rows(n, row int, what string) (C.uint32_t, error) {
	if n == 0 || n%row != 0 {
		return 0, refuse(ErrShapeMismatch, "%s has %d elements, not a positive multiple of %d", what, n, row)
	}
	return C.uint32_t(n / row), nil
}

func (c *Cache) checkDtype(half bool) error {
	if half != (c.ioDtype != DtypeF32) {
		return refuse(ErrInvalidArgument, "buffer type does not match the cache's io dtype %d", c.ioDtype)
	}
	return nil
}

func (c *Cache) append(layer, seq uint32, nk, nv int, k, v unsafe.Pointer, half bool) error {
	if err := c.live(); err != nil {
		return err
	}
	if err := c.checkDtype(half); err != nil {
		return err
	}
	n, err := rows(nk, c.kvRow, "k")
	if err != nil {
		return err
	}
	if nv != nk {
		return refuse(ErrShapeMismatch, "k has %d elements, v %d", nk, nv)
	}
	err = c.lib.call(func() C.commvq_status_t {
		return C.cq_cache_append(c.lib.api, c.ptr, C.uint32_t(layer), C.uint32_t(seq), n, k, v)
	})
	runtime.KeepAlive(c)
	return err
}

// Append adds tokens to one layer of a sequence: k, v [n][n_kv_heads][head_dim].
func (c *Cache) Append(layer, seq uint32, k, v []float32) error {
	if len(k) == 0 || len(v) == 0 {
		return refuse(ErrInvalidArgument, "no tokens")
	}
	return c.append(layer, seq, len(k), len(v), unsafe.Pointer(&k[0]), unsafe.Pointer(&v[0]), false)
}

// AppendHalf is Append for F16 or BF16 io (raw bits).
func (c *Cache) AppendHalf(layer, seq uint32, k, v []uint16) error {
	if len(k) == 0 || len(v) == 0 {
		return refuse(ErrInvalidArgument, "no tokens")
	}
	return c.append(layer, seq, len(k), len(v), unsafe.Pointer(&k[0]), unsafe.Pointer(&v[0]), true)
}

func (c *Cache) appendBatch(layer uint32, seqIDs []uint32, nk, nv int, k, v unsafe.Pointer, half bool) error {
	if err := c.live(); err != nil {
		return err
	}
	if err := c.checkDtype(half); err != nil {
		return err
	}
	if len(seqIDs) == 0 {
		return refuse(ErrInvalidArgument, "no sequences")
	}
	n, err := rows(nk, c.kvRow, "k")
	if err != nil {
		return err
	}
	if nv != nk {
		return refuse(ErrShapeMismatch, "k has %d elements, v %d", nk, nv)
	}
	if int(n)%len(seqIDs) != 0 {
		return refuse(ErrShapeMismatch, "k holds %d tokens, not a multiple of %d sequences", n, len(seqIDs))
	}
	err = c.lib.call(func() C.commvq_status_t {
		return C.cq_cache_append_batch(c.lib.api, c.ptr, C.uint32_t(layer), C.uint32_t(len(seqIDs)),
			(*C.uint32_t)(unsafe.Pointer(&seqIDs[0])), n/C.uint32_t(len(seqIDs)), k, v)
	})
	runtime.KeepAlive(c)
	return err
}

// AppendBatch adds tokens to one layer of several sequences in one call: k, v
// [len(seqIDs)][n_tokens][n_kv_heads][head_dim] (n_tokens 1: one decode step),
// the ids distinct. As Append for each sequence in turn, but all or nothing.
func (c *Cache) AppendBatch(layer uint32, seqIDs []uint32, k, v []float32) error {
	if len(k) == 0 || len(v) == 0 {
		return refuse(ErrInvalidArgument, "no tokens")
	}
	return c.appendBatch(layer, seqIDs, len(k), len(v), unsafe.Pointer(&k[0]), unsafe.Pointer(&v[0]), false)
}

// AppendBatchHalf is AppendBatch for F16 or BF16 io (raw bits).
func (c *Cache) AppendBatchHalf(layer uint32, seqIDs []uint32, k, v []uint16) error {
	if len(k) == 0 || len(v) == 0 {
		return refuse(ErrInvalidArgument, "no tokens")
	}
	return c.appendBatch(layer, seqIDs, len(k), len(v), unsafe.Pointer(&k[0]), unsafe.Pointer(&v[0]), true)
}

func (c *Cache) outputs(n C.uint32_t, nOut int, lse []float32) (*C.float, error) {
	if nOut != int(n)*c.qRow {
		return nil, refuse(ErrShapeMismatch, "out has %d elements, needs %d", nOut, int(n)*c.qRow)
	}
	if lse == nil {
		return nil, nil
	}
	if len(lse) != int(n)*c.nQHeads {
		return nil, refuse(ErrShapeMismatch, "lse has %d elements, needs %d", len(lse), int(n)*c.nQHeads)
	}
	return (*C.float)(unsafe.Pointer(&lse[0])), nil
}

func (c *Cache) attend(layer, seq uint32, nq, nOut int, q, out unsafe.Pointer, lse []float32, flags uint32,
	half bool) error {
	if err := c.live(); err != nil {
		return err
	}
	if err := c.checkDtype(half); err != nil {
		return err
	}
	n, err := rows(nq, c.qRow, "q")
	if err != nil {
		return err
	}
	lsePtr, err := c.outputs(n, nOut, lse)
	if err != nil {
		return err
	}
	err = c.lib.call(func() C.commvq_status_t {
		return C.cq_cache_attend(c.lib.api, c.ptr, C.uint32_t(layer), C.uint32_t(seq), n, q, out, lsePtr,
			C.uint32_t(flags))
	})
	runtime.KeepAlive(c)
	return err
}

// Attend computes attention of post-RoPE queries q [n][n_q_heads][head_dim]
// into out (q's layout); lse, [n][n_q_heads], may be nil.
func (c *Cache) Attend(layer, seq uint32, q, out, lse []float32, flags uint32) error {
	if len(q) == 0 || len(out) == 0 {
		return refuse(ErrInvalidArgument, "no queries")
	}
	return c.attend(layer, seq, len(q), len(out), unsafe.Pointer(&q[0]), unsafe.Pointer(&out[0]), lse, flags, false)
}

// AttendHalf is Attend for F16 or BF16 io (raw bits); lse stays float32.
func (c *Cache) AttendHalf(layer, seq uint32, q, out []uint16, lse []float32, flags uint32) error {
	if len(q) == 0 || len(out) == 0 {
		return refuse(ErrInvalidArgument, "no queries")
	}
	return c.attend(layer, seq, len(q), len(out), unsafe.Pointer(&q[0]), unsafe.Pointer(&out[0]), lse, flags, true)
}

// AttendBatch runs one decode query per sequence: q [len(seqIDs)][n_q_heads][head_dim].
func (c *Cache) AttendBatch(layer uint32, seqIDs []uint32, q, out, lse []float32, flags uint32) error {
	if err := c.live(); err != nil {
		return err
	}
	if err := c.checkDtype(false); err != nil {
		return err
	}
	n, err := rows(len(q), c.qRow, "q")
	if err != nil {
		return err
	}
	if int(n) != len(seqIDs) {
		return refuse(ErrShapeMismatch, "%d sequences, %d queries", len(seqIDs), n)
	}
	lsePtr, err := c.outputs(n, len(out), lse)
	if err != nil {
		return err
	}
	err = c.lib.call(func() C.commvq_status_t {
		return C.cq_cache_attend_batch(c.lib.api, c.ptr, C.uint32_t(layer), n, (*C.uint32_t)(unsafe.Pointer(&seqIDs[0])),
			unsafe.Pointer(&q[0]), unsafe.Pointer(&out[0]), lsePtr, C.uint32_t(flags))
	})
	runtime.KeepAlive(c)
	return err
}

// SeqLength is the number of tokens of the sequence's furthest layer.
func (c *Cache) SeqLength(seq uint32) (uint64, error) {
	if err := c.live(); err != nil {
		return 0, err
	}
	var length C.uint64_t
	err := c.lib.call(func() C.commvq_status_t { return C.cq_cache_seq_length(c.lib.api, c.ptr, C.uint32_t(seq), &length) })
	runtime.KeepAlive(c)
	return uint64(length), err
}

func (c *Cache) simple(f func() C.commvq_status_t) error {
	if err := c.live(); err != nil {
		return err
	}
	err := c.lib.call(f)
	runtime.KeepAlive(c)
	return err
}

func (c *Cache) SeqClear(seq uint32) error {
	return c.simple(func() C.commvq_status_t { return C.cq_cache_seq_clear(c.lib.api, c.ptr, C.uint32_t(seq)) })
}

func (c *Cache) SeqTruncate(seq uint32, newLength uint64) error {
	return c.simple(func() C.commvq_status_t {
		return C.cq_cache_seq_truncate(c.lib.api, c.ptr, C.uint32_t(seq), C.uint64_t(newLength))
	})
}

func (c *Cache) SeqFork(src, dst uint32) error {
	return c.simple(func() C.commvq_status_t {
		return C.cq_cache_seq_fork(c.lib.api, c.ptr, C.uint32_t(src), C.uint32_t(dst))
	})
}

func (c *Cache) SeqSave(seq uint32, path string) error {
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	return c.simple(func() C.commvq_status_t { return C.cq_cache_seq_save(c.lib.api, c.ptr, C.uint32_t(seq), cPath) })
}

func (c *Cache) SeqLoad(seq uint32, path string) error {
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	return c.simple(func() C.commvq_status_t { return C.cq_cache_seq_load(c.lib.api, c.ptr, C.uint32_t(seq), cPath) })
}

// SetStream queues the cache's work on a CUDA stream (a cudaStream_t).
func (c *Cache) SetStream(cudaStream unsafe.Pointer) error {
	return c.simple(func() C.commvq_status_t { return C.cq_cache_set_stream(c.lib.api, c.ptr, cudaStream) })
}

func (c *Cache) Synchronize() error {
	return c.simple(func() C.commvq_status_t { return C.cq_cache_synchronize(c.lib.api, c.ptr) })
}

// Stats reports what the cache holds.
func (c *Cache) Stats() (CacheStats, error) {
	var s C.commvq_cache_stats_t
	C.cq_cache_stats_init(c.lib.api, &s)
	if err := c.simple(func() C.commvq_status_t { return C.cq_cache_get_stats(c.lib.api, c.ptr, &s) }); err != nil {
		return CacheStats{}, err
	}
	return CacheStats{NSeqsUsed: uint32(s.n_seqs_used), Tokens: uint64(s.tokens),
		CompressedTokens: uint64(s.compressed_tokens), BlocksUsed: uint64(s.blocks_used),
		BlocksTotal: uint64(s.blocks_total), TokensFree: uint64(s.tokens_free),
		BytesCompressed: uint64(s.bytes_compressed), BytesWindow: uint64(s.bytes_window),
		BytesCodebook: uint64(s.bytes_codebook), BytesReserved: uint64(s.bytes_reserved),
		BytesPerCompressedToken: float64(s.bytes_per_compressed_token),
		BytesPerToken16Bit:      float64(s.bytes_per_token_16bit)}, nil
}

// Close destroys the cache; later calls fail. Closing twice is fine.
func (c *Cache) Close() error {
	if c.ptr != nil {
		C.cq_cache_destroy(c.lib.api, c.ptr)
		c.ptr = nil
		runtime.SetFinalizer(c, nil)
	}
	return nil
}
