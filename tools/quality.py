#!/usr/bin/python3
"""Quality of the compressed cache on a real model: bytellama-13m over eval-dev text.

Each setting runs the model (tools/bytellama.py) with its attention replaced:

* exact        the harness's own exact causal attention (float32), the baseline;
* commvq-*     attention served by libcommvq through its C API: per chunk a
               fresh sequence; per layer all keys and values of the chunk are
               appended, then all queries attend causally, so every token older
               than the window (counted from the chunk's end) is read from codes;
* kivi-*, int4-token-*
               fake-quantized keys and values (tools/quality_baselines.py) fed
               to the exact attention, with the same window kept exact.

Measured per setting and per domain of text: bits per byte, and per layer the
relative error of the attention output against exact attention on the same
queries, keys and values. A domain is a labelled list of files (--text
LABEL:FILE..., scored in independent 2048-byte chunks, as the model README's
1.81; --repeat LABEL:FILE, pieces of 1024 bytes each followed by itself, the
second copy scored: predictable only by attending ~1024 tokens back, far
behind the window). The standard run (no --text or --repeat) has three:
"essays" (the four short eval essays), "repeat" (addiction.txt) and "stdlib"
(the middle chunk of each eval-dev standard-library file of stdlib-files.txt).
The exact setting also measures each quantizer's key and value MSE per layer
(per element, in the keys' and values' own units; CommVQ through
commvq_codebook_reconstruct) on each chunked domain's exact keys and values.

Results accumulate in a JSON file (--results) so settings can run separately;
--report renders them into the marked section of a markdown file. A results
file records the sha256 of every file of every domain and refuses a run on
other text. --list-texts prints what a run would score.

    /usr/bin/python3 tools/quality.py --library build/libcommvq.so \\
        --codebook 1=data/codebooks/bytellama-13m-1bit.safetensors \\
        --codebook 2=data/codebooks/bytellama-13m-2bit.safetensors \\
        --results build/quality.json --report docs/QUALITY.md
    /usr/bin/python3 tools/quality.py --quick ...   # a smoke check: 3 settings, the last chunks of each domain
    /usr/bin/python3 tools/quality.py ... --text prose:my/*.txt --text json:data/*.json --chunks-per-file json=2
"""

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "bindings", "python"))
import bytellama  # noqa: E402
import quality_baselines as baselines  # noqa: E402

ESSAYS = ("langdes", "laundry", "vcsqueeze", "pow")
CHUNK = 2048
REPEAT_PIECE = 1024
REPEAT_PIECES = 4
WINDOWS = (128, 0)
STDLIB_CHUNKS_PER_FILE = 1  # the standard run's stdlib domain: the middle chunk of each file


def all_settings():
    """name -> setting; the order is the report's."""
    s = {"exact": {"kind": "exact"}}
    for bits in (1, 2):
        for w in WINDOWS:
            s[f"commvq-{bits}bit-w{w}"] = {"kind": "commvq", "bits": bits, "window": w}
    for bits in (2, 1):
        for w in WINDOWS:
            s[f"kivi-{bits}bit-w{w}"] = {"kind": "kivi", "bits": bits, "window": w}
    for w in WINDOWS:
        s[f"int4-token-w{w}"] = {"kind": "int4", "bits": 4, "window": w}
    return s


QUICK_SETTINGS = ("exact", "commvq-1bit-w128", "kivi-2bit-w128")


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------

# A domain is a labelled list of files: kind "chunks" scores every byte of
# independent CHUNK-byte chunks (at most chunks_per_file per file, evenly
# spread, 0 = all); kind "repeat" scores the second copy of REPEAT_PIECE-byte
# pieces of its first file, each followed by itself.
LABEL_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class Domain:
    def __init__(self, label, kind, files, chunks_per_file=0):
        self.label, self.kind, self.files, self.chunks_per_file = label, kind, list(files), chunks_per_file

    def __repr__(self):
        return f"Domain({self.label!r}, {self.kind!r}, {len(self.files)} files, {self.chunks_per_file} per file)"


def split_label(item):
    """'LABEL:FILE' -> (LABEL, FILE); a plain FILE -> (None, FILE). A label is
    letters, digits, '_' and '-' and starts with a letter (so './a:b' and
    '1:b' are files; a label may precede a path with ':', 'odd:a:b')."""
    label, sep, path = item.partition(":")
    if sep and label and label[0].isalpha() and set(label) <= LABEL_CHARS and path:
        return label, path
    return None, item


def parse_text_groups(groups, kind, option):
    """The groups of one repeatable option (--text LABEL:FILE [FILE...] ...),
    as argparse's append + nargs='+' gives them, into [(label, [files])] in
    order of first appearance; a label named again adds files to its domain.
    A group's later files take its label unless they carry their own."""
    out = {}
    for group in groups:
        label = None
        for item in group:
            own, path = split_label(item)
            label = own or label
            if label is None:
                raise ValueError(f"{option} {item}: give the domain first, as LABEL:FILE (e.g. prose:{item})")
            out.setdefault(label, []).append(path)
    return list(out.items())


