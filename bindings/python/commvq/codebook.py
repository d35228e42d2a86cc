"""Codebook: the per-model quantization tables, loaded, saved or trained."""

import ctypes
import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from . import _api, _ranges
from .errors import check

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
ArrayLike = Any  # anything np.ascontiguousarray accepts


class Codebook:
    """Owns one commvq_codebook_t; close() (or leaving a `with` block) frees it.

    A cache keeps its own copy of what it needs, so a codebook may be closed
    once its caches are created.
    """

    def __init__(self, handle: "_api.CodebookPtr") -> None:
        self._handle = handle
        self._lib = _api.library()

    @classmethod
    def load(cls, path: PathLike) -> "Codebook":
        lib = _api.library()
        handle = _api.CodebookPtr()
        check(lib.commvq_codebook_load(os.fsencode(path), ctypes.byref(handle)))
        return cls(handle)

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray, memoryview]) -> "Codebook":
        """A codebook from the bytes of a codebook file (copied)."""
        lib = _api.library()
        data = bytes(data)
        handle = _api.CodebookPtr()
        check(lib.commvq_codebook_load_memory(data, len(data), ctypes.byref(handle)))
        return cls(handle)

    @classmethod
    def train(cls, keys: ArrayLike, values: ArrayLike,
              progress: Optional[Callable[[str, float], Any]] = None, model_name: Optional[str] = None,
              value_weights: Optional[ArrayLike] = None, **params: Any) -> "Codebook":
        """Trains a codebook on pre-RoPE keys and values.

        keys, values: float32 arrays [n_layers, n_tokens, n_kv_heads, head_dim].
        params: fields of commvq_train_params_t (value_bits, key_stages,
        sub_centers, pair_layout, scale_mode, n_q_heads, max_samples,
        key_max_steps, value_steps, value_batch, value_lr, seed, n_threads,
        device, value_hidden) and rope, a dict of commvq_rope_info_t fields.
        model_name: a str recorded in the codebook. value_weights: None, or
        [n_layers, n_tokens] weights (finite, >= 0) of each token's value
        reconstruction error.
        progress(stage, fraction) is called as training advances; a true
        result cancels it (CommvqError with ERR_CANCELLED).
        """
        lib = _api.library()
        keys = np.ascontiguousarray(keys, dtype=np.float32)
        values = np.ascontiguousarray(values, dtype=np.float32)
        if keys.ndim != 4 or keys.shape != values.shape:
            raise ValueError(f"keys and values must both be [n_layers, n_tokens, n_kv_heads, head_dim], "
                             f"got {keys.shape} and {values.shape}")
        p = _api.TrainParams()
        lib.commvq_train_params_init(ctypes.byref(p))
        for name, value in params.pop("rope", {}).items():
            _set_field(p.rope, name, value)
        for name, value in params.items():
            _set_field(p, name, value)
        if model_name is not None:
            p.model_name = model_name.encode("utf-8")  # p keeps the bytes alive through the call
        if value_weights is not None:
            value_weights = np.ascontiguousarray(value_weights, dtype=np.float32)
            if value_weights.shape != keys.shape[:2]:
                raise ValueError(f"value_weights must be [n_layers, n_tokens] = {list(keys.shape[:2])}, "
                                 f"got {list(value_weights.shape)}")
            p.value_weights = _floats(value_weights)

        failure = []  # an exception raised by progress, re-raised after the call

        def report(_user: Any, stage: bytes, fraction: float) -> int:
            try:
                return 1 if progress(stage.decode(), fraction) else 0
            except BaseException as e:  # noqa: B036 - carried across the C frame
                failure.append(e)
                return 1

        callback = _api.ProgressFn(report) if progress else _api.ProgressFn()
        p.progress = callback
        handle = _api.CodebookPtr()
        n_layers, n_tokens, n_kv_heads, head_dim = keys.shape
        status = lib.commvq_train(ctypes.byref(p), _ranges.uint32("n_layers", n_layers),
                                  _ranges.uint32("n_kv_heads", n_kv_heads), _ranges.uint32("head_dim", head_dim),
                                  _ranges.uint64("n_tokens", n_tokens),
                                  keys.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                  values.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ctypes.byref(handle))
        if failure:
            raise failure[0]
        check(status)
        return cls(handle)

    def save(self, path: PathLike, storage: Union[str, int] = "f32") -> None:
        """Writes the codebook file. storage: "f32" (exact), "f16" or "bf16"
        (key sub-centers and value matrices rounded to that type: about half
        the file; the file's fingerprint is then that of the rounded values),
        or one of DTYPE_F32, DTYPE_F16, DTYPE_BF16."""
        if isinstance(storage, str) and storage not in _STORAGE:
            raise ValueError(f"storage must be one of {', '.join(_STORAGE)}, got {storage!r}")
        dtype = _ranges.int32("storage", _STORAGE.get(storage, storage))
        check(self._lib.commvq_codebook_save_as(self._live(), os.fsencode(path), dtype))

    @property
    def info(self) -> Dict[str, Any]:
        """commvq_codebook_info_t as a dict (rope as a nested dict)."""
        info = _api.CodebookInfo()
        self._lib.commvq_codebook_info_init(ctypes.byref(info))
        check(self._lib.commvq_codebook_get_info(self._live(), ctypes.byref(info)))
        return _as_dict(info)

    def encode_keys(self, layer: int, k: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        """Key codes of pre-RoPE keys k [n, n_kv_heads, head_dim] (float32).

        Returns (codes uint16 [n, n_kv_heads, key_stages], scales float32
        [n, n_key_scales]): 1 scale per token, or per head in the head scale mode.
        """
        layer = _ranges.uint32("layer", layer)
        info = self.info
        k = self._float_tokens(k, info, "k")
        n = _ranges.uint32("n_tokens", k.shape[0])
        codes = np.empty((n, info["n_kv_heads"], info["key_stages"]), dtype=np.uint16)
        n_scales = info["n_kv_heads"] if info["scale_mode"] == _api.SCALE_HEAD else 1
        scales = np.empty((n, n_scales), dtype=np.float32)
        check(self._lib.commvq_codebook_encode_keys(
            self._live(), layer, n, _floats(k), codes.ctypes.data_as(ctypes.POINTER(ctypes.c_uint16)), _floats(scales)))
        return codes, scales

    def reconstruct(self, layer: int, k: Optional[ArrayLike] = None,
                    v: Optional[ArrayLike] = None) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """What the cache's attention sees for tokens of one layer ("fake quantization").

        k (pre-RoPE) and v: float32 [n, n_kv_heads, head_dim]; either may be
        None. Returns (k_hat, v_hat), None where the input was None.
        """
        layer = _ranges.uint32("layer", layer)
        info = self.info
        k = None if k is None else self._float_tokens(k, info, "k")
        v = None if v is None else self._float_tokens(v, info, "v")
        if k is None and v is None:
            raise ValueError("give k, v or both")
        if k is not None and v is not None and k.shape != v.shape:
            raise ValueError(f"k and v differ in shape: {k.shape} and {v.shape}")
        n = _ranges.uint32("n_tokens", (k if k is not None else v).shape[0])
        k_out = None if k is None else np.empty_like(k)
        v_out = None if v is None else np.empty_like(v)
        check(self._lib.commvq_codebook_reconstruct(self._live(), layer, n, _floats(k), _floats(v), _floats(k_out),
                                                    _floats(v_out)))
        return k_out, v_out

    @staticmethod
    def _float_tokens(x: ArrayLike, info: Dict[str, Any], name: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        want = (info["n_kv_heads"], info["head_dim"])
        if x.ndim != 3 or x.shape[1:] != want or x.shape[0] == 0:
            raise ValueError(f"{name} must be [n, {want[0]}, {want[1]}], got {list(x.shape)}")
        return x

    def close(self) -> None:
        """Frees the codebook; later calls raise ValueError. Closing twice is fine."""
        handle, self._handle = self._handle, None
        if handle:
            self._lib.commvq_codebook_free(handle)

    def __enter__(self) -> "Codebook":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None):
            self.close()

    def _live(self) -> "_api.CodebookPtr":
        if not self._handle:
            raise ValueError("the codebook is closed")
        return self._handle


def _floats(array: Optional[np.ndarray]) -> Any:
    """A float* to the array's data, or NULL for None."""
    return None if array is None else array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


_STORAGE = {"f32": _api.DTYPE_F32, "f16": _api.DTYPE_F16, "bf16": _api.DTYPE_BF16}


def _set_field(struct: ctypes.Structure, name: str, value: Any) -> None:
    if name not in dict(struct._fields_) or name in ("struct_size", "progress", "progress_user", "model_name",
                                                     "value_weights", "rope"):
        raise TypeError(f"{type(struct).__name__} has no settable field {name!r}")
    setattr(struct, name, _ranges.field(struct, name, value))


def _as_dict(struct: ctypes.Structure) -> Dict[str, Any]:
    out = {}
    for name, _ in struct._fields_:
        value = getattr(struct, name)
        out[name] = _as_dict(value) if isinstance(value, ctypes.Structure) else value
    return out
