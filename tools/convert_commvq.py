#!/usr/bin/python3
"""Converts a published CommVQ checkpoint into a libcommvq codebook file.

The reference release (arXiv 2506.18879) ships its two codebooks in two places:

* Keys: one PyTorch file per layer and KV head, `{layer:03d}_{head}.pt`, a dict
  whose "steps" is the list of the R residual stages. Stage r holds
  "theta" [2C, P] (row 2a: real parts, row 2a+1: imaginary parts of sub-center
  a, one column per RoPE pair; C = 64, P = head_dim/2) and
  "clustering_centers" [C*C, head_dim], the 4096 centers it implies, pair
  interleaved (x0, y0, x1, y1, ...): center A*C+B of pair j is
  (x_A - y_B, x_B + y_A), i.e. z_A + i z_B. The reference reads a rotate-half
  key's pair j as (k[j], k[j + P]) and scales every key by its norm over all
  KV heads, so the codebook is written with pair_layout rotate_half and
  scale_mode token.
* Values: inside the model's safetensors, per layer under
  `model.layers.{i}.self_attn.value_vq_model.`: embedding [2n, D] (the
  additive codebook E), norm1.{weight,bias} [D], enc1.{weight [I, D], bias},
  out.{weight [4n, I], bias} and learnable_scale [D]. The reference encoder
  computes x / (learnable_scale + 1e-6) before anything else and multiplies by
  (learnable_scale + 1e-6) after decoding, which is exactly the lambda of
  docs/METHOD.md,
  so learnable_scale is written as values.lambda unchanged. The bit width
  follows from E: 2n = D * value_bits.

Model shape and RoPE come from the model's config.json. The output is the
safetensors codebook of docs/FORMATS.md with the fingerprint the library
verifies on load (FNV-1a 64 over the shape metadata and every tensor's
float32 values; see codebook_fingerprint below and src/codebook.cpp). With
--storage f16 the key sub-centers and the value matrices are stored as F16
(rounded to nearest even, as commvq_codebook_save_as rounds them; the
per-channel vectors stay F32), about half the file, and the fingerprint is
that of the rounded values. The library's commvq-train re-saves an existing
file the same way: commvq-train --codebook IN -o OUT --storage f16.

    /usr/bin/python3 tools/convert_commvq.py --keys KEY_DIR --model MODEL_DIR --out codebook.safetensors
"""

import argparse
import json
import os
import pickle
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bytellama  # noqa: E402  (its safetensors reader/writer and config parsing)

FORMAT_NAME = "commvq-codebook"
FORMAT_VERSION = "1"
VALUE_PREFIX = "model.layers.{layer}.self_attn.value_vq_model."

