#!/usr/bin/python3
"""A minimal, readable LLaMA-family forward pass for collecting and testing KV caches.

Why this exists: the project needs real keys, values and queries from a trained
transformer (random tensors lack outlier channels and RoPE-frequency
structure), and a way to route attention through libcommvq to measure quality.
There is no `transformers` or `safetensors` package on the build machines, so
this file carries its own small safetensors reader/writer and a plain fp32
torch implementation of the Hugging Face `LlamaForCausalLM` forward pass.

Supported: GQA, rotate-half RoPE (rope_type default / linear / llama3, theta
from `rope_parameters.rope_theta` or `rope_theta`), RMSNorm, SwiGLU, optional
q/k/v/o and MLP biases (Qwen2 has q/k/v biases), optional per-head q_norm/k_norm
(Qwen3), tied or untied LM head. One sequence at a time, no KV cache: every
forward pass sees the whole chunk, which is what collection and quality runs
need.

The hook that matters:

    model.forward(tokens, attention_fn=None, capture=None)

`attention_fn(layer, q, k, v, positions) -> out` replaces the attention of every
layer. q [T, Hq, d] is post-RoPE, k [T, Hkv, d] is PRE-RoPE and v [T, Hkv, d],
all fp32; out must be [T, Hq, d] (the softmax(qk^T/sqrt(d)) v result, before
o_proj). Keys are handed over before RoPE because that is what CommVQ
quantises; the callback applies RoPE itself (`model.rope`) or uses
`model.reference_attention`, which does. `capture`, a dict, receives
capture[layer] = {"q": post-RoPE queries, "k": pre-RoPE keys, "v": values}.

Run `/usr/bin/python3 tools/bytellama.py --selftest` to check the model: it
should print about 1.81 bits per byte on the four short eval-dev essays.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

# ---------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, a JSON header mapping each
# tensor name to {dtype, shape, data_offsets: [begin, end)} (offsets relative
# to the end of the header) plus an optional "__metadata__" str->str dict, then
# the raw little-endian tensor bytes.
# ---------------------------------------------------------------------------

# numpy has no bfloat16, so BF16 is read as uint16 and widened by hand below.
_ST_TO_NP = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}
_NP_TO_ST = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
             np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
             np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
             np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8",
             np.dtype(np.bool_): "BOOL"}


def read_safetensors_header(path):
    """Returns (header dict without __metadata__, metadata dict, data start offset)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    return header, meta, 8 + n


