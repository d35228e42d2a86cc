#!/usr/bin/env python3
"""commvq.transformers on bytellama-13m, checked against tools/quality.py and DynamicCache.

    python3 tests/gpu/check_transformers.py --library build-gpu/libcommvq.so [--device cuda]

Checks (each prints PASS/FAIL, or REPORT for what is only shown):

1. bits per byte of the eval-dev essays (independent 2048-byte chunks):
   transformers' LlamaForCausalLM with CommvqCache(prefill="codes"), each
   chunk appended whole and then attended from the cache, against
   tools/quality.py's commvq setting with the same codebook and window
   (its CPU engine and its own model); within --tolerance (0.002).
2. greedy generation of --new-tokens bytes after a --prompt-bytes prompt,
   with a window holding prompt and generation: token for token the same as
   DynamicCache (same model, same attention function, which is plain SDPA
   without a CommvqCache).
3. the same for a left-padded batch of two prompts of different lengths.
4. window 0 (every token but the current one from codes): runs; text shown.
5. beam search (reorder_cache) and sampling with num_return_sequences
   (copies of rows): run, or fail with a CommvqCache error; text shown.
6. the cache's memory (bytes used, per token) is reported.

Exits 0 with SKIP lines where torch, transformers or the device is missing.
"""

import argparse
import importlib
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def skip(why):
    print(f"SKIP check_transformers: {why}")
    sys.exit(0)


try:
    import torch
    import transformers
except ImportError as e:
    skip(f"{e.name} is not installed")

sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import commvq  # noqa: E402


def shared_dir(given):
    """The shared model and data: --shared, $COMMVQ_SHARED, or beside/inside the checkout
    (the tests' COMMVQ_SHARED_DIR is the checkout's ../shared), or /work/shared."""
    for base in (given, os.environ.get("COMMVQ_SHARED"), os.path.join(ROOT, "..", "shared"),
                 os.path.join(ROOT, "shared"), "/work/shared"):
        if base and os.path.isfile(os.path.join(base, "models", "bytellama-13m", "config.json")):
            return os.path.normpath(base)
    raise SystemExit("FAIL: no shared/models/bytellama-13m (give --shared DIR)")


class Results:
    def __init__(self):
        self.failed = []

    def check(self, name, ok, detail):
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            self.failed.append(name)

    @staticmethod
    def report(name, detail):
        print(f"REPORT {name}: {detail}", flush=True)


# ---------------------------------------------------------------------------
# 1. bits per byte against tools/quality.py
# ---------------------------------------------------------------------------

def quality_bpb(args, model_dir, eval_dir, bits, window, codebook):
    """tools/quality.py's own protocol and code: its model, its Attention (CPU engine), its score()."""
    import bytellama
    import quality
    torch.set_num_threads(args.threads or os.cpu_count())
    essays = quality.standard_domains(eval_dir)[0]
    chunks, _ = quality.domain_chunks(essays, quick=False)
    chunks = chunks[:args.chunks] if args.chunks else chunks
    model = bytellama.Llama(model_dir, device="cpu")
    lib = quality.Library(args.library, args.threads or os.cpu_count())
    cb = lib.codebook(codebook)
    setting = {"kind": "commvq", "bits": bits, "window": window}
    attention = quality.Attention(model, setting, lib, cb, args.threads)
    total, count = quality.score(model, chunks, attention, 0)
    return total / count, count, chunks


def transformers_bpb(model, chunks, codebook, window, device):
    """The same chunks through transformers: a fresh sequence per chunk, all of it appended, then attended."""
    from commvq.transformers import CommvqCache
    cache = CommvqCache(codebook, model.config, window=window, max_length=2 * 2048, prefill="codes")
    total, count = 0.0, 0
    with torch.no_grad():
        for inp, tgt, first in chunks:
            cache.reset()
            ids = torch.tensor([list(inp)], device=device)
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0].float()
            nll = torch.nn.functional.cross_entropy(logits, torch.tensor(list(tgt), device=device), reduction="none")
            total += nll[first:].sum().item() / math.log(2)
            count += len(tgt) - first
    return total / count, count, cache.memory()


def exact_bpb(model, chunks, device):
    total, count = 0.0, 0
    with torch.no_grad():
        for inp, tgt, first in chunks:
            logits = model(input_ids=torch.tensor([list(inp)], device=device), use_cache=False).logits[0].float()
            nll = torch.nn.functional.cross_entropy(logits, torch.tensor(list(tgt), device=device), reduction="none")
            total += nll[first:].sum().item() / math.log(2)
            count += len(tgt) - first
    return total / count


# ---------------------------------------------------------------------------
# 2-5. generation
# ---------------------------------------------------------------------------