def parse_per_file(specs):
    """['stdlib=2', ...] -> {'stdlib': 2}."""
    out = {}
    for spec in specs:
        label, sep, n = spec.partition("=")
        if not sep or not n.isdigit():
            raise ValueError(f"--chunks-per-file {spec}: want LABEL=N (N >= 0, 0 = every chunk)")
        out[label] = int(n)
    return out


def standard_domains(eval_dir):
    """The standard run: the essays, the long-context repeat case, and one
    chunk (the middle one) of each standard-library file of stdlib-files.txt."""
    listing = os.path.join(eval_dir, "stdlib-files.txt")
    stdlib = [os.path.join(eval_dir, "stdlib", line.strip()) for line in open(listing) if line.strip()]
    return [Domain("essays", "chunks", [os.path.join(eval_dir, n + ".txt") for n in ESSAYS]),
            Domain("repeat", "repeat", [os.path.join(eval_dir, "addiction.txt")]),
            Domain("stdlib", "chunks", stdlib, STDLIB_CHUNKS_PER_FILE)]


def make_domains(args, eval_dir):
    """The domains a run measures: --text / --repeat if given, else the standard ones."""
    per_file = parse_per_file(args.chunks_per_file)
    if args.text or args.repeat:
        domains = [Domain(l, "chunks", f) for l, f in parse_text_groups(args.text, "chunks", "--text")]
        for label, files in parse_text_groups(args.repeat, "repeat", "--repeat"):
            if any(d.label == label for d in domains):
                raise ValueError(f"domain {label} is given to both --text and --repeat")
            domains.append(Domain(label, "repeat", files))
    else:
        domains = standard_domains(eval_dir)
    labels = {d.label for d in domains}
    unknown = sorted(set(per_file) - labels)
    if unknown:
        raise ValueError(f"--chunks-per-file names no domain of this run: {', '.join(unknown)}")
    for d in domains:
        d.chunks_per_file = per_file.get(d.label, d.chunks_per_file)
        missing = [p for p in d.files if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"domain {d.label}: no such file {missing[0]}")
    return domains


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def file_chunks(data, chunks_per_file):
    """(input bytes, target bytes, first scored target) per chunk, as bytellama.chunk_bits;
    with chunks_per_file, that many chunks evenly spread over the file."""
    starts = list(range(0, len(data) - 1, CHUNK))
    n = len(starts)
    if chunks_per_file and n > chunks_per_file:
        starts = [starts[(2 * i + 1) * n // (2 * chunks_per_file)] for i in range(chunks_per_file)]
    out = []
    for s in starts:
        tgt = data[s + 1:s + CHUNK + 1]
        out.append((data[s:s + len(tgt)], tgt, 0))
    return out


def repeat_chunks(data, pieces):
    """A piece of the text followed by itself; only the second copy is scored."""
    out = []
    for i in range(pieces):
        piece = data[i * REPEAT_PIECE:(i + 1) * REPEAT_PIECE]
        if len(piece) < REPEAT_PIECE:
            break
        seq = piece + piece
        out.append((seq[:-1], seq[1:], REPEAT_PIECE - 1))
    return out


def domain_chunks(domain, quick):
    """(chunks, file descriptions) of a domain; quick: its last 2 chunks (repeat: 1)."""
    chunks, files = [], []
    for path in domain.files:
        data = open(path, "rb").read()
        files.append({"path": path, "sha256": sha256_hex(data), "bytes": len(data)})
        if domain.kind == "repeat":
            chunks += repeat_chunks(data, REPEAT_PIECES)
        else:
            chunks += file_chunks(data, domain.chunks_per_file)
        if domain.kind == "repeat" and len(chunks) >= REPEAT_PIECES:
            break
    if quick:
        chunks = chunks[:1] if domain.kind == "repeat" else chunks[-2:]
    return chunks, files


def describe_texts(domains, chunks, files, quick, shard=None):
    """What the results file records of the text (and checks on every run)."""
    texts = {"quick": quick, "chunk": CHUNK, "domains": {
        d.label: {"kind": d.kind, "chunks_per_file": d.chunks_per_file, "files": files[d.label],
                  "chunks": len(chunks[d.label]), "scored_bytes": sum(len(t) - f for _, t, f in chunks[d.label])}
        for d in domains}}
    if shard:
        texts["shard"] = "%d/%d" % shard
    return texts


def parse_shard(spec):
    """'I/N' -> (I, N) with 0 <= I < N; None -> None."""
    if spec is None:
        return None
    i, sep, n = spec.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
        raise ValueError(f"--shard {spec}: want I/N with 0 <= I < N, e.g. 0/4")
    return int(i), int(n)


def texts_key(texts):
    """What must agree between a results file and a run: the text's content
    (sha256 of each file's bytes, in order), how it is cut, per domain; not
    the files' paths. Results files from before domains compare whole."""
    if "domains" not in texts:
        return texts
    return {"quick": texts["quick"], "chunk": texts["chunk"], "shard": texts.get("shard"),
            "domains": {l: {"kind": d["kind"], "chunks_per_file": d["chunks_per_file"],
                            "sha256": [f["sha256"] for f in d["files"]]} for l, d in texts["domains"].items()}}


def domain_labels(texts):
    """[(label, scored bytes)] of a results file, old (essays + repeat) or new."""
    if "domains" in texts:
        return [(l, d["scored_bytes"]) for l, d in texts["domains"].items()]
    return [("essays", texts["essay_bytes"]), ("repeat", texts["repeat_bytes"])]


def row_domain(row, label):
    """A setting's result on a domain: {'bpb', 'bytes'[, 'attention_rel_error']}, or None."""
    if "domains" in row:
        return row["domains"].get(label)
    return row.get(label)


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------

def exact_attention(model, q, k_rot, v):
    """Causal softmax attention, queries and keys at positions 0..T-1.
    q [T, Hq, d] and k_rot [T, Hkv, d] post-RoPE, v [T, Hkv, d]."""
    T = q.shape[0]
    group = model.n_q_heads // model.n_kv_heads
    k_rot = k_rot.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k_rot) / math.sqrt(model.head_dim)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    probs = torch.softmax(scores.masked_fill(mask[None], float("-inf")), dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


class ErrorMeter:
    """Per layer: sum ||out - ref||^2 and sum ||ref||^2 over every query."""

    def __init__(self, n_layers):
        self.diff = [0.0] * n_layers
        self.ref = [0.0] * n_layers

    def add(self, layer, out, ref):
        self.diff[layer] += (out.double() - ref.double()).pow(2).sum().item()
        self.ref[layer] += ref.double().pow(2).sum().item()

    def relative(self):
        return [math.sqrt(d / r) if r else None for d, r in zip(self.diff, self.ref)]


class Codebook:
    """A codebook file loaded once per worker thread: a handle must not be
    used by two threads at once, and reconstruction is spread over threads."""

    def __init__(self, lib, path, copies):
        self.copies = [lib.commvq.Codebook.load(path) for _ in range(copies)]
        self.handle = self.copies[0]  # what caches are created from
        self.info = self.handle.info


class HeadCodebooks:
    """The per-head design of docs/PARALLEL.md: one 1-KV-head codebook per KV
    head of the model (its own value encoder, head key scales), so a rank
    holding some heads encodes them with no exchange. Head h's cache gets
    KV head h and query heads h*G .. h*G+G-1 (G = n_q_heads / n_kv_heads),
    the split tools/split_kv_heads.py makes of the calibration KV."""

    def __init__(self, heads):
        self.heads = heads  # [Codebook], one per KV head
        first = heads[0].info
        self.group = first["n_q_heads"]
        # What bits_per_element and the results need, summed over the heads.
        self.info = dict(first, n_kv_heads=len(heads), n_q_heads=self.group * len(heads),
                         compressed_token_bytes=sum(c.info["compressed_token_bytes"] for c in heads))

    def check(self, model, bits):
        """Refuses codebooks that do not split this model by KV head."""
        if len(self.heads) != model.n_kv_heads:
            raise SystemExit(f"--codebook-per-head {bits}=: {len(self.heads)} codebooks for a model of "
                             f"{model.n_kv_heads} KV heads")
        want = (1, model.n_q_heads // model.n_kv_heads, model.head_dim, model.n_layers)
        for h, c in enumerate(self.heads):
            i = c.info
            have = (i["n_kv_heads"], i["n_q_heads"], i["head_dim"], i["n_layers"])
            if have != want:
                raise SystemExit(f"--codebook-per-head {bits}=: head {h}'s codebook has {have[0]} KV heads, "
                                 f"{have[1]} q heads, head_dim {have[2]}, {have[3]} layers; want "
                                 f"{', '.join(map(str, want))}")
            if i["value_bits"] != bits:
                raise SystemExit(f"--codebook-per-head: head {h}'s codebook is {i['value_bits']}-bit, not {bits}-bit")


class HeadCaches:
    """One cache per KV head (HeadCodebooks), used as one cache of all heads."""

    def __init__(self, lib, codebooks, **params):
        self.caches = [lib.commvq.Cache(c.handle, **params) for c in codebooks.heads]
        self.group = codebooks.group

    def seq_clear(self, seq):
        for c in self.caches:
            c.seq_clear(seq)

    def append(self, layer, seq, k, v):
        for h, c in enumerate(self.caches):
            c.append(layer, seq, np.ascontiguousarray(k[:, h:h + 1]), np.ascontiguousarray(v[:, h:h + 1]))

    def attend(self, layer, seq, q):
        g = self.group
        outs = [c.attend(layer, seq, np.ascontiguousarray(q[:, bytellama.query_heads(h, g)]))
                for h, c in enumerate(self.caches)]
        return np.concatenate([o for o, _ in outs], axis=1), np.concatenate([l for _, l in outs], axis=-1)


class Library:
    """libcommvq through its Python binding (bindings/python)."""

    def __init__(self, path, threads):
        import commvq
        self.commvq = commvq
        commvq.load_library(path)
        self.threads = threads
        # ctypes releases the GIL during a call, so the threads run in parallel.
        self.pool = concurrent.futures.ThreadPoolExecutor(threads)

    def codebook(self, path):
        return Codebook(self, path, self.threads)

    def reconstruct(self, cb, layer, k, v):
        """What the cache's attention sees for keys k (pre-RoPE) and values v
        [T, Hkv, d] (commvq_codebook_reconstruct), the tokens split over threads;
        per-head codebooks each decode their own head."""
        if k.shape[0] == 0:  # a chunk no longer than the window: nothing to decode
            return np.zeros(k.shape, k.dtype), np.zeros(v.shape, v.dtype)
        if isinstance(cb, HeadCodebooks):
            parts = [self.reconstruct(c, layer, np.ascontiguousarray(k[:, h:h + 1]),
                                      np.ascontiguousarray(v[:, h:h + 1])) for h, c in enumerate(cb.heads)]
            return np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1)
        bounds = np.linspace(0, k.shape[0], len(cb.copies) + 1).astype(int)
        parts = [self.pool.submit(cb.copies[i].reconstruct, layer, k[a:b], v[a:b])
                 for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]
        done = [p.result() for p in parts]
        return np.concatenate([d[0] for d in done]), np.concatenate([d[1] for d in done])


class Attention:
    """attention_fn for Llama.forward; start_chunk() before each chunk."""

    def __init__(self, model, setting, lib=None, codebook=None, threads=0, mse=None, check_decoded=False):
        self.model = model
        self.setting = setting
        self.errors = ErrorMeter(model.n_layers)  # over every domain
        self.domain_errors = None  # the current domain's, set by the caller
        self.mse = mse
        self.cache = self.vs_decoded = None
        if setting["kind"] == "commvq":
            self.lib, self.codebook = lib, codebook
            params = dict(window=setting["window"], max_tokens=2 * CHUNK, n_threads=threads)
            self.cache = (HeadCaches(lib, codebook, **params) if isinstance(codebook, HeadCodebooks)
                          else lib.commvq.Cache(codebook.handle, **params))
            # With check_decoded: the cache's attention against exact attention
            # over the tokens it decodes (commvq_codebook_reconstruct), a check
            # of the harness's use of the cache (positions, window, GQA) and of
            # attention from codes.
            self.vs_decoded = ErrorMeter(model.n_layers) if check_decoded else None

    def start_chunk(self):
        if self.cache is not None:
            self.cache.seq_clear(0)

    def __call__(self, layer, q, k, v, positions):
        kind = self.setting["kind"]
        k_rot = self.model.rope(k, positions)
        exact = exact_attention(self.model, q, k_rot, v)
        if self.mse is not None:
            self.mse.add(layer, k, k_rot, v)
        if kind == "exact":
            return exact
        if kind == "commvq":
            self.cache.append(layer, 0, k.cpu().numpy(), v.cpu().numpy())
            out, _ = self.cache.attend(layer, 0, q.cpu().numpy())
            out = torch.from_numpy(out).to(q.device)
            if self.vs_decoded is not None:
                self.vs_decoded.add(layer, out, self.decoded_attention(layer, q, k, v, positions))
        else:
            quantize = baselines.kivi if kind == "kivi" else baselines.per_token
            k_hat, v_hat = quantize(k_rot, v, self.setting["bits"], self.setting["window"])
            out = exact_attention(self.model, q, k_hat, v_hat)
        self.errors.add(layer, out, exact)
        if self.domain_errors is not None:
            self.domain_errors.add(layer, out, exact)
        return out

    def decoded_attention(self, layer, q, k, v, positions):
        """Exact attention with the tokens older than the window replaced by their decoded form."""
        n = max(k.shape[0] - self.setting["window"], 0)
        k_dec, v_dec = self.lib.reconstruct(self.codebook, layer, k[:n].cpu().numpy(), v[:n].cpu().numpy())
        k_all = torch.cat([torch.from_numpy(k_dec).to(k.device), k[n:]])
        v_all = torch.cat([torch.from_numpy(v_dec).to(v.device), v[n:]])
        return exact_attention(self.model, q, self.model.rope(k_all, positions), v_all)


class MseMeter:
    """Key and value squared error per layer of every quantizer, on the exact run's tensors."""

    def __init__(self, n_layers, lib, codebooks):
        self.lib = lib
        self.codebooks = codebooks  # bits -> codebook
        self.methods = [(f"commvq-{b}bit", "commvq", b) for b in sorted(codebooks)] + \
            [("kivi-2bit", "kivi", 2), ("kivi-1bit", "kivi", 1), ("int4-token", "int4", 4)]
        self.sums = {m: {"k": [0.0] * n_layers, "v": [0.0] * n_layers, "n": [0] * n_layers}
                     for m, _, _ in self.methods}
        # The tensors' own mean square, the scale the errors are judged against.
        self.sums["mean square"] = {"k": [0.0] * n_layers, "v": [0.0] * n_layers, "n": [0] * n_layers}

    def add(self, layer, k, k_rot, v):
        k, k_rot, v = k.cpu(), k_rot.cpu(), v.cpu()
        s = self.sums["mean square"]
        s["k"][layer] += k.double().pow(2).sum().item()
        s["v"][layer] += v.double().pow(2).sum().item()
        s["n"][layer] += k.numel()
        for name, kind, bits in self.methods:
            if kind == "commvq":
                k_hat, v_hat = self.lib.reconstruct(self.codebooks[bits], layer, k.numpy(), v.numpy())
                k_hat, v_hat, k_ref, n = torch.from_numpy(k_hat), torch.from_numpy(v_hat), k, k.shape[0]
            else:
                # Quantized after RoPE; RoPE is orthogonal, so errors keep their pre-RoPE size.
                if kind == "kivi":
                    k_hat, v_hat = baselines.kivi(k_rot, v, bits, 0)
                    n = baselines.kivi_quantized_tokens(k.shape[0], 0)
                else:
                    k_hat, v_hat = baselines.per_token(k_rot, v, bits, 0)
                    n = k.shape[0]
                k_ref = k_rot
            s = self.sums[name]
            s["k"][layer] += (k_hat[:n].double() - k_ref[:n].double()).pow(2).sum().item()
            s["v"][layer] += (v_hat[:n].double() - v[:n].double()).pow(2).sum().item()
            s["n"][layer] += n * k.shape[1] * k.shape[2]

    def result(self):
        # "mean square" comes first in the report, as the scale of the rest.
        order = ["mean square"] + [m for m, _, _ in self.methods]
        return {m: {"key": [a / n for a, n in zip(s["k"], s["n"])],
                    "value": [a / n for a, n in zip(s["v"], s["n"])]}
                for m, s in ((m, self.sums[m]) for m in order)}


# ---------------------------------------------------------------------------

def score(model, chunks, attention, mse_chunks):
    """(bits, bytes) over the scored targets of the chunks; MSE on the first mse_chunks."""
    bits, count = 0.0, 0
    mse = attention.mse
    for i, (inp, tgt, first) in enumerate(chunks):
        attention.mse = mse if i < mse_chunks else None
        attention.start_chunk()
        logits = model.forward(torch.tensor(list(inp)), attention_fn=attention)
        nll = torch.nn.functional.cross_entropy(logits.float().cpu(), torch.tensor(list(tgt)), reduction="none")
        bits += nll[first:].sum().item() / math.log(2)
        count += len(tgt) - first
    attention.mse = mse
    return bits, count


def bits_per_element(setting, codebook_info, head_dim):
    kind = setting["kind"]
    if kind == "exact":
        return 16.0  # the fp16 cache it stands for (the harness computes in fp32)
    if kind == "commvq":
        info = codebook_info[setting["bits"]]
        return info["compressed_token_bytes"] * 8 / (2 * info["n_kv_heads"] * info["head_dim"])
    if kind == "kivi":
        return baselines.kivi_bits(setting["bits"])
    return baselines.per_token_bits(setting["bits"], head_dim)


def plan(args):
    """(domains, chunks per label, texts description) of a run; ValueError on a bad text option."""
    domains = make_domains(args, args.eval_dir)
    shard = parse_shard(getattr(args, "shard", None))
    chunks, files = {}, {}
    for d in domains:
        chunks[d.label], files[d.label] = domain_chunks(d, args.quick)
        if not chunks[d.label]:
            raise ValueError(f"domain {d.label}: no text to score" +
                             (f" (a repeat text needs {REPEAT_PIECE} bytes)" if d.kind == "repeat" else ""))
        if shard:
            chunks[d.label] = chunks[d.label][shard[0]::shard[1]]
    if shard:  # a domain with fewer chunks than shards is absent from some shards
        domains = [d for d in domains if chunks[d.label]]
        if not domains:
            raise ValueError(f"--shard {args.shard}: no chunk of any domain falls in this shard")
    return domains, chunks, describe_texts(domains, chunks, files, args.quick, shard)


def print_plan(texts):
    for label, d in texts["domains"].items():
        cut = "all chunks" if not d["chunks_per_file"] else f"{d['chunks_per_file']} chunk(s) per file"
        print(f"{label}: {d['kind']}, {len(d['files'])} files, {cut}, {d['chunks']} chunks"
              + (f" (shard {texts['shard']})" if texts.get("shard") else "") + ", "
              f"{d['scored_bytes']} bytes scored")
        for f in d["files"]:
            print(f"  {f['sha256'][:16]}  {f['bytes']:8d}  {f['path']}")


def run(args):
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    try:
        domains, texts_chunks, texts = plan(args)
    except ValueError as e:
        raise SystemExit(str(e))
    settings = all_settings()
    names = args.settings.split(",") if args.settings else list(QUICK_SETTINGS if args.quick else settings)
    unknown = [n for n in names if n not in settings]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {', '.join(settings)}")
    results = load_results(args.results)
    if "texts" in results and texts_key(results["texts"]) != texts_key(texts):
        raise SystemExit(f"{args.results} holds results on other text (the domains, the files' sha256 or how "
                         "they are cut differ); use another file")
    model = bytellama.Llama(args.model, device=args.device)

    lib, codebooks, codebook_info, codebook_files = None, {}, {}, {}
    if args.library:
        lib = Library(args.library, threads)
        for spec in args.codebook:
            bits, path = spec.split("=", 1)
            cb = lib.codebook(path)
            codebooks[int(bits)] = cb
            codebook_info[int(bits)] = cb.info
            codebook_files[int(bits)] = {"path": path, "fingerprint": "%016x" % cb.info["fingerprint"],
                                         "key_stages": cb.info["key_stages"]}
            if cb.info["value_bits"] != int(bits):
                raise SystemExit(f"{path} holds a {cb.info['value_bits']}-bit codebook, not {bits}-bit")
        for spec in args.codebook_per_head:
            bits, _, paths = spec.partition("=")
            bits, paths = int(bits), paths.split(",")
            if bits in codebooks:
                raise SystemExit(f"--codebook and --codebook-per-head both give a {bits}-bit codebook")
            cb = HeadCodebooks([lib.codebook(p) for p in paths])
            cb.check(model, bits)
            codebooks[bits], codebook_info[bits] = cb, cb.info
            fps = ["%016x" % c.info["fingerprint"] for c in cb.heads]
            codebook_files[bits] = {"path": ",".join(paths), "fingerprint": "+".join(fps),
                                    "key_stages": cb.info["key_stages"], "per_head": True}
    elif args.codebook_per_head:
        raise SystemExit("--codebook-per-head needs --library")

    meta = run_metadata(args, lib, codebook_files, names)
    results["texts"] = texts
    results["runs"].append(meta)
    for name in names:
        setting = settings[name]
        if setting["kind"] == "commvq" and setting["bits"] not in codebooks:
            print(f"{name}: skipped (no {setting['bits']}-bit codebook given)")
            continue
        t0 = time.time()
        attention = Attention(model, setting, lib, codebooks.get(setting.get("bits")), threads, None,
                              args.check_decoded or args.quick)
        row = {"setting": setting, "bits_per_element": bits_per_element(setting, codebook_info, model.head_dim),
               "domains": {}}
        if setting["kind"] == "commvq":
            row["codebook"] = codebook_files[setting["bits"]]
        mse = {}
        for d in domains:
            chunks = texts_chunks[d.label]
            # The exact setting measures each quantizer's key and value MSE on a chunks domain's exact tensors.
            if setting["kind"] == "exact" and d.kind == "chunks" and args.mse_chunks > 0:
                mse[d.label] = MseMeter(model.n_layers, lib, codebooks)
            attention.mse = mse.get(d.label)
            attention.domain_errors = ErrorMeter(model.n_layers)
            bits, count = score(model, chunks, attention, args.mse_chunks)
            row["domains"][d.label] = {"bpb": bits / count, "bytes": count,
                                       "attention_rel_error": attention.domain_errors.relative()}
        row["attention_rel_error"] = attention.errors.relative()
        if attention.vs_decoded is not None:
            row["cache_vs_decoded_rel_error"] = attention.vs_decoded.relative()
        row["seconds"] = time.time() - t0
        row["run"] = len(results["runs"])  # 1-based number of the run in the report
        results["settings"][name] = row
        if mse:
            results["mse_domains"] = {
                label: {"mse": m.result(), "run": row["run"],
                        "tokens": sum(len(t) for _, t, _ in texts_chunks[label][:args.mse_chunks])}
                for label, m in mse.items()}
        print(f"{name:18s} " + "  ".join(f"{l} {r['bpb']:.4f}" for l, r in row["domains"].items()) +
              f" bpb  attn err {' '.join('-' if e is None else f'{e:.3f}' for e in row['attention_rel_error'])}  "
              f"{row['bits_per_element']:.2f} bits  {row['seconds']:.0f} s" +
              (f"  cache vs decoded {max(row['cache_vs_decoded_rel_error']):.1e}"
               if "cache_vs_decoded_rel_error" in row else ""), flush=True)
        save_results(args.results, results)
    for label, mse_set in results.get("mse_domains", {}).items():
        for m, r in mse_set["mse"].items():
            print(f"MSE {label} {m:12s} key {' '.join(f'{x:.3g}' for x in r['key'])}   "
                  f"value {' '.join(f'{x:.3g}' for x in r['value'])}")
    return results


def run_metadata(args, lib, codebook_files, names):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"
                   f" on {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda")
                                          else "") + f", {args.threads or os.cpu_count()} threads",
        "command": " ".join([sys.executable, "tools/quality.py"] + sys.argv[1:]),
        "library": lib.commvq.version() if lib else None,
        "codebooks": {str(b): f for b, f in codebook_files.items()},
        "settings": names,
    }