def read_safetensors(path):
    """Reads a whole safetensors file. Returns ({name: np.ndarray}, metadata).

    Arrays keep the stored dtype, except BF16 which becomes float32 (numpy has
    no bfloat16; widening is exact).
    """
    header, meta, start = read_safetensors_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        blob = f.read()
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        dt = info["dtype"]
        if dt not in _ST_TO_NP:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dt}")
        arr = np.frombuffer(blob[b:e], dtype=np.dtype(_ST_TO_NP[dt]).newbyteorder("<"))
        if dt == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.reshape(info["shape"]).copy()
    return out, meta


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: np.ndarray or torch.Tensor} in insertion order.

    metadata must be str->str (the format requires it). The header is padded
    with spaces to a multiple of 8 bytes so every tensor starts 8-aligned,
    which lets C/C++ readers mmap and cast the data directly.
    """
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"safetensors metadata must be str->str, got {k!r}: {v!r}")
        header["__metadata__"] = dict(metadata)
    arrays = []
    offset = 0
    for name, t in tensors.items():
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        if a.dtype not in _NP_TO_ST:
            raise ValueError(f"tensor {name}: unsupported dtype {a.dtype}")
        header[name] = {"dtype": _NP_TO_ST[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)  # never leave a half-written fixture behind


# ---------------------------------------------------------------------------
# Config and RoPE
# ---------------------------------------------------------------------------

def rope_settings(cfg):
    """Returns (theta, rope_type, scaling params dict) from a HF config.

    transformers >= 5 writes `rope_parameters: {rope_type, rope_theta, ...}`;
    older configs have top-level `rope_theta` and an optional `rope_scaling`
    dict that names its kind with `rope_type` or (older still) `type`.
    """
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = merged.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = merged.pop("rope_type", None) or merged.pop("type", None) or "default"
    merged.pop("type", None)
    if rope_type not in ("default", "linear", "llama3"):
        raise NotImplementedError(f"rope_type {rope_type!r} is not supported")
    # Keep only the parameters the chosen kind actually uses, so the metadata
    # we write later says exactly what was applied.
    used = {"default": (), "linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings")}[rope_type]
    extra = {k: merged[k] for k in used}
    return float(theta), rope_type, extra


def rope_inv_freq(head_dim, theta, rope_type, p):
    """Inverse frequencies for the d/2 rotation pairs, as HF computes them."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope_type == "linear":
        # Linear (position-interpolation) scaling: positions divided by factor.
        inv = inv / p["factor"]
    elif rope_type == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept,
        # and the band in between is interpolated smoothly.
        factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old_ctx = p["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_ctx / lo, old_ctx / hi
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def query_heads(kv_head, group):
    """The query heads that read KV head kv_head under GQA (query head h reads
    KV head h // group, as reference_attention's repeat_interleave has it)."""
    return slice(kv_head * group, (kv_head + 1) * group)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] along the last dim: dim j pairs with j + d/2."""
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def load_weights(model_dir):
    """Loads all tensors of a HF checkpoint (sharded or single file) as fp32 torch."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        arrays, _ = read_safetensors(os.path.join(model_dir, name))
        for k, a in arrays.items():
            weights[k] = torch.from_numpy(a.astype(np.float32))
    return weights


