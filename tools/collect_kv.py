#!/usr/bin/python3
"""Collect real KV caches (and optionally queries) from a LLaMA-family model.

Runs tools/bytellama.py's forward pass over text files in independent chunks
and writes one safetensors file with, for every layer l:

  keys.{l}     [T, Hkv, d]  keys BEFORE RoPE (what CommVQ quantises)
  values.{l}   [T, Hkv, d]
  queries.{l}  [Tq, Hq, d]  queries AFTER RoPE for the last Tq collected
                            positions (only with --queries-last Tq)

Positions restart at 0 in every chunk (each chunk is a fresh context), so a
key at row i has position i - (start row of its chunk); `chunks` in the
metadata lists the chunks. Queries must lie inside the last chunk, so that
they attend exactly to that chunk's keys: with a single chunk, key positions
are 0..T-1 and query positions are query_start..T-1.

With --take N FILE... (repeatable) each group of files gives N tokens per
layer, its chunks spread evenly over the group's files, so a mix of domains
is one command (tools/train-codebooks-gpu.sh: calib-text + calib-code).

Eval text is refused unless --allow-eval: codebooks are fit on what this tool
collects, and fitting on the held-out text would make every quality figure
measured on it meaningless.

Example (the test fixture, see tests/data/README.md):

  /usr/bin/python3 tools/collect_kv.py --allow-eval --offset 0 \\
      --max-tokens 1280 --queries-last 128 --dtype f16 \\
      -o tests/data/bytellama_kv.safetensors \\
      /work/shared/data/eval-dev/langdes.txt
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bytellama  # noqa: E402


def held_out_reason(path, eval_dir):
    """Why `path` is held-out eval text, or None if it may be collected from.

    Held out: anything under a directory named eval-dev, and the Python
    standard-library files listed in eval-dev/stdlib-files.txt (the model
    README says those were not trained on and serve as eval text too).
    """
    real = os.path.realpath(path)
    if "eval-dev" in real.split(os.sep):
        return "it is under eval-dev"
    listing = os.path.join(eval_dir, "stdlib-files.txt") if eval_dir else None
    if listing and os.path.exists(listing):
        parts = real.split(os.sep)
        for line in open(listing):
            rel = line.strip()
            if not rel:
                continue
            relp = rel.split("/")
            # Match ".../python3.X/<rel>" so an unrelated enum.py is not refused.
            n = len(relp)
            if parts[-n:] == relp and len(parts) > n and parts[-n - 1].startswith("python3"):
                return f"it is listed in {listing}"
    return None


def source_name(path):
    """Short, machine-independent name for the metadata: parent/file."""
    real = os.path.normpath(os.path.abspath(path))
    return "/".join(real.split(os.sep)[-2:])


def plan_chunks(files, offset, chunk, max_tokens):
    """[(file index, byte start, n tokens)] covering files from `offset`.

    Chunks never cross a file boundary (that would glue unrelated documents
    into one context); the last chunk of a file may be short, and the last
    chunk overall is cut to respect max_tokens.
    """
    plan, total = [], 0
    for fi, data in enumerate(files):
        for s in range(offset, len(data), chunk):
            n = min(chunk, len(data) - s)
            if max_tokens is not None:
                n = min(n, max_tokens - total)
            if n <= 0:
                return plan
            plan.append((fi, s, n))
            total += n
    return plan


def plan_spread(files, offset, chunk, max_tokens):
    """Like plan_chunks, but with the cap spread over the files: of all the
    chunks plan_chunks would cut (no cap), the fewest evenly spaced ones
    that reach max_tokens, in file order, the last one cut to the cap. So a
    budget smaller than the text samples every part of it (every file, and
    more than their first bytes) instead of the first files alone."""
    every = plan_chunks(files, offset, chunk, None)
    total = sum(n for _, _, n in every)
    if max_tokens is None or total <= max_tokens:
        return every
    k = max(1, -(-max_tokens // chunk))
    while True:
        picked = [every[(2 * i + 1) * len(every) // (2 * k)] for i in range(k)]
        if sum(n for _, _, n in picked) >= max_tokens or k == len(every):
            break
        k += 1
    plan, left = [], max_tokens
    for fi, s, n in picked:
        if left <= 0:
            break
        plan.append((fi, s, min(n, left)))
        left -= n
    return plan


def plan_groups(groups, offset, chunk):
    """--take groups [(n tokens, [file data])] -> one plan over all their
    files (file indices counted across groups), each group's budget spread
    over its own files (plan_spread)."""
    plan, base = [], 0
    for n, files in groups:
        plan += [(fi + base, s, m) for fi, s, m in plan_spread(files, offset, chunk, n)]
        base += len(files)
    return plan


def main():
    ap = argparse.ArgumentParser(
        description="Collect pre-RoPE keys, values and post-RoPE queries into safetensors.")
    ap.add_argument("files", nargs="*", help="text files (bytes are tokens)")
    ap.add_argument("--take", nargs="+", action="append", default=[], metavar="N FILE",
                    help="N tokens per layer from these files, spread evenly over them (plan_spread); "
                         "repeat for a mix, e.g. --take 32768 calib-text/*.txt --take 32768 calib-code/*.py "
                         "(instead of positional files and --max-tokens)")
    ap.add_argument("-o", "--output", required=True, help="output .safetensors path")
    ap.add_argument("--model", default=bytellama.default_model_dir(), help="HF model directory")
    ap.add_argument("--chunk", type=int, default=2048, help="bytes per independent context (default 2048)")
    ap.add_argument("--offset", type=int, default=0, help="skip this many bytes at the start of each file")
    ap.add_argument("--max-tokens", type=int, default=None, help="cap on tokens collected per layer")
    ap.add_argument("--queries-last", type=int, default=0, metavar="N",
                    help="also store post-RoPE queries of the last N collected positions")
    ap.add_argument("--dtype", choices=("f16", "f32"), default="f32", help="stored dtype (default f32)")
    ap.add_argument("--allow-eval", action="store_true",
                    help="allow held-out eval text (fixtures only, never codebook fitting)")
    ap.add_argument("--eval-dir", default=None,
                    help="eval-dev directory, for its stdlib-files.txt (default: beside the model)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    args = ap.parse_args()

    if args.chunk <= 0 or args.offset < 0 or (args.max_tokens is not None and args.max_tokens <= 0):
        ap.error("--chunk and --max-tokens must be positive, --offset non-negative")
    eval_dir = args.eval_dir or os.path.join(os.path.dirname(os.path.dirname(
        os.path.normpath(args.model))), "data", "eval-dev")
    groups = []
    for take in args.take:
        if len(take) < 2 or not take[0].isdigit() or int(take[0]) <= 0:
            ap.error(f"--take {' '.join(take)}: want a positive token count, then files")
        groups.append((int(take[0]), take[1:]))
    if groups and (args.files or args.max_tokens is not None):
        ap.error("--take replaces positional files and --max-tokens")
    if not groups and not args.files:
        ap.error("give text files, or --take N FILE...")
    paths = [p for _, g in groups for p in g] if groups else args.files
    if not args.allow_eval:
        for p in paths:
            why = held_out_reason(p, eval_dir)
            if why:
                ap.error(f"refusing {p}: {why} (held-out eval text; pass --allow-eval "
                         "only for test fixtures, never for codebook fitting)")

    files = [open(p, "rb").read() for p in paths]
    if groups:
        at = 0
        data_groups = []
        for n, g in groups:
            data_groups.append((n, files[at:at + len(g)]))
            at += len(g)
        plan = plan_groups(data_groups, args.offset, args.chunk)
    else:
        plan = plan_chunks(files, args.offset, args.chunk, args.max_tokens)
    if not plan:
        ap.error("no tokens to collect (offset past the end of every file?)")
    T = sum(n for _, _, n in plan)
    Tq = args.queries_last
    if Tq < 0 or Tq > plan[-1][2]:
        # Queries spanning two chunks would have two position ranges and
        # attend to different key sets; keep the contract simple instead.
        ap.error(f"--queries-last {Tq} must be within the last chunk ({plan[-1][2]} tokens)")

    model = bytellama.Llama(args.model, device=args.device)
    L = model.n_layers
    keys = [[] for _ in range(L)]
    values = [[] for _ in range(L)]
    queries = [None] * L
    for ci, (fi, s, n) in enumerate(plan):
        cap = {}
        model.forward(list(files[fi][s:s + n]), capture=cap)
        for l in range(L):
            keys[l].append(cap[l]["k"].cpu())
            values[l].append(cap[l]["v"].cpu())
            if ci == len(plan) - 1 and Tq:
                queries[l] = cap[l]["q"][n - Tq:].cpu()
        print(f"chunk {ci + 1}/{len(plan)}: {source_name(paths[fi])} bytes {s}..{s + n}",
              file=sys.stderr)

    np_dtype = np.float16 if args.dtype == "f16" else np.float32

    def store(t):
        a = t.numpy().astype(np_dtype)
        if not np.isfinite(a).all():  # f16 tops out at 65504
            raise OverflowError("non-finite value after conversion; use --dtype f32")
        return a

    tensors = {}
    for l in range(L):
        tensors[f"keys.{l}"] = store(torch.cat(keys[l]))
        tensors[f"values.{l}"] = store(torch.cat(values[l]))
    if Tq:
        for l in range(L):
            tensors[f"queries.{l}"] = store(queries[l])

    scaling = "none" if model.rope_type == "default" else model.rope_type
    row, chunks = 0, []
    for fi, s, n in plan:
        chunks.append({"row": row, "source": fi, "byte_start": s, "n_tokens": n})
        row += n
    metadata = {
        "model": model.name,
        "n_layers": str(L),
        "n_kv_heads": str(model.n_kv_heads),
        "n_q_heads": str(model.n_q_heads),
        "head_dim": str(model.head_dim),
        "rope_theta": repr(model.rope_theta),
        "rope_layout": "rotate_half",
        "rope_scaling": scaling,
        "rope_scaling_params": json.dumps(model.rope_params, sort_keys=True),
        "sources": json.dumps([source_name(p) for p in paths]),
        "offset": str(args.offset),
        "chunk_size": str(args.chunk),
        "chunks": json.dumps(chunks),
        "n_tokens": str(T),
        "n_queries": str(Tq),
        # Position (within the last chunk) of queries.{l}[0]; queries are at
        # query_start .. query_start + n_queries - 1.
        "query_start": str(plan[-1][2] - Tq),
        "dtype": args.dtype,
        # --take: per group its files (indices into sources), the tokens asked and collected.
        **({"mix": json.dumps([{"sources": [base + i for i in range(len(g))], "tokens_asked": n,
                                 "tokens": sum(m for fi, _, m in plan if base <= fi < base + len(g))}
                                for (n, g), base in zip(groups, np.cumsum([0] + [len(g) for _, g in groups]).tolist())])}
           if groups else {}),
        "keys": "pre-RoPE",
        "queries": "post-RoPE",
    }
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    bytellama.write_safetensors(args.output, tensors, metadata)
    print(f"wrote {args.output}: {T} tokens x {L} layers, {Tq} queries, "
          f"{os.path.getsize(args.output)} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
