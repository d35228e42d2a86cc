"""Decode-attention and encoding benchmark of the CUDA back end, next to
PyTorch's bf16 scaled_dot_product_attention in the same process on the same
GPU (LLaMA-3.1-8B layer: 32 query heads, 8 KV heads, head_dim 128).

    python3 bench/bench.py build-gpu/bench/libcommvq_bench.so [decode] [full] [prefill] [encode] [prompt]

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


def median_call_us(call, sets, calls):
    """Median µs of call(k, v), each set called once first, then `calls`
    timed calls rotating over the sets (layers), each timed by events."""
    for k, v in sets:
        call(k, v)
    times = []
    for i in range(calls):
        k, v = sets[i % len(sets)]
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        call(k, v)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000)
    return statistics.median(times)


def sdpa_us(batch, ctx, backend, reps=200):
    """Median µs of one bf16 decode SDPA call, rotating over 4 KV sets (layers)."""
    q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
    kvs = [(torch.randn(batch, HKV, ctx, D, device="cuda", dtype=torch.bfloat16),
            torch.randn(batch, HKV, ctx, D, device="cuda", dtype=torch.bfloat16)) for _ in range(4)]
    try:
        with sdpa_kernel(backend):
            return median_call_us(lambda k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), kvs, reps)
    except RuntimeError as e:
        print(f"  (SDPA backend {backend} unavailable: {str(e).splitlines()[0]})", file=sys.stderr)
        return float("nan")
    finally:
        del kvs
        torch.cuda.empty_cache()


def sdpa_prefill_us(ctx, queries, reps=10):
    """Median µs of bf16 SDPA for a causal chunk of `queries` queries at the end
    of ctx + queries keys, rotating over 4 KV sets. The mask is aligned
    bottom-right, as a chunk of a longer prompt sees it (torch's
    causal_lower_right, which runs on the memory-efficient backend; that
    backend takes no grouped heads, so the 8 KV heads are repeated to 32:
    the chunk is compute-bound, the extra bytes cost little). Where that
    fails, the same call without the mask (1-2% more work) and a note."""
    from torch.nn.attention.bias import causal_lower_right
    q = torch.randn(1, HQ, queries, D, device="cuda", dtype=torch.bfloat16)
    kvs = [(torch.randn(1, HKV, ctx + queries, D, device="cuda", dtype=torch.bfloat16),
            torch.randn(1, HKV, ctx + queries, D, device="cuda", dtype=torch.bfloat16)) for _ in range(4)]

    mask = causal_lower_right(queries, ctx + queries)
    rep = HQ // HKV
    try:
        try:
            wide = [(k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)) for k, v in kvs]
            return median_call_us(lambda k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), wide,
                                  reps * 4), "causal"
        except RuntimeError as e:
            print(f"  (SDPA with a lower-right causal mask failed: {str(e).splitlines()[0]}; timed without the mask)",
                  file=sys.stderr)
            wide = None
            return median_call_us(lambda k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), kvs,
                                  reps * 4), "no mask"
    finally:
        del kvs, wide
        torch.cuda.empty_cache()


def prefill_table(lib):
    """A 2048-query causal prefill chunk attended from codes over 32K and 128K
    earlier tokens (issue 9, part 2), next to bf16 SDPA over the same keys.
    PREFILL_CASES="bits:ctx,..." replaces the cases."""
    cases = [(1, 32768), (1, 131072), (2, 32768)]
    if os.environ.get("PREFILL_CASES"):
        cases = [tuple(int(x) for x in c.split(":")) for c in os.environ["PREFILL_CASES"].split(",")]
    queries = int(os.environ.get("PREFILL_QUERIES", "2048"))
    print(f"\n| prefill chunk | bits | earlier tokens | queries | commvq (µs per layer) | bf16 SDPA (µs) | SDPA mask | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for bits, ctx in cases:
        ours = lib.cvq_bench_prefill(bits, ctx, queries, 3)
        ref, how = sdpa_prefill_us(ctx, queries)
        print(f"| causal, from codes | {bits} | {ctx} | {queries} | {ours:.0f} | {ref:.0f} | {how} | {ours / ref:.2f} |",
              flush=True)


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


# Encoding variants, all timed by one build in one process: the value
# products' precision (cuda::ValuePrecision, COMMVQ_CUDA_VALUE_PRODUCTS) and
# the tokens per encoder pass of an append (COMMVQ_CUDA_ENCODE_BATCH); the
# library reads both when a cache is created.
PRECISIONS = {"fp32": 0, "tf32": 1, "bf16": 2}
ENCODE_TOKENS = 32768  # tokens per timed encoder call and per timed append


def variants():
    products = os.environ.get("BENCH_VALUE_PRODUCTS", "fp32,tf32,bf16").split(",")
    batches = [int(b) for b in os.environ.get("BENCH_ENCODE_BATCHES", "1024,8192").split(",")]
    return products, batches


def mark(value, target, more_is_better=True):
    if value != value or target is None:
        return ""
    return "yes" if (value >= target if more_is_better else value < target) else "no"


def encode_table(lib):
    """Encoding throughput per layer next to the targets of issue 12 (H200):
    keys >= 20M tokens/s (1 bit) and >= 10M (2 bits), values >= 20M (1 bit,
    default precision), a whole append >= 8.4M (the prompt target, 0.5 s for
    128K tokens x 32 layers)."""
    products, batches = variants()
    out = (ctypes.c_double * 3)()
    print("\n| figure | bits | variant | tokens/s per layer | target | met | value bits changed vs fp32 | weight rel. diff vs fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    key_target = {1: 20e6, 2: 10e6}
    for bits in (1, 2):
        r = out[0] if lib.cvq_bench_encode_keys(bits, ENCODE_TOKENS, out) == 0 else float("nan")
        print(f"| key encoding | {bits} | pruned 3xTF32 search | {r / 1e6:.2f}M | >= {key_target[bits] / 1e6:.0f}M | "
              f"{mark(r, key_target[bits])} | | |", flush=True)
    for bits in (1, 2):
        for name in products:
            if lib.cvq_bench_encode_values(bits, ENCODE_TOKENS, PRECISIONS[name], out) != 0:
                print(f"| value encoding | {bits} | {name} products | failed | | | | |", flush=True)
                continue
            target = 20e6 if bits == 1 else None
            print(f"| value encoding | {bits} | {name} products | {out[0] / 1e6:.2f}M | "
                  f"{'>= 20M' if target else 'none set'} | {mark(out[0], target)} | {out[1] * 100:.4f}% "
                  f"(allowance 0.1%) | {out[2]:.2e} |", flush=True)
    for bits in (1, 2):
        for name in products:
            for batch in batches:
                os.environ["COMMVQ_CUDA_VALUE_PRODUCTS"] = name
                os.environ["COMMVQ_CUDA_ENCODE_BATCH"] = str(batch)
                r = out[0] if lib.cvq_bench_append(bits, ENCODE_TOKENS, out) == 0 else float("nan")
                target = 8.4e6 if bits == 1 else None
                print(f"| whole append (commvq_cache_append, {ENCODE_TOKENS} tokens) | {bits} | {name} products, "
                      f"batch {batch} | {r / 1e6:.2f}M | {'>= 8.4M' if target else 'none set'} | {mark(r, target)} | | |",
                      flush=True)
    os.environ.pop("COMMVQ_CUDA_VALUE_PRODUCTS", None)
    os.environ.pop("COMMVQ_CUDA_ENCODE_BATCH", None)


PROMPT = "128K-token prompt, 32 layers, 1 bit, commvq_cache_append"


def prompt_table(lib):
    """A 128K-token prompt through commvq_cache_append for 32 layers, 1 bit,
    appended in 32K-token chunks (every layer in turn), for each variant."""
    products, batches = variants()
    out = (ctypes.c_double * 4)()
    print("\n| figure | value products | encoding batch | seconds | target | met | compressed blocks | window | reserved at creation |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in products:
        for batch in batches:
            os.environ["COMMVQ_CUDA_VALUE_PRODUCTS"] = name
            os.environ["COMMVQ_CUDA_ENCODE_BATCH"] = str(batch)
            if lib.cvq_bench_prompt(131072, 32, out) != 0:
                print(f"| {PROMPT} | {name} | {batch} | failed | | | | | |", flush=True)
                continue
            print(f"| {PROMPT} | {name} | {batch} | {out[0]:.3f} | < 0.5 s | {mark(out[0], 0.5, False)} | "
                  f"{out[1] / 1e9:.3f} GB | {out[2] / 1e6:.1f} MB | {out[3] / 1e9:.3f} GB |", flush=True)
    os.environ.pop("COMMVQ_CUDA_VALUE_PRODUCTS", None)
    os.environ.pop("COMMVQ_CUDA_ENCODE_BATCH", None)


def main():
    lib = ctypes.CDLL(sys.argv[1])
    lib.cvq_bench_decode.restype = ctypes.c_double
    lib.cvq_bench_decode.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32]
    lib.cvq_bench_encode_keys.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_double)]
    lib.cvq_bench_encode_values.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int32, ctypes.POINTER(ctypes.c_double)]
    lib.cvq_bench_append.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_double)]
    lib.cvq_bench_prompt.argtypes = [ctypes.c_uint64, ctypes.c_uint32, ctypes.POINTER(ctypes.c_double)]
    lib.cvq_bench_prefill.restype = ctypes.c_double
    lib.cvq_bench_prefill.argtypes = [ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32]
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
    if not only or "prefill" in only:
        prefill_table(lib)
    if not only or "encode" in only:
        encode_table(lib)
    if not only or "prompt" in only:
        prompt_table(lib)

if __name__ == "__main__":
    main()