class Llama:
    def __init__(self, model_dir, device="cpu"):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.config = cfg
        self.name = os.path.basename(os.path.normpath(model_dir))
        self.device = torch.device(device)
        self.n_layers = cfg["num_hidden_layers"]
        self.n_q_heads = cfg["num_attention_heads"]
        self.n_kv_heads = cfg.get("num_key_value_heads", self.n_q_heads)
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.n_q_heads
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        if cfg.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"hidden_act {cfg['hidden_act']!r}")
        if cfg.get("partial_rotary_factor", 1.0) != 1.0:
            raise NotImplementedError("partial_rotary_factor != 1")
        self.rope_theta, self.rope_type, self.rope_params = rope_settings(cfg)
        self.inv_freq = rope_inv_freq(self.head_dim, self.rope_theta, self.rope_type,
                                      self.rope_params).to(self.device)

        w = {k: v.to(self.device) for k, v in load_weights(model_dir).items()}
        self.embed = w.pop("model.embed_tokens.weight")
        self.final_norm = w.pop("model.norm.weight")
        # Tied embeddings (small Qwen/Llama 3.2) ship no lm_head.weight.
        self.lm_head = w.pop("lm_head.weight", None)
        if self.lm_head is None:
            self.lm_head = self.embed
        self.layers = []
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            L = {}
            for short, full in [
                ("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm"),
                ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"),
                ("v", "self_attn.v_proj"), ("o", "self_attn.o_proj"),
                ("q_norm", "self_attn.q_norm"), ("k_norm", "self_attn.k_norm"),
                ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"), ("down", "mlp.down_proj"),
            ]:
                # Biases are optional: present for Qwen2 q/k/v, or everywhere
                # with attention_bias / mlp_bias; absent for plain LLaMA.
                L[short] = w.pop(p + full + ".weight", None)
                L[short + "_b"] = w.pop(p + full + ".bias", None)
            for req in ("ln1", "ln2", "q", "k", "v", "o", "gate", "up", "down"):
                if L[req] is None:
                    raise KeyError(f"missing weight for layer {i}: {req}")
            self.layers.append(L)
        # Anything left over is a feature this file does not implement; failing
        # here beats silently computing the wrong function.
        leftover = [k for k in w if not k.endswith("rotary_emb.inv_freq")]
        if leftover:
            raise NotImplementedError(f"unused weights (unsupported architecture?): {leftover[:5]}")

    # -- RoPE ---------------------------------------------------------------
    def rope_cos_sin(self, positions):
        """cos/sin tables [T, 1, d] for integer positions [T]."""
        freqs = positions.to(self.device, torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # pair j and j + d/2 share a frequency
        return emb.cos()[:, None, :], emb.sin()[:, None, :]

    def rope(self, x, positions):
        """Applies rotate-half RoPE to x [T, H, d] at the given positions [T]."""
        cos, sin = self.rope_cos_sin(positions)
        return x * cos + rotate_half(x) * sin

    # -- attention ----------------------------------------------------------
    def reference_attention(self, layer, q, k, v, positions):
        """Exact causal softmax attention; same signature as attention_fn.

        q [T, Hq, d] post-RoPE, k [T, Hkv, d] pre-RoPE, v [T, Hkv, d].
        Causality is by position, so a callback may pass a subset of queries
        (positions[-len(q):]) as long as keys cover positions 0..T-1.
        """
        T = k.shape[0]
        kpos = positions[-T:] if positions.shape[0] >= T else torch.arange(T, device=k.device)
        k = self.rope(k, kpos)
        group = self.n_q_heads // self.n_kv_heads
        # GQA: query head h reads KV head h // group (query_heads).
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        qpos = positions[-q.shape[0]:]
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(self.head_dim)
        mask = kpos[None, :] > qpos[:, None]
        scores = scores.masked_fill(mask[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return torch.einsum("hqk,khd->qhd", probs, v)

    # -- forward ------------------------------------------------------------
    @torch.no_grad()
    def forward(self, tokens, attention_fn=None, capture=None):
        """Logits [T, vocab] (fp32) for one sequence of token ids, positions 0..T-1.

        attention_fn(layer, q_post_rope, k_pre_rope, v, positions) -> [T, Hq, d]
        replaces attention (default: reference_attention). If capture is a
        dict, capture[layer] gets {"q", "k", "v"} as described in the module
        docstring.
        """
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        T = tokens.shape[0]
        positions = torch.arange(T, device=self.device)
        attn = attention_fn or self.reference_attention
        Hq, Hkv, d = self.n_q_heads, self.n_kv_heads, self.head_dim

        def linear(x, L, name):
            y = x @ L[name].T
            return y if L[name + "_b"] is None else y + L[name + "_b"]

        x = self.embed[tokens]
        for i, L in enumerate(self.layers):
            h = rms_norm(x, L["ln1"], self.eps)
            q = linear(h, L, "q").view(T, Hq, d)
            k = linear(h, L, "k").view(T, Hkv, d)
            v = linear(h, L, "v").view(T, Hkv, d)
            if L["q_norm"] is not None:  # Qwen3: per-head RMSNorm before RoPE
                q = rms_norm(q, L["q_norm"], self.eps)
                k = rms_norm(k, L["k_norm"], self.eps)
            q = self.rope(q, positions)
            if capture is not None:
                capture[i] = {"q": q, "k": k, "v": v}
            out = attn(i, q, k, v, positions)
            if tuple(out.shape) != (T, Hq, d):
                raise ValueError(f"attention_fn returned {tuple(out.shape)}, want {(T, Hq, d)}")
            x = x + linear(out.reshape(T, Hq * d).to(x.dtype), L, "o")
            h = rms_norm(x, L["ln2"], self.eps)
            x = x + linear(torch.nn.functional.silu(linear(h, L, "gate")) * linear(h, L, "up"),
                           L, "down")
        return rms_norm(x, self.final_norm, self.eps) @ self.lm_head.T


# ---------------------------------------------------------------------------
# Evaluation helpers
# ---------------------------------------------------------------------------

def chunk_bits(model, data, chunk=2048, attention_fn=None):
    """(total bits, bytes predicted) for `data` in independent chunks.

    Each chunk feeds bytes [s, s+chunk) and predicts [s+1, s+chunk+1), so every
    byte but the first of the file is predicted once, and each chunk starts
    from an empty context (the convention behind the model README's 1.81).
    """
    total, n = 0.0, 0
    for s in range(0, len(data) - 1, chunk):
        inp = torch.tensor(list(data[s:s + chunk]), dtype=torch.long)
        tgt = torch.tensor(list(data[s + 1:s + chunk + 1]), dtype=torch.long)
        inp = inp[:tgt.shape[0]]
        logits = model.forward(inp, attention_fn=attention_fn)
        nll = torch.nn.functional.cross_entropy(logits, tgt.to(logits.device), reduction="sum")
        total += nll.item() / math.log(2)
        n += tgt.shape[0]
    return total, n


def default_model_dir():
    """The checkout's shared/ (GPU machine) or /work/shared (dev machines)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for base in (os.path.join(here, "..", "shared"), "/work/shared"):
        p = os.path.join(base, "models", "bytellama-13m")
        if os.path.exists(os.path.join(p, "config.json")):
            return os.path.normpath(p)
    return "/work/shared/models/bytellama-13m"


def selftest(model, eval_dir):
    ok = True
    # 1. The callback path with the reference attention must reproduce the
    #    built-in path exactly, and capture must return pre-RoPE keys.
    data = open(os.path.join(eval_dir, "langdes.txt"), "rb").read()[:300]
    toks = torch.tensor(list(data))
    cap = {}
    a = model.forward(toks, capture=cap)
    b = model.forward(toks, attention_fn=lambda l, q, k, v, p: model.reference_attention(l, q, k, v, p))
    same = torch.equal(a, b)
    print(f"callback path identical to built-in path: {same}")
    ok &= same
    # RoPE convention check against the README: pair (j, j+64) rotated by
    # pos * theta^(-2j/d). Rotate key 0 of layer 1 by hand at position 37.
    k = cap[1]["k"][5, 0]
    d, pos = model.head_dim, 37
    j = torch.arange(d // 2, dtype=torch.float64)
    ang = pos * model.rope_theta ** (-2 * j / d)
    k64 = k.double()
    want = torch.cat((k64[:d // 2] * ang.cos() - k64[d // 2:] * ang.sin(),
                      k64[d // 2:] * ang.cos() + k64[:d // 2] * ang.sin()))
    got = model.rope(k[None, None], torch.tensor([pos]))[0, 0].double()
    err = (got - want).abs().max().item() / want.abs().max().item()
    print(f"RoPE vs hand-rolled rotate-half: rel err {err:.2e}")
    ok &= err < 1e-5
    # 2. Bits per byte on the four short essays, independent 2048-byte chunks.
    total, n = 0.0, 0
    for name in ("langdes", "laundry", "vcsqueeze", "pow"):
        bits, cnt = chunk_bits(model, open(os.path.join(eval_dir, name + ".txt"), "rb").read())
        print(f"  {name:10s} {cnt:6d} bytes  {bits / cnt:.4f} bits/byte")
        total += bits
        n += cnt
    bpb = total / n
    print(f"bits per byte over {n} bytes: {bpb:.4f} (model README: about 1.81)")
    ok &= abs(bpb - 1.81) < 0.01
    print("SELFTEST", "PASS" if ok else "FAIL")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=default_model_dir(), help="HF model directory")
    ap.add_argument("--eval-dir", default=None, help="eval-dev directory (default: beside the model)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--selftest", action="store_true", help="check the forward pass and print bits/byte")
    args = ap.parse_args()
    if not args.selftest:
        ap.print_help()
        return 0
    eval_dir = args.eval_dir or os.path.join(os.path.dirname(os.path.dirname(
        os.path.normpath(args.model))), "data", "eval-dev")
    model = Llama(args.model, device=args.device)
    return 0 if selftest(model, eval_dir) else 1


if __name__ == "__main__":
    sys.exit(main())
