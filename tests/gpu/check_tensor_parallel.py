#!/usr/bin/env python3
"""commvq.transformers under transformers' tensor parallelism, checked against one process.

    torchrun --nproc-per-node 2 tests/gpu/check_tensor_parallel.py --library build-gpu/libcommvq.so --device cuda
    CUDA_VISIBLE_DEVICES= torchrun --nproc-per-node 2 tests/gpu/check_tensor_parallel.py --library ... --device cpu

bytellama-13m is loaded with tp_plan="auto": each of the 2 ranks holds one of
its 2 KV heads (and 2 of its 4 query heads), and each rank's CommvqCache
becomes a slice cache whose appends exchange values and key norms through
torch.distributed (docs/PARALLEL.md). --device cuda is the real run (NCCL,
one GPU per rank); --device cpu runs the same code path with the gloo
backend (NCCL refuses two ranks on one GPU), the library's CPU engine under
each rank.

Checks (rank 0 prints PASS/FAIL, or REPORT for what is only shown):

1. bits per byte of eval-dev essays and of the standard-library code
   (tools/quality.py's chunks, --chunks of each; CommvqCache(prefill="codes"),
   window --window): the tensor-parallel model against the same model in one
   process (rank 0, no tp_plan) with one full cache, within --tolerance.
   Not bit for bit: the column-parallel projections and the row-parallel
   output projection's all-reduce sum in another order than one process.
2. greedy generation of --new-tokens bytes (window 32, so most of the
   context is read from codes): runs on both ranks; where it departs from
   the one-process text is reported.
3. the per-rank cache memory against one process's.

Exits 0 with SKIP lines where torch, transformers or the devices are missing.
"""

import argparse
import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import check_transformers as hf  # noqa: E402  (its skips, paths, bits-per-byte and generation helpers)

torch, transformers, commvq = hf.torch, hf.transformers, hf.commvq


def chunks_of(eval_dir, name, limit):
    """The first `limit` chunks of a tools/quality.py standard domain (essays, stdlib)."""
    import quality
    domain = next(d for d in quality.standard_domains(eval_dir) if d.name == name)
    chunks, _ = quality.domain_chunks(domain, quick=False)
    return chunks[:limit] if limit else chunks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", required=True, help="libcommvq.so (a CUDA build for --device cuda)")
    ap.add_argument("--shared", default=None, help="directory with models/ and data/ (default: found)")
    ap.add_argument("--device", default="cuda", help="cuda (NCCL, a GPU per rank) or cpu (gloo)")
    ap.add_argument("--bits", type=int, default=1, help="codebook of data/codebooks: 1 or 2")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=8, help="chunks of each domain (0: all)")
    ap.add_argument("--tolerance", type=float, default=0.002, help="bits per byte")
    ap.add_argument("--new-tokens", type=int, default=200)
    args = ap.parse_args()

    if "WORLD_SIZE" not in os.environ:
        hf.skip("run under torchrun --nproc-per-node 2")
    dist = torch.distributed
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.device == "cuda":
        if torch.cuda.device_count() < world:
            hf.skip(f"{world} ranks need {world} GPUs, torch sees {torch.cuda.device_count()}")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        device = f"cuda:{torch.cuda.current_device()}"
    else:
        if torch.cuda.is_available():
            hf.skip("--device cpu with a GPU in sight: hide it (CUDA_VISIBLE_DEVICES=) so that transformers "
                    "places the ranks on the CPU")
        device = "cpu"
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    commvq.load_library(args.library)
    importlib.import_module("commvq.transformers")
    from commvq.transformers import CommvqCache

    shared = hf.shared_dir(args.shared)
    model_dir = os.path.join(shared, "models", "bytellama-13m")
    eval_dir = os.path.join(shared, "data", "eval-dev")
    codebook = os.path.join(ROOT, "data", "codebooks", f"bytellama-13m-{args.bits}bit.safetensors")
    res = hf.Results()
    say = print if rank == 0 else (lambda *a, **k: None)
    check = res.check if rank == 0 else (lambda *a: None)
    report = res.report if rank == 0 else (lambda *a: None)
    say(f"torch {torch.__version__}, transformers {transformers.__version__}, libcommvq {commvq.version()}, "
        f"{world} ranks ({dist.get_backend()}), device {args.device}, {args.bits} bit, window {args.window}")

    tp = transformers.LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="commvq", dtype=torch.float32,
                                                       tp_plan="auto").eval()
    attn = tp.model.layers[0].self_attn
    report("rank 0's k_proj", f"{tuple(attn.k_proj.weight.shape)} of the full (256, 512), on {attn.k_proj.weight.device}")
    one = None
    if rank == 0:
        one = transformers.LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="commvq",
                                                            dtype=torch.float32).to(device).eval()

    for domain in ("essays", "stdlib"):
        chunks = chunks_of(eval_dir, domain, args.chunks)
        t0 = time.time()
        got, count, memory = hf.transformers_bpb(tp, chunks, codebook, args.window, device)
        t1 = time.time()
        if rank == 0:
            ref, count_one, memory_one = hf.transformers_bpb(one, chunks, codebook, args.window, device)
            check(f"{domain}: bits per byte, {world} ranks against one process ({count} bytes, {len(chunks)} chunks)",
                  count == count_one and abs(got - ref) <= args.tolerance,
                  f"{got:.5f} against {ref:.5f}, difference {got - ref:+.5f} (tolerance {args.tolerance}); "
                  f"{t1 - t0:.0f} s")
            report(f"{domain}: cache bytes used, rank 0 against one process",
                   f"{memory['bytes_used']} against {memory_one['bytes_used']} "
                   f"({memory['bytes_per_compressed_token']} against {memory_one['bytes_per_compressed_token']} "
                   "bytes per compressed token and layer)")
        dist.barrier()

    essay = open(os.path.join(eval_dir, "langdes.txt"), "rb").read()
    prompt = [essay[:256]]
    cache = CommvqCache(codebook, tp.config, window=32, max_length=256 + args.new_tokens)
    got = hf.generate(tp, prompt, cache, args.new_tokens, device)[0]
    if rank == 0:
        ref = hf.generate(one, prompt, CommvqCache(codebook, one.config, window=32,
                                                   max_length=256 + args.new_tokens), args.new_tokens, device)[0]
        check("greedy generation, window 32, runs on every rank", len(got) == args.new_tokens,
              f"{len(got)} tokens")
        diff = hf.first_difference(got, ref)
        report("greedy generation against one process",
               "identical" if diff is None else f"first difference at generated token {diff}")
        report("text", repr(hf.text(got)))
    dist.barrier()
    failed = len(res.failed)
    if rank == 0:
        print("RESULT", "FAIL " + ", ".join(res.failed) if res.failed else "PASS")
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
