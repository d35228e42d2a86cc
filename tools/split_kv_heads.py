#!/usr/bin/python3
"""Split a KV file of tools/collect_kv.py into one file per KV head.

Head h's file holds keys.{l} / values.{l} [T, 1, d] (the h-th KV head) and,
if the input has them, queries.{l} [Tq, G, d] (query heads h*G .. h*G+G-1,
G = n_q_heads / n_kv_heads, the group that attends to KV head h), with the
metadata copied and n_kv_heads = 1, n_q_heads = G, plus kv_head = h and
kv_head_of = the input's head count. commvq-train then trains a 1-KV-head
codebook on it: the per-head design of docs/PARALLEL.md (a value encoder per
head, head key scales, no exchange between ranks).

    /usr/bin/python3 tools/split_kv_heads.py IN.safetensors OUT_PREFIX
    # -> OUT_PREFIX.head0.safetensors, OUT_PREFIX.head1.safetensors, ...
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bytellama  # noqa: E402


def split(tensors, meta):
    """({name: array}, metadata) of a KV file -> [(tensors, metadata)] per KV head."""
    hkv, hq = int(meta["n_kv_heads"]), int(meta["n_q_heads"])
    if hkv < 1 or hq % hkv:
        raise ValueError(f"n_q_heads {hq} is not a multiple of n_kv_heads {hkv}")
    group = hq // hkv
    out = []
    for h in range(hkv):
        part = {}
        for name, a in tensors.items():
            kind = name.split(".")[0]
            if kind in ("keys", "values"):
                if a.ndim != 3 or a.shape[1] != hkv:
                    raise ValueError(f"{name}: shape {a.shape}, want [T, {hkv}, d]")
                part[name] = np.ascontiguousarray(a[:, h:h + 1])
            elif kind == "queries":
                if a.ndim != 3 or a.shape[1] != hq:
                    raise ValueError(f"{name}: shape {a.shape}, want [T, {hq}, d]")
                part[name] = np.ascontiguousarray(a[:, bytellama.query_heads(h, group)])
            else:
                raise ValueError(f"unknown tensor {name}")
        m = dict(meta)
        m.update(n_kv_heads="1", n_q_heads=str(group), kv_head=str(h), kv_head_of=str(hkv))
        out.append((part, m))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help="KV file of tools/collect_kv.py")
    ap.add_argument("prefix", help="writes PREFIX.head{h}.safetensors")
    args = ap.parse_args(argv)
    tensors, meta = bytellama.read_safetensors(args.input)
    for h, (part, m) in enumerate(split(tensors, meta)):
        path = f"{args.prefix}.head{h}.safetensors"
        bytellama.write_safetensors(path, part, m)
        print(f"wrote {path}: KV head {h} of {meta['n_kv_heads']}, q heads {m['n_q_heads']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
