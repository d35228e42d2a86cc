#!/usr/bin/python3
"""CommvqCache (commvq.transformers) under tensor parallelism, on the CPU, without transformers.

transformers is not a Debian package, so this test stands in for the two base
classes CommvqCache derives from (transformers.cache_utils.Cache and
CacheLayerMixin, whose behaviour CommvqCache does not use) and drives the
cache as transformers' attention layers do: update(), then the attention
function's attend(). What is tested is CommvqCache's own code: that a rank
whose layers see a slice of the heads makes a slice cache of its heads, and
that its appends (an unpadded prompt, a left-padded prompt appended row by
row, decode steps) exchange values and key norms through
commvq.tensor_parallel, so that 2 processes with the gloo backend give, bit
for bit, the outputs of one process with all heads for their query heads.
Also: a slice of the heads without torch.distributed, or with a process group
of the wrong size, is refused by name. The real model under transformers'
tp_plan="auto" is tests/gpu/check_tensor_parallel.py.

Usage: COMMVQ_LIBRARY=path/libcommvq.so test_transformers_slices.py CODEBOOK
(a codebook of 2 KV heads and pair layout rotate-half: data/codebooks/bytellama-13m-1bit.safetensors).
Skipped, with a message, without torch or its gloo backend.
"""

import importlib
import os
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import commvq  # noqa: E402


def stand_in_transformers():
    """Imports commvq.transformers.cache with stand-ins for transformers.cache_utils' base classes
    (and without commvq.transformers/__init__, which registers with transformers itself)."""
    cache_utils = types.ModuleType("transformers.cache_utils")

    class CacheLayerMixin:
        def __init__(self):
            self.is_initialized = False

    class Cache:
        def __init__(self, layers=None, **_):
            self.layers = layers

    cache_utils.Cache, cache_utils.CacheLayerMixin = Cache, CacheLayerMixin
    root = types.ModuleType("transformers")
    root.cache_utils = cache_utils
    sys.modules.setdefault("transformers", root)
    sys.modules.setdefault("transformers.cache_utils", cache_utils)
    package = types.ModuleType("commvq.transformers")
    package.__path__ = [os.path.join(HERE, "..", "commvq", "transformers")]
    sys.modules["commvq.transformers"] = package
    return importlib.import_module("commvq.transformers.cache")


class Layer:
    """What the attention function passes as `module`."""

    def __init__(self, index):
        self.layer_idx = index


def sdpa(module, q, k, v, mask, scaling=None, dropout=0.0, **_):
    """Plain causal attention over a prompt's own keys (the dense prefill), GQA by repeating."""
    import torch
    G, T = q.shape[1] // k.shape[1], q.shape[2]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    a = (q @ k.transpose(-1, -2)) * scaling
    a = a.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    return (a @ v).transpose(1, 2), None


def drive(codebook, rank, ranks, prefill, padded):
    """The outputs [B, T, Hq/ranks, d] of every layer and step of rank `rank` of `ranks`:
    a prompt of 20 columns (row 1 left-padded by 6 when `padded`), then 12 decode steps."""
    import torch
    cache_mod = sys.modules["commvq.transformers.cache"]
    gen = torch.Generator().manual_seed(3)
    with commvq.Codebook.load(codebook) as cb:
        info = cb.info
    B, Hq, H, d, L = 2, info["n_q_heads"], info["n_kv_heads"], info["head_dim"], info["n_layers"]
    count = H // ranks
    kv, qh = slice(rank * count, (rank + 1) * count), slice(rank * count * Hq // H, (rank + 1) * count * Hq // H)
    cache = cache_mod.CommvqCache(codebook, window=8, sink_tokens=1, max_length=256, prefill=prefill, n_threads=1)
    outs, columns = [], 0
    for T in [20] + [1] * 12:
        columns += T
        mask = torch.ones((B, columns), dtype=torch.bool)
        if padded:
            mask[1, :6] = False
        for layer in range(L):
            q, k, v = (torch.randn(B, n, T, d, generator=gen) for n in (Hq, H, H))
            key, value = cache.update(k[:, kv].contiguous(), v[:, kv].contiguous(), layer)
            out, _ = cache.attend(Layer(layer), q[:, qh].contiguous(), key, value, mask, d ** -0.5, sdpa)
            outs.append(out)
    return outs, cache.memory()


CASES = [("dense", False), ("dense", True), ("codes", True)]


def rank_main(rank, ranks, init_file, codebook, out_dir):
    import torch
    import torch.distributed as dist
    stand_in_transformers()
    commvq.load_library(os.environ["COMMVQ_LIBRARY"])
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=ranks)
    torch.save([drive(codebook, rank, ranks, *case) for case in CASES], os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def refusals(cache_mod, codebook):
    """A slice of the heads with no process group: ValueError naming the heads and the cause."""
    import torch
    cache = cache_mod.CommvqCache(codebook, window=8)
    k = torch.zeros((1, 1, 3, 128))
    key, value = cache.update(k, k, 0)
    try:
        cache.attend(Layer(0), torch.zeros((1, 2, 3, 128)), key, value, None, 0.1, sdpa)
        raise AssertionError("a slice of the heads was taken without torch.distributed")
    except ValueError as e:
        assert "1 KV heads" in str(e) and "torch.distributed is not initialized" in str(e), e
    assert cache.engine is None
    print("refused: a slice of the heads outside torch.distributed (nothing created)")


def main():
    codebook = sys.argv[1]
    try:
        import torch
        import torch.distributed as dist
        import torch.multiprocessing as mp
    except ImportError:
        print("torch: not installed, the test is skipped")
        return
    if not dist.is_available() or not dist.is_gloo_available():
        print("torch: no gloo backend, the test is skipped")
        return
    cache_mod = stand_in_transformers()
    with commvq.Codebook.load(codebook) as cb:
        info = cb.info
    assert info["n_kv_heads"] == 2, "the test wants a codebook of 2 KV heads"
    refusals(cache_mod, codebook)
    full = [drive(codebook, 0, 1, *case) for case in CASES]
    G = info["n_q_heads"] // info["n_kv_heads"]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(rank_main, args=(2, os.path.join(tmp, "init"), codebook, tmp), nprocs=2, join=True)
        for rank in range(2):
            got = torch.load(os.path.join(tmp, f"rank{rank}.pt"))
            for (prefill, padded), (outs, memory), (ref, ref_memory) in zip(CASES, got, full):
                assert len(outs) == len(ref) == 13 * info["n_layers"]
                for i, (o, r) in enumerate(zip(outs, ref)):
                    mine = r[:, :, rank * G:(rank + 1) * G]
                    assert torch.equal(o, mine), (prefill, padded, rank, i, (o - mine).abs().max().item())
                assert memory["row_tokens"] == ref_memory["row_tokens"], (memory, ref_memory)
                assert memory["compressed_tokens"] == ref_memory["compressed_tokens"] > 0, (memory, ref_memory)
                assert memory["bytes_per_compressed_token"] < ref_memory["bytes_per_compressed_token"]
    print(f"2 gloo ranks of one KV head each, prefill dense and codes, unpadded and left-padded prompts, "
          f"12 decode steps x {info['n_layers']} layers: every output bit for bit one process's with both heads")


if __name__ == "__main__":
    main()
