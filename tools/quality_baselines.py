"""Scalar KV-cache quantizers the quality harness compares CommVQ with.

Both are "fake quantization": they return the dequantized tensors, which the
harness then feeds to exact attention, as the CommVQ paper did for its
baselines. Scales and zero points are rounded to float16, as they would be
stored, and counted in each method's bits per element.

* KIVI (Liu et al., 2024): keys quantized per channel in groups of G = 32
  consecutive tokens, values per token in groups of G = 32 channels;
  asymmetric min/max with 2^b levels. Recent tokens stay exact: the window,
  plus the tokens that do not yet fill a key group (KIVI keeps those in full
  precision until the group is complete). Bits per element: b + 2*16/G.
* Per-token scalar quantization: each head vector of a token (group = head_dim
  elements, 128 for bytellama) quantized asymmetrically with 2^b levels. Bits
  per element: b + 2*16/head_dim.

Keys are quantized after RoPE, as these methods store them in a cache.
Tensors are [T, H, d] torch tensors; the window is the last `window` tokens.
"""

import torch

KIVI_GROUP = 32


def _fake_quant(x, dim, bits):
    """Asymmetric min/max quantization of x along `dim` with fp16 scale and zero."""
    lo = x.amin(dim=dim, keepdim=True).half().float()
    hi = x.amax(dim=dim, keepdim=True)
    scale = ((hi - lo) / (2 ** bits - 1)).half().float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((x - lo) / safe), 0, 2 ** bits - 1)
    return torch.where(scale > 0, q * scale + lo, lo)


def kivi_quantized_tokens(n_tokens, window):
    """How many leading tokens KIVI holds quantized: whole key groups only."""
    return max(n_tokens - window, 0) // KIVI_GROUP * KIVI_GROUP


def kivi(k, v, bits, window):
    """KIVI fake quantization of post-RoPE keys and values [T, H, d]."""
    T, H, d = k.shape
    n = kivi_quantized_tokens(T, window)
    k_hat, v_hat = k.clone(), v.clone()
    if n:
        # Keys: per channel over groups of 32 tokens -> [groups, 32, H, d], min/max over dim 1.
        kg = k[:n].reshape(n // KIVI_GROUP, KIVI_GROUP, H, d)
        k_hat[:n] = _fake_quant(kg, 1, bits).reshape(n, H, d)
        # Values: per token over groups of 32 channels -> [n, H, d/32, 32], min/max over the last dim.
        vg = v[:n].reshape(n, H, d // KIVI_GROUP, KIVI_GROUP)
        v_hat[:n] = _fake_quant(vg, 3, bits).reshape(n, H, d)
    return k_hat, v_hat


def kivi_bits(bits):
    return bits + 2 * 16 / KIVI_GROUP


def per_token(k, v, bits, window):
    """Per-token, per-head asymmetric fake quantization of keys and values [T, H, d]."""
    n = max(k.shape[0] - window, 0)
    k_hat, v_hat = k.clone(), v.clone()
    if n:
        k_hat[:n] = _fake_quant(k[:n], 2, bits)
        v_hat[:n] = _fake_quant(v[:n], 2, bits)
    return k_hat, v_hat


def per_token_bits(bits, head_dim):
    return bits + 2 * 16 / head_dim
