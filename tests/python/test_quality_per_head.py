#!/usr/bin/python3
"""tools/split_kv_heads.py and tools/quality.py's --codebook-per-head path
(docs/PARALLEL.md, the per-head design) on bytellama-13m.

Collects a little calibration KV, splits it by KV head, trains two tiny
1-KV-head codebooks (commvq-train), then checks the per-head caches against
attention that does not go through the head split:

- window covering every token (nothing compressed): the per-head caches'
  attention equals exact attention over all heads (the model's own GQA,
  repeat_interleave) to float tolerance; a wrong query-head to KV-head
  mapping or a swapped head would be off by far more (the negative control
  below shows how much);
- window 0 (every token from codes): the caches' attention equals exact
  attention over the tokens the per-head codebooks decode
  (commvq_codebook_reconstruct, head by head), and differs from exact
  attention, so codes are really read.

Usage: test_quality_per_head.py LIBCOMMVQ COMMVQ_TRAIN SCRATCH_DIR
"""

import os
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "..", "tools")
sys.path.insert(0, TOOLS)
import bytellama  # noqa: E402
import quality  # noqa: E402
import split_kv_heads  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    lib_path, train, scratch = sys.argv[1:4]
    os.makedirs(scratch, exist_ok=True)
    model_dir = bytellama.default_model_dir()
    data = os.path.join(os.path.dirname(os.path.dirname(os.path.normpath(model_dir))), "data")
    calib = os.path.join(data, "calib-text")
    if not os.path.isdir(model_dir) or not os.path.isdir(calib):
        print("SKIP: no bytellama-13m model or calibration text")
        return 77
    files = sorted(os.path.join(calib, f) for f in os.listdir(calib))[:2]
    kv = os.path.join(scratch, "kv.safetensors")
    subprocess.run([sys.executable, os.path.join(TOOLS, "collect_kv.py"), "-o", kv, "--max-tokens", "1024",
                    "--queries-last", "8", *files], check=True, stderr=subprocess.DEVNULL)

    # The split: head h's keys and values, and its group's queries.
    tensors, meta = bytellama.read_safetensors(kv)
    hkv, hq = int(meta["n_kv_heads"]), int(meta["n_q_heads"])
    g = hq // hkv
    assert hkv == 2 and g == 2, (hkv, hq)
    subprocess.run([sys.executable, os.path.join(TOOLS, "split_kv_heads.py"), kv, os.path.join(scratch, "kv")],
                   check=True)
    for h in range(hkv):
        part, m = bytellama.read_safetensors(os.path.join(scratch, f"kv.head{h}.safetensors"))
        assert (m["n_kv_heads"], m["n_q_heads"], m["kv_head"]) == ("1", str(g), str(h)), m
        assert m["rope_theta"] == meta["rope_theta"] and m["n_tokens"] == meta["n_tokens"]
        for l in range(int(meta["n_layers"])):
            assert np.array_equal(part[f"keys.{l}"][:, 0], tensors[f"keys.{l}"][:, h])
            assert np.array_equal(part[f"values.{l}"][:, 0], tensors[f"values.{l}"][:, h])
            assert np.array_equal(part[f"queries.{l}"], tensors[f"queries.{l}"][:, h * g:(h + 1) * g])
    try:
        split_kv_heads.split(tensors, dict(meta, n_q_heads="3"))
        raise AssertionError("a q-head count not a multiple of the KV heads was accepted")
    except ValueError:
        pass

    paths = []
    for h in range(hkv):
        out = os.path.join(scratch, f"cb.head{h}.safetensors")
        subprocess.run([train, "-i", os.path.join(scratch, f"kv.head{h}.safetensors"), "-o", out, "--bits", "1",
                        "--rope-theta", "500000", "--threads", "1", "--max-samples", "512", "--key-steps", "2",
                        "--value-steps", "20", "--value-hidden", "256", "--seed", str(h), "-q"],
                       check=True, stdout=subprocess.DEVNULL)
        paths.append(out)

    torch.set_num_threads(1)
    model = bytellama.Llama(model_dir)
    lib = quality.Library(lib_path, 1)
    cbs = quality.HeadCodebooks([lib.codebook(p) for p in paths])
    cbs.check(model, 1)
    assert cbs.info["compressed_token_bytes"] == 2 * 41, cbs.info  # 17 + 16 + 4 + 4 per head (PARALLEL.md)
    for bad in ([lib.codebook(paths[0])], [lib.codebook(paths[0])] * 3):
        try:
            quality.HeadCodebooks(bad).check(model, 1)
            raise AssertionError("a per-head codebook count unlike the model's KV heads was accepted")
        except SystemExit:
            pass
    try:
        cbs.check(model, 2)
        raise AssertionError("a 1-bit per-head codebook was accepted as 2-bit")
    except SystemExit:
        pass

    text = open(os.path.join(data, "calib-code", sorted(os.listdir(os.path.join(data, "calib-code")))[0]),
                "rb").read()[:300]
    tokens = torch.tensor(list(text))
    found = {}

    def probe(window, check):
        att = quality.Attention(model, {"kind": "commvq", "bits": 1, "window": window}, lib, cbs, 1, None,
                                window == 0)

        def fn(layer, q, k, v, positions):
            out = att(layer, q, k, v, positions)
            check(layer, out, q, k, v, positions, att)
            return out
        att.start_chunk()
        model.forward(tokens, attention_fn=fn)
        return att

    def exact_check(layer, out, q, k, v, positions, att):
        exact = quality.exact_attention(model, q, model.rope(k, positions), v)
        found.setdefault("exact", []).append(rel(out, exact))
        # Negative control: query heads sent to the other KV head's cache.
        swapped = torch.cat([q[:, g:], q[:, :g]], dim=1)
        wrong = torch.from_numpy(att.cache.attend(layer, 0, swapped.numpy())[0])
        wrong = torch.cat([wrong[:, g:], wrong[:, :g]], dim=1)
        found.setdefault("swapped", []).append(rel(wrong, exact))

    probe(2 * quality.CHUNK, exact_check)
    worst, control = max(found["exact"]), min(found["swapped"][1:])  # layer 0 aside: its heads may look alike
    print(f"window {2 * quality.CHUNK} (no codes): per-head caches vs exact attention {worst:.2e}; "
          f"query groups swapped {control:.2e}")
    assert worst < 1e-4, found["exact"]
    assert control > 100 * worst, found["swapped"]

    att = probe(0, lambda *a: None)
    vs_decoded = max(att.vs_decoded.relative())
    vs_exact = min(att.errors.relative())
    print(f"window 0 (all from codes): vs decoded tokens {vs_decoded:.2e}; vs exact attention {vs_exact:.2e}")
    assert vs_decoded < 1e-4, att.vs_decoded.relative()
    assert vs_exact > 100 * vs_decoded, att.errors.relative()
    print("per-head split, caches and decoding agree with attention over all heads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
