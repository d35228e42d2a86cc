"""The exchanges of a slice cache, through torch.distributed (docs/PARALLEL.md).

A tensor-parallel rank holds a slice of the KV heads (Cache(kv_head_begin=...,
kv_head_count=...)). Before its tokens can be encoded it needs, from the other
ranks, the squared key norms of their heads (the token scale mode divides a
key by its norm over all heads) and their values (the value encoder reads
the whole value vector of a token). append() gathers both and appends; every
rank of the group must call it alike, in the same order, as with any
collective. The library itself never owns a communicator.

torch is imported by the caller: the tensors given here are torch tensors
on the cache's device (CPU tensors with the gloo backend, CUDA tensors
with NCCL).
"""

import sys
from typing import Any, Optional, Sequence

from . import _api
from .cache import Cache


def gather_heads(x: Any, dim: int, group: Optional[Any] = None) -> Any:
    """All ranks' x concatenated along dim in rank order (= head order: rank r
    holds heads [r * count, (r + 1) * count))."""
    torch = sys.modules["torch"]
    dist = torch.distributed
    world = dist.get_world_size(group)
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim)


def append(cache: Cache, layer: int, seq_ids: Sequence[int], k: Any, v: Any,
           group: Optional[Any] = None) -> None:
    """Appends the rank's new tokens to its slice cache: k, v the rank's heads,
    [n_seqs, kv_head_count, head_dim] or [n_seqs, n_tokens, kv_head_count,
    head_dim], contiguous torch tensors. Gathers the values of all heads and,
    in the token scale mode, the squared key norms, then
    commvq_cache_append_norms2. A cache of all heads just appends."""
    if cache.kv_head_count == cache.n_kv_heads:
        cache.append_batch(layer, seq_ids, k, v)
        return
    norms = None
    if cache.scale_mode == _api.SCALE_TOKEN:
        norms = gather_heads(cache.key_norms2(layer, seq_ids, k), 0, group)
    # The head axis is the one before head_dim in either layout.
    cache.append_norms2(layer, seq_ids, k, gather_heads(v, v.dim() - 2, group), norms)
