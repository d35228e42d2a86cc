#!/usr/bin/python3
"""Splice a codebook from the keys of one codebook file and the values of another.

    codebook_splice.py --keys K.safetensors [--stages R] --values V.safetensors -o OUT.safetensors

Writes a codebook whose key codebook is that of K, cut to its first R stages
(default: all of K's), and whose value codebook (and value bits, encoder
width) is that of V; the model description must agree. Tensors keep their
stored dtype, so an F16 file stays F16 bit for bit; the fingerprint is
computed as docs/FORMATS.md specifies (FNV-1a over the float32 values).

Why this is exact: commvq-train fits the keys and the values of a layer
independently (src/train/train.cpp: each key head and each layer's values
have their own seed, the same token sample feeds both), and key stage r is
trained from its own seed (seed + r) on the residuals of stages 0..r-1
alone. So with the same KV file, --max-samples, --seed and --key-steps:

* the first 11 stages of a 21-stage (2-bit) key codebook are the key
  codebook a 1-bit training would fit;
* the values of a run with --stages 1 (keys trained for one stage only,
  discarded here) are the values of a full run with the same value options.

A splice of the two is therefore the codebook one commvq-train command with
those options writes, without repeating the key EM (nearly all of the
training time) for every value setting. tools/calibrate_grid.py uses it for
its candidates and checks the claim on the device it runs on (a splice
against a file the trainer wrote in one run: same fingerprint).
"""

import argparse
import ctypes
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

VALUE_PARTS = ("values.lambda", "values.norm.weight", "values.norm.bias", "values.enc1.weight",
               "values.enc1.bias", "values.enc2.weight", "values.enc2.bias", "values.codebook")
PARTS = ("keys.sub_centers",) + VALUE_PARTS
FINGERPRINT_KEYS = ("n_layers", "n_kv_heads", "n_q_heads", "head_dim", "key_stages", "sub_centers",
                    "value_bits", "value_hidden", "pair_layout", "scale_mode", "rope_theta", "rope_scaling",
                    "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_position")
# What the keys' and the values' files must agree on (the model and how keys are scaled).
MODEL_KEYS = ("n_layers", "n_kv_heads", "n_q_heads", "head_dim", "pair_layout", "scale_mode", "rope_theta",
              "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
              "rope_original_max_position")
DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}
FNV_OFFSET, FNV_PRIME, MASK = 0xcbf29ce484222325, 0x100000001b3, 0xFFFFFFFFFFFFFFFF


def read(path):
    """(metadata, {name: (dtype, shape, raw bytes)}) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    if meta.get("format") != "commvq-codebook":
        raise SystemExit(f"{path}: not a commvq codebook (format {meta.get('format')!r})")
    data = raw[8 + n:]
    tensors = {}
    for name, t in header.items():
        if t["dtype"] not in DTYPES:
            raise SystemExit(f"{path}: tensor {name} has dtype {t['dtype']}")
        b, e = t["data_offsets"]
        tensors[name] = (t["dtype"], list(t["shape"]), data[b:e])
    return meta, tensors


def as_f32(dtype, raw):
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4")
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype("<f4")
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view("<f4")


_FNV_C = r"""
#include <stddef.h>
#include <stdint.h>
uint64_t fnv1a(uint64_t h, const unsigned char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}
"""


def _fnv_c():
    """FNV-1a compiled with the system C compiler (a pure-Python loop takes
    seconds per codebook); None when there is none."""
    try:
        d = tempfile.mkdtemp(prefix="fnv")
        src, lib = os.path.join(d, "fnv.c"), os.path.join(d, "fnv.so")
        with open(src, "w") as f:
            f.write(_FNV_C)
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", "-o", lib, src], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fn = ctypes.CDLL(lib).fnv1a
        fn.restype = ctypes.c_uint64
        fn.argtypes = [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
        return fn
    except Exception:
        return None


def fingerprint(meta, tensors):
    """docs/FORMATS.md "Fingerprint", over {name: (dtype, shape, raw)}."""
    doubles = {k for k in FINGERPRINT_KEYS if k.startswith("rope_") and k != "rope_scaling"}
    text = "commvq-codebook\n" + "".join(
        f"{k}={'%.17g' % float(meta[k]) if k in doubles else meta[k]}\n" for k in FINGERPRINT_KEYS)
    fn = _fnv_c()
    h = FNV_OFFSET

    def add(b):
        nonlocal h
        if fn is not None:
            h = fn(h, b, len(b))
            return
        for byte in b:
            h = ((h ^ byte) * FNV_PRIME) & MASK

    add(text.encode())
    for l in range(int(meta["n_layers"])):
        for p in PARTS:
            dtype, _, raw = tensors[f"layers.{l}.{p}"]
            add(as_f32(dtype, raw).tobytes())
    return f"{h:016x}"


def write(path, meta, tensors):
    """Tensors back to back in the writer's order (docs/FORMATS.md), header padded to 8 bytes."""
    header = {"__metadata__": meta}
    offset, blobs = 0, []
    for l in range(int(meta["n_layers"])):
        for p in PARTS:
            name = f"layers.{l}.{p}"
            dtype, shape, raw = tensors[name]
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
            blobs.append(raw)
            offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-(8 + len(h)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def splice(keys_path, values_path, stages=None):
    """(metadata, tensors) of the spliced codebook."""
    km, kt = read(keys_path)
    vm, vt = read(values_path)
    differ = [k for k in MODEL_KEYS if km.get(k) != vm.get(k)]
    if differ:
        raise SystemExit(f"{keys_path} and {values_path} describe other models: " +
                         ", ".join(f"{k} {km.get(k)!r} vs {vm.get(k)!r}" for k in differ))
    R_keys = int(km["key_stages"])
    R = R_keys if stages is None else stages
    if not 1 <= R <= R_keys:
        raise SystemExit(f"--stages {R}: {keys_path} has {R_keys} key stages")
    meta = dict(vm)
    meta["key_stages"] = str(R)
    meta["sub_centers"] = km["sub_centers"]
    tensors = {}
    for l in range(int(vm["n_layers"])):
        dtype, shape, raw = kt[f"layers.{l}.keys.sub_centers"]
        H, R0, C, d = shape
        size = DTYPES[dtype][1]
        per_stage = C * d * size
        cut = b"".join(raw[h * R0 * per_stage:(h * R0 + R) * per_stage] for h in range(H))
        tensors[f"layers.{l}.keys.sub_centers"] = (dtype, [H, R, C, d], cut)
        for p in VALUE_PARTS:
            tensors[f"layers.{l}.{p}"] = vt[f"layers.{l}.{p}"]
    meta["fingerprint"] = fingerprint(meta, tensors)
    return meta, tensors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", required=True, help="codebook whose key codebook is taken")
    ap.add_argument("--stages", type=int, default=None, help="keep the first R key stages (default: all)")
    ap.add_argument("--values", required=True, help="codebook whose value codebook is taken")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--model-name", default=None, help="the metadata's model text (default: the values file's)")
    args = ap.parse_args(argv)
    meta, tensors = splice(args.keys, args.values, args.stages)
    if args.model_name is not None:
        meta["model"] = args.model_name
    write(args.output, meta, tensors)
    print(f"wrote {args.output}: keys of {args.keys} ({meta['key_stages']} stages), values of {args.values} "
          f"({meta['value_bits']} bit, I = {meta['value_hidden']}), fingerprint {meta['fingerprint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
