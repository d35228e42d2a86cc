"""Range checks for every integer that crosses into ctypes.

ctypes converts a Python int to a fixed-width C integer by truncation: without
these checks, layer=2**33+1 reaches the library as layer 1 and max_tokens=1<<64
as 0, silently. Each check names the argument in its ValueError (TypeError for
something that is not an integer at all).
"""

import ctypes
import operator
from typing import Any, Dict, Tuple, Type

import numpy as np

# The C integer types of commvq.h, as (smallest, largest) value.
_LIMITS: Dict[Type[Any], Tuple[int, int]] = {
    ctypes.c_uint16: (0, 2**16 - 1),
    ctypes.c_int32: (-(2**31), 2**31 - 1),
    ctypes.c_uint32: (0, 2**32 - 1),
    ctypes.c_uint64: (0, 2**64 - 1),
    ctypes.c_size_t: (0, 2**(8 * ctypes.sizeof(ctypes.c_size_t)) - 1),
    ctypes.c_void_p: (0, 2**(8 * ctypes.sizeof(ctypes.c_void_p)) - 1),
}


def integer(name: str, value: Any, c_type: Type[Any]) -> int:
    """value as a Python int that fits c_type, else ValueError naming `name`.

    Accepts anything with __index__ (int, NumPy integers), never a float or a
    string, which ctypes would also truncate or refuse less clearly.
    """
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    low, high = _LIMITS[c_type]
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {number}")
    return number


def uint32(name: str, value: Any) -> int:
    return integer(name, value, ctypes.c_uint32)


def uint64(name: str, value: Any) -> int:
    return integer(name, value, ctypes.c_uint64)


def int32(name: str, value: Any) -> int:
    return integer(name, value, ctypes.c_int32)


def uint32_array(name: str, values: Any) -> np.ndarray:
    """A contiguous uint32 copy of an integer array, every element checked:
    np.asarray(..., dtype=np.uint32) would wrap -1 to 4294967295."""
    array = np.asarray(values)
    if array.size == 0:
        return np.ascontiguousarray(array, dtype=np.uint32)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 2**32 - 1:
        bad = low if low < 0 else high
        raise ValueError(f"{name} must hold values in [0, {2**32 - 1}], got {bad}")
    return np.ascontiguousarray(array, dtype=np.uint32)


def field(struct: ctypes.Structure, name: str, value: Any) -> Any:
    """value checked for the ctypes field `name` of `struct`: integers by
    their C type's range, floating-point fields as Python floats."""
    c_type = dict(struct._fields_)[name]
    if c_type in _LIMITS:
        return integer(name, value, c_type)
    if c_type in (ctypes.c_float, ctypes.c_double):
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    return value
