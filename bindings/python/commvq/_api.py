"""The C API of libcommvq as ctypes declarations, and loading the library.

This is a dlopen loader: the declarations below are copied from
include/commvq/commvq.h by hand, so bindings/tools/check_declarations.py
compares them with the header in CI. Everything else in the package is built
on `library()`.
"""

import ctypes
import ctypes.util
import os
import threading
from typing import Optional
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_float, c_int32, c_size_t,
                    c_uint16, c_uint32, c_uint64, c_void_p)

# ---- constants (commvq.h) ----------------------------------------------------
VERSION_MAJOR = 0  # the major this package was written for

OK = 0
ERR_INVALID_ARGUMENT = 1
ERR_SHAPE_MISMATCH = 2
ERR_OUT_OF_RANGE = 3
ERR_INVALID_STATE = 4
ERR_CAPACITY = 10
ERR_OUT_OF_MEMORY = 11
ERR_IO = 20
ERR_FORMAT = 21
ERR_CORRUPT = 22
ERR_CODEBOOK_MISMATCH = 23
ERR_NOT_SUPPORTED = 30
ERR_CUDA = 31
ERR_CANCELLED = 32
ERR_INTERNAL = 99

DEVICE_CPU = -1

DTYPE_F32 = 0
DTYPE_F16 = 1
DTYPE_BF16 = 2

KEYS_PRE_ROPE = 0
KEYS_POST_ROPE = 1

PAIRS_ROTATE_HALF = 0
PAIRS_INTERLEAVED = 1

SCALE_TOKEN = 0
SCALE_HEAD = 1

ROPE_SCALING_NONE = 0
ROPE_SCALING_LINEAR = 1
ROPE_SCALING_LLAMA3 = 2

ATTEND_CAUSAL = 0
ATTEND_NON_CAUSAL = 1


# ---- types -------------------------------------------------------------------
class _Codebook(Structure):
    """commvq_codebook_t (opaque)."""


class _Cache(Structure):
    """commvq_cache_t (opaque)."""


CodebookPtr = POINTER(_Codebook)
CachePtr = POINTER(_Cache)
Status = c_int32
ProgressFn = CFUNCTYPE(c_int32, c_void_p, c_char_p, c_double)


class RopeInfo(Structure):
    _fields_ = [
        ("theta", c_double),
        ("scaling", c_int32),
        ("factor", c_double),
        ("low_freq_factor", c_double),
        ("high_freq_factor", c_double),
        ("original_max_position", c_double),
    ]


class CodebookInfo(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_layers", c_uint32),
        ("n_kv_heads", c_uint32),
        ("n_q_heads", c_uint32),
        ("head_dim", c_uint32),
        ("key_stages", c_uint32),
        ("sub_centers", c_uint32),
        ("value_bits", c_uint32),
        ("value_hidden", c_uint32),
        ("pair_layout", c_int32),
        ("scale_mode", c_int32),
        ("format_version", c_uint32),
        ("rope", RopeInfo),
        ("fingerprint", c_uint64),
        ("compressed_token_bytes", c_uint32),
        ("reserved_", c_uint32),
    ]


class CacheParams(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("device", c_int32),
        ("max_seqs", c_uint32),
        ("max_tokens", c_uint64),
        ("block_tokens", c_uint32),
        ("window", c_uint32),
        ("sink_tokens", c_uint32),
        ("io_dtype", c_int32),
        ("key_convention", c_int32),
        ("attn_scale", c_float),
        ("n_threads", c_uint32),
        ("kv_head_begin", c_uint32),
        ("kv_head_count", c_uint32),
    ]


class CacheStats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_seqs_used", c_uint32),
        ("tokens", c_uint64),
        ("compressed_tokens", c_uint64),
        ("blocks_used", c_uint64),
        ("blocks_total", c_uint64),
        ("tokens_free", c_uint64),
        ("bytes_compressed", c_uint64),
        ("bytes_window", c_uint64),
        ("bytes_codebook", c_uint64),
        ("bytes_reserved", c_uint64),
        ("bytes_per_compressed_token", c_double),
        ("bytes_per_token_16bit", c_double),
    ]


