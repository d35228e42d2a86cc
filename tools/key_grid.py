#!/usr/bin/python3
"""Round a codebook's key sub-centers onto a fixed-point grid, and say what it costs.

    key_grid.py CODEBOOK.safetensors --bits B [-o OUT.safetensors]

Every key sub-center value of (layer, KV head, channel) becomes an integer
of at most B signed bits (|i| <= 2^(B-1) - 1) times a power of two, the
smallest power of two that keeps the channel's largest value in range. With
B <= 12 such a value is exactly an F16 number, so the output is an ordinary
codebook file (same dtype, fingerprint recomputed) that every back end
reads as it is: the rounding is the codebook, and attention stays exact
over the decoded cache.

Why: a GPU decode kernel can then hold the table as integers and sum a
token's 2R rows two at a time with 32-bit integer adds on 16-bit fields
(exact; half the add instructions of half2 sums, docs/PERF.md). The fields
hold the A-part and B-part sums of R rows with an offset of 2^(B-1), so
R * (2^B - 1) < 2^16: B = 12 for R <= 16 (1 bit, R = 11), B = 11 for
R <= 32 (2 bits, R = 21).

Prints, per layer, the rounding's root-mean-square change of the
sub-centers relative to their own root mean square. Measure the effect on
attention with tools/quality.py --codebook OUT (docs/QUALITY.md).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import codebook_splice as cf  # noqa: E402  (the file format: read, fingerprint, write)


# Which values share one power of two (the axes of z [H][R][C][d] the peak is taken over):
#   channel: per (head, channel), across stages: rows sum as integers (the design above);
#   stage:   per (head, stage), across channels: an 8-bit table converted row by row;
#   stage-channel: per (head, stage, channel).
SCALE_AXES = {"channel": (1, 2), "stage": (2, 3), "stage-channel": (2,)}


def grid_round(z, bits, scale="channel"):
    """z [H][R][C][d] rounded onto integers of `bits` signed bits times 2^e, one e per SCALE_AXES[scale] group."""
    top = (1 << (bits - 1)) - 1
    peak = np.abs(z).max(axis=SCALE_AXES[scale], keepdims=True)
    step = np.where(peak > 0, np.exp2(np.ceil(np.log2(np.maximum(peak, 1e-30) / top))), 1.0)
    q = np.clip(np.rint(z / step), -top, top)
    return (q * step).astype(np.float32), step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("codebook")
    ap.add_argument("--bits", type=int, required=True, help="signed bits per value, 4..12")
    ap.add_argument("--scale", choices=sorted(SCALE_AXES), default="channel",
                    help="values sharing one power of two: per (head, channel) across stages (default), "
                         "per (head, stage), or per (head, stage, channel)")
    ap.add_argument("-o", "--output", help="the rounded codebook (default: only the report)")
    a = ap.parse_args(argv)
    if not 4 <= a.bits <= 12:
        raise SystemExit(f"key_grid.py: --bits {a.bits} is outside 4..12 (12 keeps every value an F16 number)")
    meta, tensors = cf.read(a.codebook)
    H, R, C, d = (int(meta[k]) for k in ("n_kv_heads", "key_stages", "sub_centers", "head_dim"))
    limit = 2 ** 16 // ((1 << a.bits) - 1)
    fields = (f" ({'fits' if R < limit else 'does NOT fit'} 16-bit fields for R = {R}: at most {limit - 1} rows)"
              if a.scale == "channel" else "")
    print(f"{a.codebook}: {meta['n_layers']} layers, {H} KV heads, R = {R}; {a.bits}-bit grid, scale per {a.scale}{fields}")
    for l in range(int(meta["n_layers"])):
        name = f"layers.{l}.keys.sub_centers"
        dtype, shape, raw = tensors[name]
        z = cf.as_f32(dtype, raw).reshape(H, R, C, d)
        zq, _ = grid_round(z, a.bits, a.scale)
        rel = np.sqrt(np.mean((zq - z) ** 2) / max(np.mean(z ** 2), 1e-30))
        per_stage = np.sqrt(np.mean((zq - z) ** 2, axis=(0, 2, 3)) / np.maximum(np.mean(z ** 2, axis=(0, 2, 3)), 1e-30))
        print(f"layer {l}: rms change {rel:.2e} of the sub-centers' rms; by stage "
              + " ".join(f"{x:.1e}" for x in per_stage))
        if dtype == "F16":
            back = zq.astype("<f2").astype(np.float32)
            if not np.array_equal(back, zq):
                raise SystemExit(f"key_grid.py: layer {l}: a rounded value is not an F16 number")
            out = zq.astype("<f2").tobytes()
        elif dtype == "F32":
            out = zq.astype("<f4").tobytes()
        else:
            raise SystemExit(f"key_grid.py: {name} is {dtype}; F16 or F32 expected")
        tensors[name] = (dtype, shape, out)
    if a.output:
        meta = dict(meta)
        meta["fingerprint"] = cf.fingerprint(meta, tensors)
        cf.write(a.output, meta, tensors)
        print(f"wrote {a.output} (fingerprint {meta['fingerprint']})")


if __name__ == "__main__":
    main()