def load_results(path):
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"settings": {}, "runs": []}


def save_results(path, results):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

PAPER_KEY_MSE_L0_1BIT = 0.0095  # the CommVQ paper's figure: LLaMA-3.1-8B, layer 0, R = 11


def mse_sets(results):
    """[(domain label, mse table, run, tokens)] of a results file, old or new."""
    if "mse_domains" in results:
        return [(l, m["mse"], m["run"], m["tokens"]) for l, m in results["mse_domains"].items()]
    if "mse" in results:
        return [("essays", results["mse"], results["mse_run"], results["mse_tokens"])]
    return []


def render(results, section=""):
    rows, texts = results["settings"], results["texts"]
    exact = rows.get("exact")
    domains = domain_labels(texts)
    lines = []
    used = {r["run"] for r in rows.values()}

    def run_label(number):  # runs are numbered per results file, so per section
        return f"{section}-{number}" if section else str(number)

    for number, meta in enumerate(results["runs"], 1):
        if number not in used:
            continue
        shown = [n for n in meta["settings"] if n in rows and rows[n]["run"] == number]
        lines += [f"Run {run_label(number)}, {meta['date']} on {meta['machine']}, library {meta['library']}; rows "
                  f"{', '.join(shown)}:", "", "```sh", meta["command"], "```", ""]
        for b, c in sorted(meta["codebooks"].items()):
            lines.append(f"- {b}-bit codebook: `{c['path']}` (R = {c['key_stages']}, fingerprint {c['fingerprint']})")
        lines.append("")
    lines += ["CommVQ rows name their codebook by the first digits of its fingerprint.", ""]
    if "domains" in texts:
        lines.append("Text, per domain (files identified by the sha256 of their bytes in the results file):")
        lines.append("")
        for label, d in texts["domains"].items():
            cut = ("every chunk" if not d["chunks_per_file"] else
                   f"{d['chunks_per_file']} chunk(s) of {texts['chunk']} bytes per file, evenly spread")
            what = ("pieces followed by themselves, second copies scored" if d["kind"] == "repeat"
                    else f"independent {texts['chunk']}-byte chunks, {cut}")
            names = ", ".join(os.path.basename(f["path"]) for f in d["files"][:6]) + \
                (f" and {len(d['files']) - 6} more" if len(d["files"]) > 6 else "")
            lines.append(f"- *{label}*: {d['scored_bytes']} bytes predicted in {d['chunks']} chunks "
                         f"({what}) from {len(d['files'])} files ({names})" +
                         (" (--quick)" if texts["quick"] else "") + ".")
        lines.append("")
    else:
        lines += [f"Essays: {texts['essay_bytes']} bytes predicted; repeat: {texts['repeat_bytes']} bytes "
                  "(second copies only)" + (" (--quick)" if texts["quick"] else "") + ".", ""]
    n_layers = len(next(iter(rows.values()))["attention_rel_error"])
    head = ["setting", "run", "bits/elem", "window"]
    for label, _ in domains:
        head += [f"{label} bpb", "Δ vs exact"]
    head += [f"attn err L{l}" for l in range(n_layers)] + ["cache vs decoded"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown = [n for n in all_settings() if n in rows]
    for name in shown:
        r = rows[name]
        s = r["setting"]
        cells = []
        for label, _ in domains:
            d, x = row_domain(r, label), row_domain(exact, label) if exact else None
            cells.append(f"{d['bpb']:.4f}" if d else "")
            cells.append(f"{d['bpb'] - x['bpb']:+.4f}" if d and x and name != "exact" else "")
        errs = ["" if e is None else f"{e:.4f}" for e in r["attention_rel_error"]]
        label = name + (f" ({r['codebook']['fingerprint'][:8]})" if "codebook" in r else "")
        lines.append("| " + " | ".join([label, run_label(r["run"]), f"{r['bits_per_element']:.2f}",
                                        str(s.get("window", "—"))] + cells + errs +
                                       [f"{max(r['cache_vs_decoded_rel_error']):.1e}"
                                        if "cache_vs_decoded_rel_error" in r else ""]) + " |")
    per_domain = [l for l, _ in domains if any((row_domain(rows[n], l) or {}).get("attention_rel_error")
                                                for n in shown)]
    if len(per_domain) > 1:
        lines += ["", "Attention-output relative error per layer, by domain:", ""]
        head = ["setting"] + [f"{l} L{i}" for l in per_domain for i in range(n_layers)]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in shown:
            cells = []
            for l in per_domain:
                e = (row_domain(rows[name], l) or {}).get("attention_rel_error") or [None] * n_layers
                cells += ["" if x is None else f"{x:.4f}" for x in e]
            lines.append("| " + " | ".join([name] + cells) + " |")
    for label, mse, mse_run, tokens in mse_sets(results):
        lines += ["", f"Key and value MSE per element (all tokens quantized, window 0) on "
                  f"{tokens} tokens of {'essay' if label == 'essays' else label} keys and values from the exact setting "
                  f"(run {run_label(mse_run)}):", ""]
        head = ["method"] + [f"key L{l}" for l in range(n_layers)] + [f"value L{l}" for l in range(n_layers)]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m, r in mse.items():
            lines.append("| " + " | ".join([m] + [f"{x:.3g}" for x in r["key"] + r["value"]]) + " |")
        ms = mse["mean square"]
        lines += ["", "The same relative to the tensors' mean square (MSE / mean square):", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m, r in mse.items():
            if m != "mean square":
                rel = [x / y for x, y in zip(r["key"] + r["value"], ms["key"] + ms["value"])]
                lines.append("| " + " | ".join([m] + [f"{x:.3g}" for x in rel]) + " |")
    if mse_sets(results):
        lines += ["", f"For orientation, the paper's 1-bit key MSE on LLaMA-3.1-8B layer 0 is "
                      f"{PAPER_KEY_MSE_L0_1BIT} (value 0.00027). bytellama's layer 0 is degenerate "
                      "(its keys depend on the current byte alone), so judge layers 1-3."]
    return "\n".join(lines) + "\n"


def write_report(path, results, section):
    """Rewrites the text between the section's markers (a new file gets them)."""
    name = f" {section}" if section else ""
    begin = f"<!-- quality:begin{name} (generated by tools/quality.py --report) -->"
    end = f"<!-- quality:end{name} -->"
    text = open(path).read() if os.path.exists(path) else f"# Quality\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin!r} ... {end!r}")
    before, rest = text.split(begin, 1)
    _, after = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(before + begin + "\n" + render(results, section) + end + after)


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", help="libcommvq shared library (needed for commvq settings and MSE)")
    ap.add_argument("--codebook", action="append", default=[], metavar="BITS=PATH",
                    help="codebook file for a bit width, e.g. 1=data/codebooks/bytellama-13m-1bit.safetensors")
    ap.add_argument("--codebook-per-head", action="append", default=[], metavar="BITS=PATH0,PATH1,...",
                    help="instead of --codebook for that bit width: one 1-KV-head codebook per KV head (the "
                         "per-head design of docs/PARALLEL.md, e.g. trained on tools/split_kv_heads.py's "
                         "files); KV head h and query heads h*G..h*G+G-1 go to codebook h's cache")
    ap.add_argument("--model", default=bytellama.default_model_dir(), help="bytellama-13m directory")
    ap.add_argument("--eval-dir", default=None, help="eval-dev directory (default: beside the model)")
    ap.add_argument("--text", action="append", nargs="+", default=[], metavar="LABEL:FILE",
                    help="a domain of text to score in independent chunks: LABEL:FILE [FILE...] (later files "
                         "take the label; a label named again adds files), e.g. --text prose:a.txt b.txt "
                         "--text code:c.py; with --text or --repeat only the given domains run "
                         "(default: essays, repeat and stdlib from --eval-dir)")
    ap.add_argument("--repeat", action="append", nargs="+", default=[], metavar="LABEL:FILE",
                    help=f"a long-context domain: {REPEAT_PIECES} pieces of {REPEAT_PIECE} bytes of the file, "
                         "each followed by itself, the second copy scored")
    ap.add_argument("--chunks-per-file", action="append", default=[], metavar="LABEL=N",
                    help=f"score at most N chunks of each file of a domain, evenly spread (0: all; the "
                         f"standard stdlib domain: {STDLIB_CHUNKS_PER_FILE})")
    ap.add_argument("--shard", default=None, metavar="I/N",
                    help="score only chunks I, I+N, I+2N, ... of each domain (after --quick and "
                         "--chunks-per-file): N processes with --shard 0/N .. N-1/N and their own --results files "
                         "split a run over cores; bits per byte add up as bits (bpb x bytes) over the shards "
                         "(tools/calibrate_grid.py)")
    ap.add_argument("--list-texts", action="store_true",
                    help="print the domains, files (sha256) and chunks a run would score, run nothing")
    ap.add_argument("--settings", default=None, help="comma-separated settings (default: all; --quick: a few)")
    ap.add_argument("--quick", action="store_true", help="the last 2 chunks of each domain (repeat: 1), 3 settings")
    ap.add_argument("--check-decoded", action="store_true",
                    help="also compare the cache's attention with exact attention over decoded tokens "
                         "(always with --quick)")
    ap.add_argument("--mse-chunks", type=int, default=8,
                    help="chunks of each domain the exact setting measures key and value MSE on (default 8)")
    ap.add_argument("--threads", type=int, default=0, help="torch and library CPU threads (0: all cores)")
    ap.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda)")
    ap.add_argument("--results", default=None, help="JSON file the results accumulate in")
    ap.add_argument("--report", default=None, help="markdown file whose quality section is rewritten")
    ap.add_argument("--section", default="", help="name of the marked section --report rewrites (default: none)")
    ap.add_argument("--report-only", action="store_true", help="render --results into --report, run nothing")
    return ap


def parse_args(argv=None):
    args = parser().parse_args(argv)
    args.eval_dir = args.eval_dir or os.path.join(os.path.dirname(os.path.dirname(
        os.path.normpath(args.model))), "data", "eval-dev")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.list_texts:
        try:
            print_plan(plan(args)[2])
        except ValueError as e:
            raise SystemExit(str(e))
        return 0
    results = load_results(args.results) if args.report_only else run(args)
    if args.report:
        write_report(args.report, results, args.section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