def generate(model, prompts, cache, new_tokens, device, **options):
    """Left-padded batch of byte prompts -> generated byte lists (pad id 0, no EOS)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None,
                  do_sample=False)
    kwargs.update(options)  # options may turn sampling on
    if cache is not None:
        kwargs["past_key_values"] = cache
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return [row[width:].tolist() for row in out]


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def text(tokens):
    return bytes(t for t in tokens if 0 < t < 256).decode("utf-8", errors="replace")


def check_generation(res, model, codebook, prompts, new_tokens, device):
    from commvq.transformers import CommvqCache
    window = max(len(p) for p in prompts) + new_tokens + 8
    for label, batch in (("greedy, one prompt", prompts[:1]), ("greedy, left-padded batch of 2", prompts)):
        ref = generate(model, batch, None, new_tokens, device)
        cache = CommvqCache(codebook, model.config, window=window, max_length=window)
        got = generate(model, batch, cache, new_tokens, device)
        diffs = [first_difference(a, b) for a, b in zip(got, ref)]
        res.check(f"{label}, window {window} vs DynamicCache", all(d is None for d in diffs),
                  "identical" if all(d is None for d in diffs) else
                  f"first differences at generated token {diffs}: {text(got[0])!r} vs {text(ref[0])!r}")
        res.report(f"{label} memory", cache.memory())

    cache = CommvqCache(codebook, model.config, window=0, max_length=len(prompts[0]) + new_tokens)
    got = generate(model, prompts[:1], cache, new_tokens, device)
    m = cache.memory()
    res.check("window 0 generation runs", len(got[0]) == new_tokens,
              f"{len(got[0])} tokens, {m['compressed_tokens']} compressed, {m['bytes_used']} bytes used")
    res.report("window 0 text", repr(text(got[0])))

    for label, options, rows in (("beam search, 3 beams", dict(num_beams=3), 3),
                                 ("sampling, 2 return sequences", dict(do_sample=True, num_return_sequences=2), 2)):
        cache = CommvqCache(codebook, model.config, window=32, max_length=len(prompts[0]) + new_tokens,
                            max_batch_size=rows)
        try:
            torch.manual_seed(0)
            got = generate(model, prompts[:1], cache, new_tokens, device, **options)
        except Exception as e:  # noqa: BLE001 - the check is that the error is ours and says why
            clear = "CommvqCache" in str(e)
            res.check(f"{label} with window 32", clear, f"raised {type(e).__name__}: {e}")
            continue
        res.check(f"{label} with window 32", all(len(g) == new_tokens for g in got),
                  f"{len(got)} sequences of {[len(g) for g in got]} tokens")
        res.report(f"{label} text", repr(text(got[0])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", required=True, help="libcommvq.so (a CUDA build for --device cuda)")
    ap.add_argument("--shared", default=None, help="directory with models/ and data/ (default: found)")
    ap.add_argument("--device", default="cuda", help="torch device of the model and cache (cuda, cpu)")
    ap.add_argument("--bits", type=int, default=1, help="codebook of data/codebooks: 1 or 2")
    ap.add_argument("--window", type=int, default=128, help="window of the bits-per-byte check")
    ap.add_argument("--chunks", type=int, default=0, help="essay chunks to score (0: all 25)")
    ap.add_argument("--tolerance", type=float, default=0.002, help="bits per byte")
    ap.add_argument("--prompt-bytes", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of the quality.py reference")
    ap.add_argument("--skip-bpb", action="store_true", help="only the generation checks")
    args = ap.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        skip("torch sees no CUDA device")
    commvq.load_library(args.library)
    if args.device.startswith("cuda") and not commvq.cuda_available():
        skip(f"{args.library} has no CUDA (build with -DCOMMVQ_CUDA=ON)")
    importlib.import_module("commvq.transformers")  # registers attn_implementation="commvq"

    shared = shared_dir(args.shared)
    model_dir = os.path.join(shared, "models", "bytellama-13m")
    eval_dir = os.path.join(shared, "data", "eval-dev")
    codebook = os.path.join(ROOT, "data", "codebooks", f"bytellama-13m-{args.bits}bit.safetensors")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, libcommvq {commvq.version()} "
          f"({args.library}), device {args.device}, model {model_dir}, codebook {codebook}")
    res = Results()
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="commvq",
                                                          dtype=torch.float32).to(args.device).eval()

    if not args.skip_bpb:
        t0 = time.time()
        ref, count, chunks = quality_bpb(args, model_dir, eval_dir, args.bits, args.window, codebook)
        t1 = time.time()
        got, count_hf, memory = transformers_bpb(model, chunks, codebook, args.window, args.device)
        t2 = time.time()
        res.report("exact (no cache) bits per byte through transformers", f"{exact_bpb(model, chunks, args.device):.4f}")
        res.check(f"bits per byte, {args.bits} bit, window {args.window}, {count} bytes of essays",
                  count == count_hf and abs(got - ref) <= args.tolerance,
                  f"transformers + CommvqCache {got:.4f}, tools/quality.py {ref:.4f}, "
                  f"difference {got - ref:+.4f} (tolerance {args.tolerance}); {t1 - t0:.0f} s and {t2 - t1:.0f} s")
        res.report("memory after the last chunk", memory)

    essay = open(os.path.join(eval_dir, "langdes.txt"), "rb").read()
    prompts = [essay[:args.prompt_bytes], essay[1000:1000 + max(args.prompt_bytes * 2 // 3, 1)]]
    check_generation(res, model, codebook, prompts, args.new_tokens, args.device)

    print("RESULT", "FAIL " + ", ".join(res.failed) if res.failed else "PASS")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