# Defaults of the fields a RoPE kind does not use, as the library writes them
# (RopeSpec in src/codebook.h); they enter the fingerprint, so they are fixed.
ROPE_UNUSED = {"factor": 1.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position": 8192.0}
ROPE_KIND = {"default": "none", "linear": "linear", "llama3": "llama3"}


class ConversionError(Exception):
    pass


# ---------------------------------------------------------------------------
# The codebook file (docs/FORMATS.md)
# ---------------------------------------------------------------------------

def fnv1a64(chunks):
    """FNV-1a, 64 bit, over a sequence of bytes objects (the library's hash)."""
    h, prime, mask = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
    for chunk in chunks:
        for b in chunk:
            h = ((h ^ b) * prime) & mask
    return h


def shape_metadata(shape):
    """(key, value) pairs in the order and spelling of codebook_shape_metadata()."""
    def num(x):
        return "%.17g" % float(x)
    rope = shape["rope"]
    return [
        ("n_layers", str(shape["n_layers"])),
        ("n_kv_heads", str(shape["n_kv_heads"])),
        ("n_q_heads", str(shape["n_q_heads"])),
        ("head_dim", str(shape["head_dim"])),
        ("key_stages", str(shape["key_stages"])),
        ("sub_centers", str(shape["sub_centers"])),
        ("value_bits", str(shape["value_bits"])),
        ("value_hidden", str(shape["value_hidden"])),
        ("pair_layout", shape["pair_layout"]),
        ("scale_mode", shape["scale_mode"]),
        ("rope_theta", num(rope["theta"])),
        ("rope_scaling", rope["scaling"]),
        ("rope_factor", num(rope["factor"])),
        ("rope_low_freq_factor", num(rope["low_freq_factor"])),
        ("rope_high_freq_factor", num(rope["high_freq_factor"])),
        ("rope_original_max_position", num(rope["original_max_position"])),
    ]


LAYER_TENSORS = ("keys.sub_centers", "values.lambda", "values.norm.weight", "values.norm.bias",
                 "values.enc1.weight", "values.enc1.bias", "values.enc2.weight", "values.enc2.bias",
                 "values.codebook")
# What F16 storage rounds (codebook_tensor_rounded in src/codebook_file.cpp):
# the matrices; the per-channel vectors stay F32.
ROUNDED_TENSORS = ("keys.sub_centers", "values.enc1.weight", "values.enc2.weight", "values.codebook")


def codebook_fingerprint(shape, layers):
    """The library's fingerprint: FNV-1a over "commvq-codebook\\n", each shape
    field as "key=value\\n", then every layer's tensors' values as
    little-endian float32 in LAYER_TENSORS order (an F16 tensor widened to
    float32 first, exactly). Pure Python: about 5 MB/s."""
    def chunks():
        yield (FORMAT_NAME + "\n").encode()
        for key, value in shape_metadata(shape):
            yield f"{key}={value}\n".encode()
        for layer in layers:
            for name in LAYER_TENSORS:
                yield np.ascontiguousarray(layer[name], dtype="<f4").tobytes()
    return fnv1a64(chunks())


def stored_tensors(layers, storage):
    """{file name: array as stored} for storage "f32" or "f16". F16 rounds
    to nearest even (numpy's conversion), like the library's writer."""
    if storage not in ("f32", "f16"):
        raise ConversionError(f"storage must be f32 or f16, got {storage!r}")
    tensors = {}
    for l, layer in enumerate(layers):
        for name in LAYER_TENSORS:
            a = np.ascontiguousarray(layer[name], dtype=np.float32)
            if storage == "f16" and name in ROUNDED_TENSORS:
                with np.errstate(over="ignore"):
                    a = a.astype(np.float16)
                if not np.isfinite(a).all():
                    i = int(np.flatnonzero(~np.isfinite(a))[0])
                    raise ConversionError(f"layers.{l}.{name} element {i} = "
                                          f"{float(layer[name].reshape(-1)[i]):g} is beyond F16's range "
                                          "(largest 65504); store as f32")
            tensors[f"layers.{l}.{name}"] = a
    return tensors


def write_codebook(path, shape, layers, model_name, storage="f32"):
    """Writes layers (a list of {LAYER_TENSORS name: float32 array}) as a
    codebook file with F32 or F16 storage; returns the fingerprint (hex)."""
    tensors = stored_tensors(layers, storage)
    held = [{name: tensors[f"layers.{l}.{name}"].astype(np.float32) for name in LAYER_TENSORS}
            for l in range(len(layers))]
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    meta.update(shape_metadata(shape))
    meta["model"] = model_name
    meta["fingerprint"] = "%016x" % codebook_fingerprint(shape, held)
    bytellama.write_safetensors(path, tensors, meta)
    return meta["fingerprint"]


# ---------------------------------------------------------------------------
# The model: config.json and selected safetensors tensors
# ---------------------------------------------------------------------------

def model_shape(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    n_q = cfg["num_attention_heads"]
    theta, rope_type, params = bytellama.rope_settings(cfg)
    rope = {"theta": theta, "scaling": ROPE_KIND[rope_type], **ROPE_UNUSED}
    if rope_type in ("linear", "llama3"):
        rope["factor"] = float(params["factor"])
    if rope_type == "llama3":
        rope["low_freq_factor"] = float(params["low_freq_factor"])
        rope["high_freq_factor"] = float(params["high_freq_factor"])
        rope["original_max_position"] = float(params["original_max_position_embeddings"])
    return {
        "n_layers": cfg["num_hidden_layers"],
        "n_q_heads": n_q,
        "n_kv_heads": cfg.get("num_key_value_heads", n_q),
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // n_q,
        "rope": rope,
    }, cfg


def tensor_locations(model_dir):
    """{tensor name: safetensors file path} for a single-file or sharded model."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return {k: os.path.join(model_dir, v) for k, v in json.load(f)["weight_map"].items()}
    path = os.path.join(model_dir, "model.safetensors")
    header, _, _ = bytellama.read_safetensors_header(path)
    return {name: path for name in header}


def read_tensor(path, name):
    """One tensor of a safetensors file as float32, without reading the rest."""
    header, _, start = bytellama.read_safetensors_header(path)
    info = header[name]
    begin, end = info["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + begin)
        raw = f.read(end - begin)
    kind = info["dtype"]
    if kind == "F32":
        a = np.frombuffer(raw, dtype="<f4")
    elif kind == "F16":
        a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif kind == "BF16":  # the high half of a float32
        a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        raise ConversionError(f"{path}: tensor {name} has dtype {kind}, expected a float type")
    return a.reshape(info["shape"]).astype(np.float32)


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------

def centers_from_theta(theta):
    """The C*C interleaved centers [C*C, 2P] the reference derives from theta [2C, P]."""
    x, y = theta[0::2], theta[1::2]  # [C, P]: real and imaginary parts of each sub-center
    C, P = x.shape
    real = x[:, None, :] - y[None, :, :]  # [A, B, P]: x_A - y_B
    imag = x[None, :, :] + y[:, None, :]  # [A, B, P]: x_B + y_A
    return np.stack([real, imag], axis=-1).reshape(C * C, 2 * P)


def sub_centers_from_theta(theta):
    """theta [2C, P] -> [C, 2P] in the library's canonical layout
    (element 2j real, 2j+1 imaginary part of pair j)."""
    C2, P = theta.shape
    return np.stack([theta[0::2], theta[1::2]], axis=-1).reshape(C2 // 2, 2 * P)


def load_pickle(path, trust_pickle):
    """A key codebook file: a plain dict of tensors and floats. Unpickling can
    run code, so the restricted loader comes first; older torch (1.13) refuses
    even the plain float the reference stores, and then only --trust-pickle
    lets the full loader read it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise ConversionError(f"{path}: torch's restricted loader refused it ({str(e)[-60:]}); "
                                  "rerun with --trust-pickle if you trust the file") from None
    return torch.load(path, map_location="cpu", weights_only=False)


def load_key_head(path, head_dim, trust_pickle=False):
    """[R, C, head_dim] canonical sub-centers of one layer and KV head."""
    if not os.path.exists(path):
        raise ConversionError(f"missing key codebook file {path}")
    data = load_pickle(path, trust_pickle)
    steps = data.get("steps") if isinstance(data, dict) else None
    if not steps:
        raise ConversionError(f"{path}: expected a dict with a non-empty 'steps' list")
    stages = []
    for r, step in enumerate(steps):
        theta = np.asarray(torch.as_tensor(step["theta"]).double().numpy())
        centers = np.asarray(torch.as_tensor(step["clustering_centers"]).double().numpy())
        C2, P = theta.shape
        if 2 * P != head_dim or C2 % 2:
            raise ConversionError(f"{path} stage {r}: theta has shape {list(theta.shape)}, "
                                  f"expected [2C, {head_dim // 2}]")
        C = C2 // 2
        if centers.shape != (C * C, head_dim):
            raise ConversionError(f"{path} stage {r}: clustering_centers has shape "
                                  f"{list(centers.shape)}, expected [{C * C}, {head_dim}]")
        # The centers are redundant with theta; agreeing with them proves
        # theta was read in the layout described above.
        implied = centers_from_theta(theta)
        err = np.abs(implied - centers).max() / max(np.abs(centers).max(), 1e-30)
        if err > 1e-4:
            raise ConversionError(f"{path} stage {r}: clustering_centers disagree with theta "
                                  f"(relative error {err:.2e}); unknown layout")
        stages.append(sub_centers_from_theta(theta))
    return np.stack(stages).astype(np.float32)


def load_keys(key_dir, n_layers, n_kv_heads, head_dim, trust_pickle=False):
    """Per layer [Hkv, R, C, head_dim]."""
    layers = []
    for l in range(n_layers):
        heads = [load_key_head(os.path.join(key_dir, f"{l:03d}_{h}.pt"), head_dim, trust_pickle)
                 for h in range(n_kv_heads)]
        if len({h.shape for h in heads}) != 1:
            raise ConversionError(f"layer {l}: KV heads have different stage counts or sizes: "
                                  f"{[list(h.shape) for h in heads]}")
        layers.append(np.stack(heads))
    if len({k.shape for k in layers}) != 1:
        raise ConversionError("layers have different key codebook shapes: "
                              f"{[list(k.shape) for k in layers]}")
    return layers


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------

def load_values(locations, layer, value_dim, prefix):
    p = prefix.format(layer=layer)
    names = {"lambda": "learnable_scale", "norm.weight": "norm1.weight", "norm.bias": "norm1.bias",
             "enc1.weight": "enc1.weight", "enc1.bias": "enc1.bias",
             "enc2.weight": "out.weight", "enc2.bias": "out.bias", "codebook": "embedding"}
    out = {}
    for ours, theirs in names.items():
        if p + theirs not in locations:
            raise ConversionError(f"the model has no tensor {p + theirs}")
        out["values." + ours] = read_tensor(locations[p + theirs], p + theirs)
    E = out["values.codebook"]
    if E.ndim != 2 or E.shape[1] != value_dim or E.shape[0] % value_dim:
        raise ConversionError(f"layer {layer}: {p}embedding has shape {list(E.shape)}, "
                              f"expected [D * bits, {value_dim}]")
    bits = E.shape[0] // value_dim
    n = E.shape[0] // 2
    I = out["values.enc1.weight"].shape[0]
    want = {"lambda": [value_dim], "norm.weight": [value_dim], "norm.bias": [value_dim],
            "enc1.weight": [I, value_dim], "enc1.bias": [I],
            "enc2.weight": [4 * n, I], "enc2.bias": [4 * n]}
    for ours, shape in want.items():
        got = list(out["values." + ours].shape)
        if got != shape:
            raise ConversionError(f"layer {layer}: {p}{names[ours]} has shape {got}, expected {shape}")
    return out, bits, I


# ---------------------------------------------------------------------------

def convert(key_dir, model_dir, out_path, model_name=None, value_prefix=VALUE_PREFIX,
            trust_pickle=False, storage="f32"):
    shape, cfg = model_shape(model_dir)
    L, Hkv, d = shape["n_layers"], shape["n_kv_heads"], shape["head_dim"]
    keys = load_keys(key_dir, L, Hkv, d, trust_pickle)
    locations = tensor_locations(model_dir)
    layers, bits, hidden = [], set(), set()
    for l in range(L):
        values, b, I = load_values(locations, l, Hkv * d, value_prefix)
        bits.add(b)
        hidden.add(I)
        layers.append({"keys.sub_centers": keys[l], **values})
    if len(bits) != 1 or len(hidden) != 1:
        raise ConversionError(f"layers disagree on value bits {sorted(bits)} or encoder width {sorted(hidden)}")
    _, R, C, _ = keys[0].shape
    shape.update(key_stages=R, sub_centers=C, value_bits=bits.pop(), value_hidden=hidden.pop(),
                 pair_layout="rotate_half", scale_mode="token")
    if shape["value_bits"] not in (1, 2):
        raise ConversionError(f"value codebook implies {shape['value_bits']} bits per element; 1 or 2 expected")
    name = model_name or cfg.get("_name_or_path") or os.path.basename(os.path.normpath(model_dir))
    fingerprint = write_codebook(out_path, shape, layers, name, storage)
    return shape, fingerprint


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", required=True, help="directory of the {layer:03d}_{head}.pt key codebooks")
    ap.add_argument("--model", required=True,
                    help="model directory: config.json and safetensors holding value_vq_model tensors")
    ap.add_argument("--out", required=True, help="codebook file to write")
    ap.add_argument("--model-name", default=None, help="model name for the file's metadata")
    ap.add_argument("--value-prefix", default=VALUE_PREFIX,
                    help="name prefix of a layer's value tensors ({layer} is replaced)")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="allow torch's full unpickler for key files its restricted loader refuses")
    ap.add_argument("--storage", choices=("f32", "f16"), default="f32",
                    help="f32 (default): every value as published; f16: key sub-centers and value "
                         "matrices rounded to F16, about half the file (docs/FORMATS.md)")
    args = ap.parse_args()
    try:
        shape, fingerprint = convert(args.keys, args.model, args.out, args.model_name, args.value_prefix,
                                     args.trust_pickle, args.storage)
    except (ConversionError, KeyError, OSError) as e:
        print(f"convert_commvq: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {shape['n_layers']} layers, {shape['n_kv_heads']} KV heads, "
          f"R={shape['key_stages']}, {shape['value_bits']}-bit values, {args.storage.upper()} storage, "
          f"fingerprint {fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
