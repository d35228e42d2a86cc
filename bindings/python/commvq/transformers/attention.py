"""The "commvq" attention implementation for transformers' AttentionInterface.

    fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs) -> (out, None)

query [B, Hq, T, d] post-RoPE, key and value [B, Hkv, T, d] as the layer's
past_key_values.update() returned them; out [B, T, Hq, d]. When they came
from a CommvqCache, the cache appends them and attends (cache.py says how);
otherwise (no cache, or another Cache class) this is plain SDPA, so one
model loaded with attn_implementation="commvq" runs with either cache.

The mask function registered beside it is SDPA's, so the attention function
gets SDPA's boolean masks (or None when causal attention needs none).
"""

from typing import Any, Optional, Tuple

import torch
import transformers
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .cache import pending_cache

NAME = "commvq"


def commvq_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None,
                     dropout: float = 0.0, **kwargs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    cache = pending_cache(getattr(module, "layer_idx", -1), key)
    if cache is None:
        return sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout and module.training:
        raise ValueError("commvq attention: attention dropout in training mode; the cache is for inference")
    return cache.attend(module, query, key, value, attention_mask, scaling, sdpa, **kwargs)


def register(name: str = NAME) -> None:
    """Registers the attention function and its mask under `name` (done on import)."""
    transformers.AttentionInterface.register(name, commvq_attention)
    AttentionMaskInterface.register(name, sdpa_mask)
