"""Buffers handed to the cache calls: NumPy arrays, or torch tensors passed by pointer.

A torch tensor is used where it lies, never copied: a CUDA tensor's device
pointer goes to a CUDA cache, a CPU tensor's pointer to a CPU cache. So the
tensor must already be what the cache reads: on the cache's device, in its
io dtype, contiguous, of the call's shape; anything else is a TensorError
naming the call, the argument and the sizes. (NumPy arrays keep their old
rule: converted and made contiguous, copying only when needed.)

torch is never imported here: a torch tensor can only exist once its user
imported torch, so sys.modules says whether an argument may be one, and
NumPy-only programs never load it.

The checks work on plain descriptions (TensorInfo), so they are tested
without torch; describe() is the only place that reads a tensor.
"""

import sys
from typing import Any, NamedTuple, Optional, Tuple

from . import _api
from .errors import TensorError

# io dtype -> the torch dtype's name (str(torch.float32) == "torch.float32")
_TORCH_DTYPES = {_api.DTYPE_F32: "torch.float32", _api.DTYPE_F16: "torch.float16", _api.DTYPE_BF16: "torch.bfloat16"}


class TensorInfo(NamedTuple):
    """What the checks need of a tensor: device ("cpu", "cuda:0"), dtype name, shape, contiguity."""
    device: str
    dtype: str
    shape: Tuple[int, ...]
    contiguous: bool


def is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def describe(x: Any) -> TensorInfo:
    """The TensorInfo of a torch tensor."""
    device = "cpu" if x.device.type == "cpu" else f"{x.device.type}:{x.device.index or 0}"
    return TensorInfo(device, str(x.dtype), tuple(x.shape), bool(x.is_contiguous()))


def device_name(cache_device: int) -> str:
    return "cpu" if cache_device == _api.DEVICE_CPU else f"cuda:{cache_device}"


def _check_place(call: str, name: str, info: TensorInfo, cache_device: int, io_dtype: int) -> None:
    """The tensor's device and dtype must be the cache's."""
    want_device = device_name(cache_device)
    if info.device != want_device:
        raise TensorError(_api.ERR_INVALID_ARGUMENT,
                          f"{call}: {name} is on {info.device}, the cache on {want_device} "
                          f"(tensors are passed by pointer, never copied: move it first)")
    want_dtype = _TORCH_DTYPES[io_dtype]
    if info.dtype != want_dtype:
        raise TensorError(_api.ERR_INVALID_ARGUMENT,
                          f"{call}: {name} is {info.dtype}, the cache's io dtype is {want_dtype}")


def check(call: str, name: str, info: TensorInfo, cache_device: int, io_dtype: int,
          rows: Optional[int], heads: int, head_dim: int) -> int:
    """Checks one tensor argument of `call`; returns its row count (tokens, queries or sequences).

    The shape is [rows, heads, head_dim] or [rows, heads * head_dim]; rows=None
    accepts any count (the first tensor of a call fixes it for the others).
    """
    _check_place(call, name, info, cache_device, io_dtype)
    shape = info.shape
    flat = len(shape) == 2 and shape[1] == heads * head_dim
    if not (flat or (len(shape) == 3 and shape[1:] == (heads, head_dim))) or \
            (rows is not None and shape[0] != rows):
        n = "n" if rows is None else str(rows)
        raise TensorError(_api.ERR_SHAPE_MISMATCH,
                          f"{call}: {name} must be [{n}, {heads}, {head_dim}] (or [{n}, {heads * head_dim}]), "
                          f"got {list(shape)}")
    if not info.contiguous:
        raise TensorError(_api.ERR_INVALID_ARGUMENT,
                          f"{call}: {name} of shape {list(shape)} is not contiguous (call .contiguous() first)")
    return shape[0]


def batch_tokens(shape: Tuple[int, ...], heads: int, head_dim: int) -> Optional[int]:
    """Tokens per row of a batch of keys or values (append_batch), or None for another shape:
    [rows, heads, head_dim] and [rows, heads * head_dim] hold one token per row,
    [rows, tokens, heads, head_dim] and [rows, tokens, heads * head_dim] `tokens`."""
    if len(shape) == 2 and shape[1] == heads * head_dim:
        return 1
    if len(shape) == 3 and shape[1:] == (heads, head_dim):
        return 1
    if len(shape) == 3 and shape[2] == heads * head_dim:
        return shape[1]
    if len(shape) == 4 and shape[2:] == (heads, head_dim):
        return shape[1]
    return None


def check_batch(call: str, name: str, info: TensorInfo, cache_device: int, io_dtype: int, rows: int,
                tokens: Optional[int], heads: int, head_dim: int) -> int:
    """Checks a keys or values tensor of append_batch (shapes as batch_tokens says, `rows`
    rows); returns its tokens per row. tokens=None accepts any count (k fixes it for v)."""
    _check_place(call, name, info, cache_device, io_dtype)
    found = batch_tokens(info.shape, heads, head_dim)
    if found is None or info.shape[0] != rows or (tokens is not None and found != tokens):
        n = "n_tokens" if tokens is None else str(tokens)
        raise TensorError(_api.ERR_SHAPE_MISMATCH,
                          f"{call}: {name} must be [{rows}, {heads}, {head_dim}] (one token per sequence) or "
                          f"[{rows}, {n}, {heads}, {head_dim}] (or with {heads * head_dim} for the last two), "
                          f"got {list(info.shape)}")
    if not info.contiguous:
        raise TensorError(_api.ERR_INVALID_ARGUMENT,
                          f"{call}: {name} of shape {list(info.shape)} is not contiguous (call .contiguous() first)")
    return found


def check_output(call: str, name: str, info: TensorInfo, cache_device: int, dtype: str,
                 shape: Tuple[int, ...]) -> None:
    """Checks a caller-given output tensor (out= or lse=): exactly this device, dtype and shape, contiguous."""
    want_device = device_name(cache_device)
    if info.device != want_device or info.dtype != dtype or info.shape != shape or not info.contiguous:
        raise TensorError(_api.ERR_SHAPE_MISMATCH,
                          f"{call}: {name} must be a contiguous {dtype} tensor of shape {list(shape)} on "
                          f"{want_device}, got {info.dtype} {list(info.shape)} on {info.device}"
                          + ("" if info.contiguous else " (not contiguous)"))


def torch_dtype_name(io_dtype: int) -> str:
    return _TORCH_DTYPES[io_dtype]
