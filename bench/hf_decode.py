#!/usr/bin/env python3
"""Decode speed and GPU memory of transformers + CommvqCache next to DynamicCache (bf16).

    python3 bench/hf_decode.py --library build-gpu/libcommvq.so [--contexts 8192,32768,131072]

The model is LLaMA-3.1-8B-shaped with random weights, built from a config
(bf16, 32 layers, hidden 4096, 32 query / 8 KV heads, head_dim 128, llama3
RoPE; intermediate size and vocabulary as --intermediate and --vocab, by
default the real 14336 and 128256), and the codebook a random one of that
shape: trained by the library on random keys and values with one EM step
and one value step (speed does not depend on its values), kept in
--codebook-file for later runs.

For each context C and cache kind: one prompt of C random tokens is
prefilled (B = 1), the cache is copied to B rows (batch_repeat_interleave:
CommvqCache forks the sequence, its compressed blocks shared copy-on-write
but its block pool reserved for B full sequences; DynamicCache repeats its
tensors), then --steps decode steps of B tokens are timed. B is 1 and the
largest batch estimated to fit (free memory after the weights over the
bytes of one sequence, at most --max-batch), lowered by a quarter on each
out-of-memory until one fits. Memory is the decode steps' peak: torch's
peak allocated bytes plus the library's reserved device bytes (libcommvq
allocates with cudaMalloc, outside torch's allocator).

Prints a markdown table; rows appear as they are measured.

Tensor parallelism (docs/PARALLEL.md): under `torchrun --nproc-per-node N`
the model is saved once (rank 0, to --model-dir) and loaded by every rank
with tp_plan="auto" (NCCL, one GPU per rank), so each rank holds 1/N of the
heads and its CommvqCache a slice cache. Every rank draws the same token ids;
the batch is the smallest of the ranks' estimates (no out-of-memory retry:
a rank failing mid-step would leave the others in a collective); memory is
the largest rank's peak. Compare with the same command without torchrun.
"""

import argparse
import importlib
import gc
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bindings", "python"))
import commvq  # noqa: E402

LAYERS, HIDDEN, HQ, HKV, D = 32, 4096, 32, 8, 128
ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
GIB = 1024 ** 3


def build_model(args):
    import transformers
    config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=HIDDEN, intermediate_size=args.intermediate, num_hidden_layers=LAYERS,
        num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D, max_position_embeddings=131072 + 4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
        # transformers 5 describes RoPE in rope_parameters; 4.x in rope_theta and rope_scaling
        **({"rope_scaling": dict(ROPE), "rope_theta": ROPE["rope_theta"]} if transformers.__version__.startswith("4.")
           else {"rope_parameters": dict(ROPE)}))
    config._attn_implementation = "commvq"
    torch.set_default_dtype(torch.bfloat16)  # parameters made in bf16, never in fp32 first
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    return model.eval()


class Ranks:
    """The process group under torchrun (rank 0 prints), or one process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.dist = None
        if self.world > 1:
            import torch.distributed as dist
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", self.rank)))
            dist.init_process_group("nccl")
            self.dist = dist

    def print(self, *args, **kwargs):
        if self.rank == 0:
            print(*args, **kwargs)

    def barrier(self):
        if self.dist:
            self.dist.barrier()

    def reduce(self, value, op):
        """value (a number) reduced over the ranks: "min" or "max"."""
        if not self.dist:
            return value
        t = torch.tensor([float(value)], device="cuda", dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN if op == "min" else self.dist.ReduceOp.MAX)
        return type(value)(t.item())


def tensor_parallel_model(args, ranks):
    """The model, saved once by rank 0 and loaded by every rank with tp_plan="auto"."""
    import transformers
    path = args.model_dir or os.path.join(HERE, "..", "build-gpu", "bench-llama8b-random-model")
    if ranks.rank == 0 and not os.path.exists(os.path.join(path, "config.json")):
        t0 = time.time()
        model = build_model(args)
        model.save_pretrained(path)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        print(f"(random model saved in {time.time() - t0:.0f} s: {path})", file=sys.stderr)
    ranks.barrier()
    return transformers.AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=torch.bfloat16,
                                                             attn_implementation="commvq").eval()


def random_codebook(path, bits):
    """A codebook of the model's shape, trained on random data in seconds (cached in `path`)."""
    if os.path.exists(path):
        return path
    import numpy as np
    rng = np.random.default_rng(0)
    n = 512
    keys = rng.standard_normal((LAYERS, n, HKV, D), dtype=np.float32)
    values = rng.standard_normal((LAYERS, n, HKV, D), dtype=np.float32)
    rope = {"theta": ROPE["rope_theta"], "scaling": commvq.ROPE_SCALING_LLAMA3, "factor": ROPE["factor"],
            "low_freq_factor": ROPE["low_freq_factor"], "high_freq_factor": ROPE["high_freq_factor"],
            "original_max_position": ROPE["original_max_position_embeddings"]}
    t0 = time.time()
    with commvq.Codebook.train(keys, values, value_bits=bits, n_q_heads=HQ, rope=rope, key_max_steps=1,
                               value_steps=1, value_batch=256, device=0, model_name="random LLaMA-3.1-8B shape") as cb:
        cb.save(path, storage="f16")
    print(f"(random {bits}-bit codebook trained in {time.time() - t0:.0f} s: {path})", file=sys.stderr)
    return path