class TrainParams(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("value_bits", c_uint32),
        ("key_stages", c_uint32),
        ("sub_centers", c_uint32),
        ("pair_layout", c_int32),
        ("scale_mode", c_int32),
        ("n_q_heads", c_uint32),
        ("rope", RopeInfo),
        ("max_samples", c_uint64),
        ("key_max_steps", c_uint32),
        ("value_steps", c_uint32),
        ("value_batch", c_uint32),
        ("value_lr", c_float),
        ("seed", c_uint64),
        ("n_threads", c_uint32),
        ("device", c_int32),
        ("progress", ProgressFn),
        ("progress_user", c_void_p),
        ("value_hidden", c_uint32),
        ("model_name", c_char_p),
        ("value_weights", POINTER(c_float)),
    ]


# (name, return type, argument types), in the header's order.
FUNCTIONS = (
    ("commvq_version_number", c_uint32, ()),
    ("commvq_version_string", c_char_p, ()),
    ("commvq_status_string", c_char_p, (Status,)),
    ("commvq_last_error", c_char_p, ()),
    ("commvq_cuda_available", c_int32, ()),
    ("commvq_device_count", c_int32, ()),
    ("commvq_codebook_info_init", None, (POINTER(CodebookInfo),)),
    ("commvq_codebook_load", Status, (c_char_p, POINTER(CodebookPtr))),
    ("commvq_codebook_load_memory", Status, (c_void_p, c_size_t, POINTER(CodebookPtr))),
    ("commvq_codebook_save", Status, (CodebookPtr, c_char_p)),
    ("commvq_codebook_save_as", Status, (CodebookPtr, c_char_p, c_int32)),
    ("commvq_codebook_free", None, (CodebookPtr,)),
    ("commvq_codebook_get_info", Status, (CodebookPtr, POINTER(CodebookInfo))),
    ("commvq_codebook_encode_keys", Status,
     (CodebookPtr, c_uint32, c_uint32, POINTER(c_float), POINTER(c_uint16), POINTER(c_float))),
    ("commvq_codebook_reconstruct", Status,
     (CodebookPtr, c_uint32, c_uint32, POINTER(c_float), POINTER(c_float), POINTER(c_float), POINTER(c_float))),
    ("commvq_cache_params_init_size", None, (POINTER(CacheParams), c_size_t)),
    ("commvq_cache_params_init", None, (POINTER(CacheParams),)),
    ("commvq_cache_create", Status, (CodebookPtr, POINTER(CacheParams), POINTER(CachePtr))),
    ("commvq_cache_destroy", None, (CachePtr,)),
    ("commvq_cache_append", Status, (CachePtr, c_uint32, c_uint32, c_uint32, c_void_p, c_void_p)),
    ("commvq_cache_append_batch", Status,
     (CachePtr, c_uint32, c_uint32, POINTER(c_uint32), c_uint32, c_void_p, c_void_p)),
    ("commvq_cache_key_norms2", Status,
     (CachePtr, c_uint32, c_uint32, POINTER(c_uint32), c_uint32, c_void_p, POINTER(c_double))),
    ("commvq_cache_append_norms2", Status,
     (CachePtr, c_uint32, c_uint32, POINTER(c_uint32), c_uint32, c_void_p, c_void_p, POINTER(c_double))),
    ("commvq_cache_attend", Status,
     (CachePtr, c_uint32, c_uint32, c_uint32, c_void_p, c_void_p, POINTER(c_float), c_uint32)),
    ("commvq_cache_attend_batch", Status,
     (CachePtr, c_uint32, c_uint32, POINTER(c_uint32), c_void_p, c_void_p, POINTER(c_float), c_uint32)),
    ("commvq_cache_seq_length", Status, (CachePtr, c_uint32, POINTER(c_uint64))),
    ("commvq_cache_seq_clear", Status, (CachePtr, c_uint32)),
    ("commvq_cache_seq_truncate", Status, (CachePtr, c_uint32, c_uint64)),
    ("commvq_cache_seq_fork", Status, (CachePtr, c_uint32, c_uint32)),
    ("commvq_cache_stats_init", None, (POINTER(CacheStats),)),
    ("commvq_cache_get_stats", Status, (CachePtr, POINTER(CacheStats))),
    ("commvq_cache_seq_save", Status, (CachePtr, c_uint32, c_char_p)),
    ("commvq_cache_seq_load", Status, (CachePtr, c_uint32, c_char_p)),
    ("commvq_cache_set_stream", Status, (CachePtr, c_void_p)),
    ("commvq_cache_synchronize", Status, (CachePtr,)),
    ("commvq_train_params_init", None, (POINTER(TrainParams),)),
    ("commvq_train", Status,
     (POINTER(TrainParams), c_uint32, c_uint32, c_uint32, c_uint64, POINTER(c_float), POINTER(c_float),
      POINTER(CodebookPtr))),
)


