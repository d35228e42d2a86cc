"""Cache: a compressed KV cache, fed and queried with NumPy arrays or torch tensors."""

import ctypes
import os
import sys
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _api, _ranges, _tensors
from .codebook import ArrayLike, Codebook, PathLike, _as_dict, _set_field
from .errors import TensorError, check

# NumPy has no bfloat16: BF16 tensors travel as their raw uint16 bits.
_IO_DTYPES = {_api.DTYPE_F32: np.float32, _api.DTYPE_F16: np.float16, _api.DTYPE_BF16: np.uint16}
_FLOAT_P = ctypes.POINTER(ctypes.c_float)
_DOUBLE_P = ctypes.POINTER(ctypes.c_double)


class Cache:
    """Owns one commvq_cache_t; close() (or leaving a `with` block) destroys it.

    Keyword arguments set fields of commvq_cache_params_t (device, max_seqs,
    max_tokens, block_tokens, window, sink_tokens, io_dtype, key_convention,
    attn_scale, n_threads, kv_head_begin, kv_head_count); the others keep the
    library's defaults.

    A slice cache (kv_head_count: a tensor-parallel rank's KV heads,
    docs/PARALLEL.md) takes keys of its kv_head_count heads, values of all
    n_kv_heads heads and queries of its n_q_heads query heads (its groups);
    key_norms2() and append_norms2() carry the key norms ranks exchange.

    NumPy arrays are converted to the cache's io dtype and made contiguous (a
    copy only when they are not already); shapes are checked here, before the
    call. torch tensors are passed by pointer, with no copy and no
    synchronization: they must lie on the cache's device (a CUDA tensor for a
    CUDA cache, a CPU tensor for a CPU cache), have its io dtype (float32,
    float16 or bfloat16) and be contiguous, else TensorError; on a CUDA cache
    the work is queued on torch's current stream of that device, and outputs
    are new tensors there. A cache must not be used by two threads at once.
    """

    def __init__(self, codebook: Codebook, **params: Any) -> None:
        self._lib = _api.library()
        p = _api.CacheParams()
        self._lib.commvq_cache_params_init_size(ctypes.byref(p), ctypes.sizeof(p))
        for name, value in params.items():
            _set_field(p, name, value)
        handle = _api.CachePtr()
        check(self._lib.commvq_cache_create(codebook._live(), ctypes.byref(p), ctypes.byref(handle)))
        self._handle = handle
        info = codebook.info
        self.n_layers = info["n_layers"]
        self.n_kv_heads = info["n_kv_heads"]  # the model's (values carry them all)
        self.kv_head_begin = p.kv_head_begin
        self.kv_head_count = p.kv_head_count or self.n_kv_heads  # the KV heads held (keys carry these)
        self.n_q_heads = info["n_q_heads"] // self.n_kv_heads * self.kv_head_count  # the query heads held
        self.head_dim = info["head_dim"]
        self.scale_mode = info["scale_mode"]  # SCALE_TOKEN: a slice's appends need every head's key norms
        self.dtype = np.dtype(_IO_DTYPES[p.io_dtype])
        self.io_dtype = p.io_dtype
        self.device = p.device  # DEVICE_CPU or a CUDA ordinal
        self._stream: Optional[int] = None  # the cudaStream_t last given to the library (None: never set)

    # ---- tokens ------------------------------------------------------------
    def append(self, layer: int, seq: int, k: ArrayLike, v: ArrayLike) -> None:
        """Appends tokens to one layer of a sequence: k, v [n_tokens, n_kv_heads, head_dim]."""
        layer, seq = _ranges.uint32("layer", layer), _ranges.uint32("seq", seq)
        if _tensors.is_torch_tensor(k) or _tensors.is_torch_tensor(v):
            call = "commvq_cache_append"
            n = self._tensor(call, "k", k, self.kv_head_count, None)
            self._tensor(call, "v", v, self.n_kv_heads, n)
            self._use_torch_stream(k)
            check(self._lib.commvq_cache_append(self._live(), layer, seq, _ranges.uint32("n_tokens", n),
                                                k.data_ptr(), v.data_ptr()))
            return
        k = self._tokens(k, self.kv_head_count, "k")
        v = self._tokens(v, self.n_kv_heads, "v")
        if k.shape[0] != v.shape[0]:
            raise ValueError(f"k and v differ in tokens: {k.shape[0]} and {v.shape[0]}")
        n = _ranges.uint32("n_tokens", k.shape[0])
        check(self._lib.commvq_cache_append(self._live(), layer, seq, n, k.ctypes.data, v.ctypes.data))

    def append_batch(self, layer: int, seq_ids: ArrayLike, k: ArrayLike, v: ArrayLike) -> None:
        """Appends to one layer of several sequences in one call (commvq_cache_append_batch).

        k, v: [len(seq_ids), n_kv_heads, head_dim], one token per sequence (a decode
        step), or [len(seq_ids), n_tokens, n_kv_heads, head_dim]; the ids are distinct.
        As append() for each sequence in turn, but all or nothing: a refused batch
        changes no sequence.
        """
        layer = _ranges.uint32("layer", layer)
        seq_ids = _ranges.uint32_array("seq_ids", seq_ids)  # host memory: the library reads the ids on the host
        if seq_ids.ndim != 1:
            raise ValueError(f"seq_ids must be 1-D, got shape {list(seq_ids.shape)}")
        n = _ranges.uint32("n_seqs", seq_ids.shape[0])
        ids = seq_ids.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
        if _tensors.is_torch_tensor(k) or _tensors.is_torch_tensor(v):
            call = "commvq_cache_append_batch"
            n_tokens = self._batch_tensor(call, "k", k, n, None, self.kv_head_count)
            self._batch_tensor(call, "v", v, n, n_tokens, self.n_kv_heads)
            self._use_torch_stream(k)
            check(self._lib.commvq_cache_append_batch(self._live(), layer, n, ids, _ranges.uint32("n_tokens", n_tokens),
                                                      k.data_ptr(), v.data_ptr()))
            return
        k, v, n_tokens = self._batch_kv(k, v, n)
        check(self._lib.commvq_cache_append_batch(self._live(), layer, n, ids, _ranges.uint32("n_tokens", n_tokens),
                                                  k.ctypes.data, v.ctypes.data))

    # ---- tensor parallelism (docs/PARALLEL.md) --------------------------------------
    def key_norms2(self, layer: int, seq_ids: ArrayLike, k: ArrayLike) -> Any:
        """Squared norms of this cache's heads of the keys about to be appended
        (commvq_cache_key_norms2): k as append_batch takes it; returns float64
        [kv_head_count, len(seq_ids), n_tokens], a NumPy array, or for a torch k a
        tensor on k's device. Gather the ranks' results along axis 0 (in head
        order) into the [n_kv_heads, ...] array append_norms2 takes
        (commvq.tensor_parallel does it through torch.distributed)."""
        layer = _ranges.uint32("layer", layer)
        seq_ids, ids, n = self._ids(seq_ids)
        if _tensors.is_torch_tensor(k):
            torch = sys.modules["torch"]
            n_tokens = self._batch_tensor("commvq_cache_key_norms2", "k", k, n, None, self.kv_head_count)
            norms = torch.empty((self.kv_head_count, n, n_tokens), dtype=torch.float64, device=k.device)
            self._use_torch_stream(k)
            check(self._lib.commvq_cache_key_norms2(self._live(), layer, n, ids, _ranges.uint32("n_tokens", n_tokens),
                                                    k.data_ptr(), ctypes.cast(norms.data_ptr(), _DOUBLE_P)))
            return norms
        k, n_tokens = self._batch_tokens(k, n, "k", self.kv_head_count)
        norms = np.empty((self.kv_head_count, n, n_tokens), dtype=np.float64)
        check(self._lib.commvq_cache_key_norms2(self._live(), layer, n, ids, _ranges.uint32("n_tokens", n_tokens),
                                                k.ctypes.data, norms.ctypes.data_as(_DOUBLE_P)))
        return norms

    def append_norms2(self, layer: int, seq_ids: ArrayLike, k: ArrayLike, v: ArrayLike,
                      key_norms2: Optional[ArrayLike] = None) -> None:
        """append_batch with the squared key norms of all n_kv_heads heads
        (commvq_cache_append_norms2): key_norms2 float64 [n_kv_heads, len(seq_ids),
        n_tokens], or None where the cache needs none (head scale mode, all heads).
        NumPy arrays, or torch tensors all (key_norms2 float64 on the cache's device)."""
        layer = _ranges.uint32("layer", layer)
        seq_ids, ids, n = self._ids(seq_ids)
        if _tensors.is_torch_tensor(k) or _tensors.is_torch_tensor(v):
            call = "commvq_cache_append_norms2"
            n_tokens = self._batch_tensor(call, "k", k, n, None, self.kv_head_count)
            self._batch_tensor(call, "v", v, n, n_tokens, self.n_kv_heads)
            norms_p = None
            if key_norms2 is not None:
                _require_tensor(call, "key_norms2", key_norms2)
                _tensors.check_output(call, "key_norms2", _tensors.describe(key_norms2), self.device,
                                      "torch.float64", (self.n_kv_heads, n, n_tokens))
                norms_p = ctypes.cast(key_norms2.data_ptr(), _DOUBLE_P)
            self._use_torch_stream(k)
            check(self._lib.commvq_cache_append_norms2(self._live(), layer, n, ids,
                                                       _ranges.uint32("n_tokens", n_tokens), k.data_ptr(),
                                                       v.data_ptr(), norms_p))
            return
        k, v, n_tokens = self._batch_kv(k, v, n)
        norms_p = None
        if key_norms2 is not None:
            key_norms2 = np.ascontiguousarray(key_norms2, dtype=np.float64)
            if key_norms2.shape != (self.n_kv_heads, n, n_tokens):
                raise ValueError(f"key_norms2 must be [{self.n_kv_heads}, {n}, {n_tokens}], "
                                 f"got {list(key_norms2.shape)}")
            norms_p = key_norms2.ctypes.data_as(_DOUBLE_P)
        check(self._lib.commvq_cache_append_norms2(self._live(), layer, n, ids, _ranges.uint32("n_tokens", n_tokens),
                                                   k.ctypes.data, v.ctypes.data, norms_p))

    def _ids(self, seq_ids: ArrayLike) -> Tuple[np.ndarray, Any, int]:
        seq_ids = _ranges.uint32_array("seq_ids", seq_ids)
        if seq_ids.ndim != 1:
            raise ValueError(f"seq_ids must be 1-D, got shape {list(seq_ids.shape)}")
        return seq_ids, seq_ids.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), _ranges.uint32("n_seqs",
                                                                                                seq_ids.shape[0])

    def _batch_kv(self, k: ArrayLike, v: ArrayLike, n: int) -> Tuple[np.ndarray, np.ndarray, int]:
        k, n_tokens = self._batch_tokens(k, n, "k", self.kv_head_count)
        v, v_tokens = self._batch_tokens(v, n, "v", self.n_kv_heads)
        if v_tokens != n_tokens:
            raise ValueError(f"k and v differ in tokens per sequence: {n_tokens} and {v_tokens}")
        return k, v, n_tokens

    def attend(self, layer: int, seq: int, q: ArrayLike, causal: bool = True, out: Optional[np.ndarray] = None,
               lse: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Attention of post-RoPE queries q [n_queries, n_q_heads, head_dim].

        Returns (out, lse): out in q's layout and the cache's io dtype, lse
        float32 [n_queries, n_q_heads]. Pass out= / lse= to write into
        existing contiguous arrays instead. A torch q gives torch outputs on
        its device (out= / lse= then must be such tensors).
        """
        layer, seq = _ranges.uint32("layer", layer), _ranges.uint32("seq", seq)
        if _tensors.is_torch_tensor(q):
            call = "commvq_cache_attend"
            n = _ranges.uint32("n_queries", self._tensor(call, "q", q, self.n_q_heads, None))
            out, lse = self._torch_outputs(call, q, n, out, lse)
            self._use_torch_stream(q)
            check(self._lib.commvq_cache_attend(self._live(), layer, seq, n, q.data_ptr(), out.data_ptr(),
                                                ctypes.cast(lse.data_ptr(), _FLOAT_P), self._flags(causal)))
            return out, lse
        q = self._tokens(q, self.n_q_heads, "q")
        n = _ranges.uint32("n_queries", q.shape[0])
        out, lse = self._outputs(n, out, lse)
        check(self._lib.commvq_cache_attend(self._live(), layer, seq, n, q.ctypes.data, out.ctypes.data,
                                            lse.ctypes.data_as(_FLOAT_P), self._flags(causal)))
        return out, lse

    def attend_batch(self, layer: int, seq_ids: ArrayLike, q: ArrayLike, causal: bool = True,
                     out: Optional[np.ndarray] = None,
                     lse: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """One decode query per sequence: q [len(seq_ids), n_q_heads, head_dim]."""
        layer = _ranges.uint32("layer", layer)
        seq_ids = _ranges.uint32_array("seq_ids", seq_ids)  # host memory: the library reads the ids on the host
        if _tensors.is_torch_tensor(q):
            call = "commvq_cache_attend_batch"
            if seq_ids.ndim != 1:
                raise TensorError(_api.ERR_SHAPE_MISMATCH, f"{call}: seq_ids must be 1-D, got {list(seq_ids.shape)}")
            n = _ranges.uint32("n_seqs", self._tensor(call, "q", q, self.n_q_heads, seq_ids.shape[0]))
            out, lse = self._torch_outputs(call, q, n, out, lse)
            self._use_torch_stream(q)
            check(self._lib.commvq_cache_attend_batch(self._live(), layer, n,
                                                      seq_ids.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                                                      q.data_ptr(), out.data_ptr(),
                                                      ctypes.cast(lse.data_ptr(), _FLOAT_P), self._flags(causal)))
            return out, lse
        q = self._tokens(q, self.n_q_heads, "q")
        if seq_ids.ndim != 1 or seq_ids.shape[0] != q.shape[0]:
            raise ValueError(f"need one query per sequence: {seq_ids.shape[0]} ids, {q.shape[0]} queries")
        n = _ranges.uint32("n_seqs", seq_ids.shape[0])
        out, lse = self._outputs(n, out, lse)
        check(self._lib.commvq_cache_attend_batch(self._live(), layer, n,
                                                  seq_ids.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                                                  q.ctypes.data, out.ctypes.data, lse.ctypes.data_as(_FLOAT_P),
                                                  self._flags(causal)))
        return out, lse

    # ---- sequences -----------------------------------------------------------
    def seq_length(self, seq: int) -> int:
        length = ctypes.c_uint64()
        check(self._lib.commvq_cache_seq_length(self._live(), _ranges.uint32("seq", seq), ctypes.byref(length)))
        return length.value

    def seq_clear(self, seq: int) -> None:
        check(self._lib.commvq_cache_seq_clear(self._live(), _ranges.uint32("seq", seq)))

    def seq_truncate(self, seq: int, new_length: int) -> None:
        check(self._lib.commvq_cache_seq_truncate(self._live(), _ranges.uint32("seq", seq),
                                                  _ranges.uint64("new_length", new_length)))

    def seq_fork(self, src: int, dst: int) -> None:
        check(self._lib.commvq_cache_seq_fork(self._live(), _ranges.uint32("src", src), _ranges.uint32("dst", dst)))

    def seq_save(self, seq: int, path: PathLike) -> None:
        check(self._lib.commvq_cache_seq_save(self._live(), _ranges.uint32("seq", seq), os.fsencode(path)))

    def seq_load(self, seq: int, path: PathLike) -> None:
        check(self._lib.commvq_cache_seq_load(self._live(), _ranges.uint32("seq", seq), os.fsencode(path)))

    def stats(self) -> Dict[str, Any]:
        """commvq_cache_stats_t as a dict."""
        stats = _api.CacheStats()
        self._lib.commvq_cache_stats_init(ctypes.byref(stats))
        check(self._lib.commvq_cache_get_stats(self._live(), ctypes.byref(stats)))
        return _as_dict(stats)

    # ---- GPU ---------------------------------------------------------------------
    def set_stream(self, cuda_stream: int) -> None:
        """cuda_stream: a cudaStream_t as an int (e.g. torch.cuda.Stream().cuda_stream)."""
        stream = _ranges.integer("cuda_stream", cuda_stream, ctypes.c_void_p)
        check(self._lib.commvq_cache_set_stream(self._live(), stream))
        self._stream = stream

    def synchronize(self) -> None:
        check(self._lib.commvq_cache_synchronize(self._live()))

    # ---- ownership -----------------------------------------------------------------
    def close(self) -> None:
        """Destroys the cache; later calls raise ValueError. Closing twice is fine."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.commvq_cache_destroy(handle)

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # ---- helpers -----------------------------------------------------------------
    def _live(self) -> "_api.CachePtr":
        if not self._handle:
            raise ValueError("the cache is closed")
        return self._handle

    def _tokens(self, x: ArrayLike, heads: int, name: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        want = (heads, self.head_dim)
        if x.ndim == 2 and x.shape[1] == heads * self.head_dim:
            x = x.reshape(x.shape[0], heads, self.head_dim)
        if x.ndim != 3 or x.shape[1:] != want:
            raise ValueError(f"{name} must be [n, {heads}, {self.head_dim}], got {list(x.shape)}")
        return x

    def _batch_tokens(self, x: ArrayLike, rows: int, name: str, heads: int) -> Tuple[np.ndarray, int]:
        """An append_batch argument as a contiguous array of the io dtype, and its tokens per row."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        tokens = _tensors.batch_tokens(x.shape, heads, self.head_dim)
        if tokens is None or x.shape[0] != rows:
            raise ValueError(f"{name} must be [{rows}, {heads}, {self.head_dim}] (one token per sequence) "
                             f"or [{rows}, n_tokens, {heads}, {self.head_dim}], got {list(x.shape)}")
        return x, tokens

    def _batch_tensor(self, call: str, name: str, x: Any, rows: int, tokens: Optional[int], heads: int) -> int:
        """Checks a torch tensor argument of append_batch; returns its tokens per row."""
        _require_tensor(call, name, x)
        return _tensors.check_batch(call, name, _tensors.describe(x), self.device, self.io_dtype, rows, tokens,
                                    heads, self.head_dim)

    def _outputs(self, n: int, out: Optional[np.ndarray],
                 lse: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        out_shape, lse_shape = (n, self.n_q_heads, self.head_dim), (n, self.n_q_heads)
        if out is None:
            out = np.empty(out_shape, dtype=self.dtype)
        elif out.shape != out_shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous {self.dtype} array of shape {out_shape}")
        if lse is None:
            lse = np.empty(lse_shape, dtype=np.float32)
        elif lse.shape != lse_shape or lse.dtype != np.float32 or not lse.flags.c_contiguous:
            raise ValueError(f"lse must be a contiguous float32 array of shape {lse_shape}")
        return out, lse

    def _tensor(self, call: str, name: str, x: Any, heads: int, rows: Optional[int]) -> int:
        """Checks a torch tensor argument (TensorError otherwise); returns its row count."""
        _require_tensor(call, name, x)
        return _tensors.check(call, name, _tensors.describe(x), self.device, self.io_dtype, rows, heads,
                              self.head_dim)

    def _torch_outputs(self, call: str, q: Any, n: int, out: Any, lse: Any) -> Tuple[Any, Any]:
        """New torch out and lse beside q, or the caller's, checked."""
        torch = sys.modules["torch"]
        out_shape, lse_shape = (n, self.n_q_heads, self.head_dim), (n, self.n_q_heads)
        if out is None:
            out = torch.empty(out_shape, dtype=q.dtype, device=q.device)
        elif not _tensors.is_torch_tensor(out):
            raise TensorError(_api.ERR_INVALID_ARGUMENT, f"{call}: out must be a torch tensor like q")
        else:
            _tensors.check_output(call, "out", _tensors.describe(out), self.device,
                                  _tensors.torch_dtype_name(self.io_dtype), out_shape)
        if lse is None:
            lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
        elif not _tensors.is_torch_tensor(lse):
            raise TensorError(_api.ERR_INVALID_ARGUMENT, f"{call}: lse must be a torch tensor like q")
        else:
            _tensors.check_output(call, "lse", _tensors.describe(lse), self.device, "torch.float32", lse_shape)
        return out, lse

    def _use_torch_stream(self, x: Any) -> None:
        """On a CUDA cache, queue the call on torch's current stream, so it is ordered with
        the kernels that made its inputs and those that read its outputs, with no host wait."""
        if self.device == _api.DEVICE_CPU:
            return
        stream = sys.modules["torch"].cuda.current_stream(x.device).cuda_stream
        if stream != self._stream:
            self.set_stream(stream)

    @staticmethod
    def _flags(causal: bool) -> int:
        return _api.ATTEND_CAUSAL if causal else _api.ATTEND_NON_CAUSAL


def _require_tensor(call: str, name: str, x: Any) -> None:
    """A call's inputs are all torch tensors or none: TensorError for an array among tensors."""
    if not _tensors.is_torch_tensor(x):
        raise TensorError(_api.ERR_INVALID_ARGUMENT,
                          f"{call}: {name} is a {type(x).__name__}; give torch tensors for every input or none")