def per_sequence_bytes(kind, context, codebook_info, window):
    if kind == "dynamic":
        return context * LAYERS * HKV * D * 2 * 2
    return (context + 64) * LAYERS * codebook_info["compressed_token_bytes"] + LAYERS * window * HKV * D * 2 * 2


def make_cache(kind, args, codebook, model, batch, context):
    if kind == "dynamic":
        import transformers
        return transformers.DynamicCache()
    from commvq.transformers import CommvqCache
    return CommvqCache(codebook, model.config, window=args.window, max_batch_size=batch,
                       max_length=context + args.steps + 2)


def run_one(kind, args, codebook, model, batch, context):
    """(tokens/s, peak bytes) of decode steps at this batch and context."""
    cache = make_cache(kind, args, codebook, model, batch, context)
    torch.manual_seed(context + batch)  # every rank of a tensor-parallel run draws the same tokens
    try:
        with torch.no_grad():
            prompt = torch.randint(0, args.vocab, (1, context), device="cuda")
            model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            del prompt
            if batch > 1:
                cache.batch_repeat_interleave(batch)
            gc.collect()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            ids = torch.randint(0, args.vocab, (batch, 1), device="cuda")
            times = []
            for step in range(args.steps + 1):
                pos = torch.full((batch, 1), context + step, device="cuda", dtype=torch.long)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        step_s = sum(times[1:]) / len(times[1:])  # the first step warms up
        peak = torch.cuda.max_memory_allocated()
        if kind == "commvq":
            peak += cache.memory()["bytes_reserved"]
        return batch / step_s, peak
    finally:
        if kind == "commvq" and cache.engine is not None:
            cache.engine.close()
        del cache
        gc.collect()
        torch.cuda.empty_cache()


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, commvq.CommvqError) and e.status == commvq.ERR_OUT_OF_MEMORY)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", required=True)
    ap.add_argument("--contexts", default="8192,32768,131072")
    ap.add_argument("--kinds", default="commvq,dynamic")
    ap.add_argument("--steps", type=int, default=4, help="timed decode steps per row (after one warm-up step)")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--bits", type=int, default=1)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--codebook-file", default=None, help="default: build-gpu/bench-llama8b-random-{bits}bit.safetensors")
    ap.add_argument("--model-dir", default=None,
                    help="under torchrun: where the random model is saved (default build-gpu/bench-llama8b-random-model)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("SKIP hf_decode: torch sees no CUDA device")
        return 0
    commvq.load_library(args.library)
    if not commvq.cuda_available():
        print(f"SKIP hf_decode: {args.library} has no CUDA")
        return 0
    import transformers
    importlib.import_module("commvq.transformers")  # registers attn_implementation="commvq"

    ranks = Ranks()
    path = args.codebook_file or os.path.join(HERE, "..", "build-gpu", f"bench-llama8b-random-{args.bits}bit.safetensors")
    if ranks.rank == 0:
        random_codebook(path, args.bits)
    ranks.barrier()
    codebook = path
    with commvq.Codebook.load(codebook) as cb:
        info = cb.info
    model = tensor_parallel_model(args, ranks) if ranks.world > 1 else build_model(args)
    weights = ranks.reduce(torch.cuda.memory_allocated(), "max")
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    per_gpu = f" per GPU, {ranks.world} GPUs (tp_plan=\"auto\", NCCL)" if ranks.world > 1 else ""
    ranks.print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}, "
                f"libcommvq {commvq.version()}; LLaMA-3.1-8B shape, random bf16 weights {weights / GIB:.1f} GiB{per_gpu} "
                f"(intermediate {args.intermediate}, vocab {args.vocab}); {args.bits}-bit random codebook "
                f"({info['compressed_token_bytes']} bytes per token and layer), window {args.window}; "
                f"{args.steps} timed decode steps\n")
    ranks.print("| cache | context | batch | decode tokens/s | ms per step | peak GPU memory (GiB) | note |")
    ranks.print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for context in [int(c) for c in args.contexts.split(",")]:
        for kind in args.kinds.split(","):
            name = f"libcommvq {args.bits} bit" if kind == "commvq" else "DynamicCache bf16"
            free = total - weights - 4 * GIB  # activations, logits, allocator slack
            # A rank holds 1/world of the bf16 heads; of the codes, its heads' keys but every value
            # code (docs/PARALLEL.md), so the full compressed size is its bound.
            share = ranks.world if kind == "dynamic" else 1
            largest = min(args.max_batch, int(free // (per_sequence_bytes(kind, context, info, args.window) / share)))
            largest = ranks.reduce(largest, "min")
            for batch in sorted({1, max(largest, 1)}):
                note = "B=1" if batch == 1 else "largest batch that fits"
                while True:
                    try:
                        tps, peak = run_one(kind, args, codebook, model, batch, context)
                        peak = ranks.reduce(peak, "max")
                    except Exception as e:  # noqa: BLE001 - out of memory is a result here
                        if not is_oom(e) or ranks.world > 1:  # a rank cannot retry alone
                            raise
                        if batch == 1:
                            ranks.print(f"| {name} | {context} | 1 | out of memory | | | "
                                        f"{str(e).splitlines()[0][:80]} |", flush=True)
                            break
                        batch, note = max(1, batch * 3 // 4), "largest batch that fits (after out of memory)"
                        continue
                    ranks.print(f"| {name} | {context} | {batch} | {tps:.1f} | {batch / tps * 1000:.1f} | "
                                f"{peak / GIB:.1f} | {note} |", flush=True)
                    break
    return 0


if __name__ == "__main__":
    sys.exit(main())
