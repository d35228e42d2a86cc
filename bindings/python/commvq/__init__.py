"""Python bindings of libcommvq (ctypes + NumPy; torch tensors accepted, torch optional).

    import numpy as np, commvq
    with commvq.Codebook.load("model.cvq.safetensors") as cb, \
         commvq.Cache(cb, window=128, max_tokens=1 << 16) as cache:
        cache.append(layer, seq, k, v)          # [n, n_kv_heads, head_dim]
        out, lse = cache.attend(layer, seq, q)  # q [n, n_q_heads, head_dim]

The library is found through load_library(path), $COMMVQ_LIBRARY, the copy
bundled in the installed wheel, or the system's search path, in that order
(docs/BINDINGS.md).
"""

from ._api import (ATTEND_CAUSAL, ATTEND_NON_CAUSAL, DEVICE_CPU, DTYPE_BF16, DTYPE_F16, DTYPE_F32,
                   ERR_CANCELLED, ERR_CAPACITY, ERR_CODEBOOK_MISMATCH, ERR_CORRUPT, ERR_CUDA, ERR_FORMAT,
                   ERR_INTERNAL, ERR_INVALID_ARGUMENT, ERR_INVALID_STATE, ERR_IO, ERR_NOT_SUPPORTED,
                   ERR_OUT_OF_MEMORY, ERR_OUT_OF_RANGE, ERR_SHAPE_MISMATCH, KEYS_POST_ROPE, KEYS_PRE_ROPE, OK,
                   PAIRS_INTERLEAVED, PAIRS_ROTATE_HALF, ROPE_SCALING_LINEAR, ROPE_SCALING_LLAMA3,
                   ROPE_SCALING_NONE, SCALE_HEAD, SCALE_TOKEN, VERSION_MAJOR, LoadError, library, library_path,
                   load_library)
from . import _ranges
from .cache import Cache
from .codebook import Codebook
from .errors import CommvqError, TensorError


def version() -> str:
    """The loaded library's version string."""
    return library().commvq_version_string().decode()


def version_number() -> int:
    return library().commvq_version_number()


def status_string(status: int) -> str:
    return library().commvq_status_string(_ranges.int32("status", status)).decode()


def cuda_available() -> bool:
    return bool(library().commvq_cuda_available())


def device_count() -> int:
    return library().commvq_device_count()
