"""Decode-attention and encoding benchmark of the CUDA back end, next to
PyTorch's bf16 scaled_dot_product_attention in the same process on the same
GPU (LLaMA-3.1-8B layer: 32 query heads, 8 KV heads, head_dim 128).

    python3 bench/bench.py build-gpu/bench/libcommvq_bench.so

Prints a markdown table (docs/PERF.md keeps the results)."""
import ctypes
import datetime
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HQ, HKV, D = 32, 8, 128


def sdpa_us(batch, ctx, backend, reps=200):
    """Median µs of one bf16 decode SDPA call, rotating over 4 KV sets (layers)."""
    q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
    kvs = [(torch.randn(batch, HKV, ctx, D, device="cuda", dtype=torch.bfloat16),
            torch.randn(batch, HKV, ctx, D, device="cuda", dtype=torch.bfloat16)) for _ in range(4)]
    try:
        with sdpa_kernel(backend):
            for k, v in kvs:
                F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            times = []
            for i in range(reps):
                k, v = kvs[i % 4]
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) * 1000)
        return statistics.median(times)
    except RuntimeError as e:
        print(f"  (SDPA backend {backend} unavailable: {str(e).splitlines()[0]})", file=sys.stderr)
        return float("nan")
    finally:
        del kvs
        torch.cuda.empty_cache()


# Bytes per sequence of 128K tokens over 32 layers (LLaMA-3.1-8B).
CTX, LAYERS = 131072, 32
BF16_SEQ = CTX * LAYERS * HKV * D * 2 * 2
COMMVQ_TOKEN = {1: 268, 2: 516}  # per token and layer: packed codes, scales, weight (docs/PERF.md)


def card_full(lib):
    """Tokens attended per second per layer at 128K with the card full: the
    largest batch whose cache fits next to 16 GB of weights, bf16 against
    libcommvq (its sequences forked from one, the same work per step)."""
    free = torch.cuda.get_device_properties(0).total_memory - 16e9
    rows = []
    b = int(free // BF16_SEQ)
    t = sdpa_us(b, CTX, SDPBackend.CUDNN_ATTENTION, reps=20)
    if t != t:
        t = sdpa_us(b, CTX, SDPBackend.FLASH_ATTENTION, reps=20)
    rows.append(("bf16 SDPA", b, t))
    for bits in (1, 2):
        seq = CTX * LAYERS * COMMVQ_TOKEN[bits] + LAYERS * 128 * HKV * D * 2 * 2  # codes + window
        b = min(int(free * 0.97 // seq), 255)  # 3% for codebook tables and scratch
        rows.append((f"libcommvq {bits} bit", b, lib.cvq_bench_decode(bits, b, CTX, 10, 1)))
    print("\n| decode at 128K, card full (16 GB of weights) | batch | µs per layer and step | tokens attended/s per layer | vs bf16 |")
    print("| --- | --- | --- | --- | --- |")
    base = rows[0][1] * CTX / rows[0][2]
    for name, b, t in rows:
        print(f"| {name} | {b} | {t:.0f} | {b * CTX / t * 1e6:.3g} | {b * CTX / t / base:.2f}x |", flush=True)


def main():
    lib = ctypes.CDLL(sys.argv[1])
    lib.cvq_bench_decode.restype = ctypes.c_double
    lib.cvq_bench_decode.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32]
    lib.cvq_bench_encode.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_double)]
    lib.cvq_bench_prompt.argtypes = [ctypes.c_uint64, ctypes.c_uint32, ctypes.POINTER(ctypes.c_double)]
    only = set(sys.argv[2:])

    print(f"# {torch.cuda.get_device_name()} , {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}")
    targets = {(1, 1, 131072): "bar 260, aim 131", (1, 1, 32768): "bar 80, aim 45", (2, 1, 131072): "bar 480, aim 260",
               (1, 8, 32768): "bar 520, aim 282", (1, 1, 1024): "bar 20, aim 15"}
    if not only or "decode" in only:
        print("| bits | B | context | commvq (µs) | bf16 SDPA flash (µs) | bf16 SDPA cuDNN (µs) | ratio vs flash | ratio vs cuDNN | target (µs) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        cases = [(bits, batch, ctx) for bits in (1, 2)
                 for batch, ctx in ((1, 1024), (1, 8192), (1, 32768), (1, 131072), (8, 8192), (8, 32768),
                                    (8, 131072), (32, 8192), (32, 32768))]
        if os.environ.get("BENCH_CASES"):  # e.g. "1:1:131072,2:1:131072"
            cases = [tuple(int(x) for x in c.split(":")) for c in os.environ["BENCH_CASES"].split(",")]
        for bits, batch, ctx in cases:
            ours = lib.cvq_bench_decode(bits, batch, ctx, 50, 0)
            flash = sdpa_us(batch, ctx, SDPBackend.FLASH_ATTENTION)
            cudnn = sdpa_us(batch, ctx, SDPBackend.CUDNN_ATTENTION)
            print(f"| {bits} | {batch} | {ctx} | {ours:.1f} | {flash:.1f} | {cudnn:.1f} | "
                  f"{ours / flash:.2f} | {ours / cudnn:.2f} | {targets.get((bits, batch, ctx), '')} |", flush=True)
    if not only or "full" in only:
        card_full(lib)
    if not only or "encode" in only:
        out = (ctypes.c_double * 5)()
        print("\n| bits | key encoding (tok/s/layer) | value encoding fp32 | value encoding tf32 | whole append fp32 | value bits tf32 changes |")
        print("| --- | --- | --- | --- | --- | --- |")
        for bits in (1, 2):
            if lib.cvq_bench_encode(bits, 32768, out) != 0:
                print(f"| {bits} | failed |")
                continue
            print(f"| {bits} | {out[0] / 1e6:.2f}M | {out[1] / 1e6:.2f}M | {out[2] / 1e6:.2f}M | {out[3] / 1e6:.2f}M | {out[4] * 100:.3f}% |", flush=True)
    if not only or "prompt" in only:
        out = (ctypes.c_double * 4)()
        for tf32 in ("0", "1"):
            os.environ["COMMVQ_CUDA_TF32"] = tf32  # read when a cache is created
            if lib.cvq_bench_prompt(131072, 32, out) != 0:
                continue
            print(f"\n128K-token prompt, 32 layers, 1-bit, value products {'tf32' if tf32 == '1' else 'fp32'}: "
                  f"encoded in {out[0]:.3f} s (target < 0.5 s)")
            print(f"device memory: compressed blocks {out[1] / 1e9:.3f} GB ({out[1] / 2**30:.3f} GiB), window "
                  f"{out[2] / 1e6:.1f} MB, together {(out[1] + out[2]) / 1e9:.3f} GB (target <= 1.15 GB); "
                  f"everything reserved at creation incl. codebooks and scratch {out[3] / 1e9:.3f} GB")


if __name__ == "__main__":
    main()