# ---- loading -------------------------------------------------------------------
class LoadError(OSError):
    """The library could not be loaded, lacks a symbol, or has another major version."""


_library: Optional[ctypes.CDLL] = None
_library_lock = threading.Lock()

# Where an installed wheel keeps its copy of the library (see pyproject.toml);
# a source checkout on sys.path has none there.
BUNDLED_LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libcommvq.so")
# Where `cmake --install` puts the package (LIBDIR/python3/site-packages/commvq)
# and the library (LIBDIR/libcommvq.so.0) of the same prefix.
PREFIX_LIBRARY = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                               "libcommvq.so.0"))


def _default_path() -> str:
    """$COMMVQ_LIBRARY, else the wheel's own copy, else the library of the
    prefix the package was installed into, else the system's.

    The bundled copy comes before the system's search path so that a wheel
    keeps working, unchanged, beside any other libcommvq on the machine.
    """
    explicit = os.environ.get("COMMVQ_LIBRARY")
    if explicit:
        return explicit
    for path in (BUNDLED_LIBRARY, PREFIX_LIBRARY):
        if os.path.exists(path):
            return path
    return ctypes.util.find_library("commvq") or "libcommvq.so.0"


def open_library(path: str) -> ctypes.CDLL:
    """Loads libcommvq from `path` and declares its functions, without making
    it the package's library (load_library does that).

    Checks the major version first, then resolves every symbol, so a missing
    one is reported at load time, by name.
    """
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise LoadError(f"cannot load libcommvq from {path}: {e}") from None
    for symbol, restype, argtypes in FUNCTIONS:
        try:
            function = getattr(lib, symbol)
        except AttributeError:
            raise LoadError(f"{path} lacks the symbol {symbol}") from None
        function.restype = restype
        function.argtypes = argtypes
        if symbol == "commvq_version_number":  # first: another major may lack other symbols
            found = function()
            if found // 10000 != VERSION_MAJOR:
                raise LoadError(f"{path} has version {found}; this package needs major version {VERSION_MAJOR}")
    return lib


def load_library(path: Optional[str] = None) -> ctypes.CDLL:
    """Loads libcommvq once per process and returns the ctypes handle.

    `path` (or $COMMVQ_LIBRARY) names the file; otherwise the copy bundled in
    the installed wheel is used, and without one the system's search path
    (ldconfig, LD_LIBRARY_PATH). Later calls return the already loaded
    library; asking for a different file then is an error.
    """
    global _library
    with _library_lock:
        if _library is not None:
            if path is not None and os.path.realpath(path) != os.path.realpath(_library._name):
                raise LoadError(f"libcommvq is already loaded from {_library._name}")
            return _library
        _library = open_library(path or _default_path())
        return _library


def library() -> ctypes.CDLL:
    """The loaded library, loading it from the default place on first use."""
    return _library if _library is not None else load_library()


def library_path() -> str:
    """The file the library was loaded from (as given to dlopen)."""
    return library()._name
