#!/usr/bin/python3
"""Slice caches (tensor parallelism, docs/PARALLEL.md) from Python, on the CPU.

1. NumPy, in one process: two caches of one KV head each (kv_head_begin,
   kv_head_count) of the 2-head bytellama codebook, fed their heads' keys,
   all values and the gathered Cache.key_norms2() through
   Cache.append_norms2(), attend bit for bit as one cache of both heads
   (attend_batch and attend, outputs and lse of each rank's query heads);
   a slice refuses a plain append (the token scale needs all heads' norms)
   and wrong shapes before the call.
2. With torch (Debian: python3-torch): the same with two processes whose
   exchanges go through commvq.tensor_parallel.append (torch tensors; an
   all-gather of the squared key norms and of the values with the gloo
   backend), as an engine under torchrun does. Skipped, with a message, without torch.

Usage: COMMVQ_LIBRARY=path/libcommvq.so test_parallel.py CODEBOOK
(a codebook of 2 KV heads: data/codebooks/bytellama-13m-1bit.safetensors)
"""

import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import commvq  # noqa: E402

PARAMS = dict(window=6, sink_tokens=1, max_seqs=2, max_tokens=512, block_tokens=8, n_threads=1)
STEPS = 12


def data(info, seed):
    """Prompts and decode steps: k, v [2, n, H, d] per layer, queries [2, Hq, d]."""
    rng = np.random.default_rng(seed)
    H, Hq, d, L = info["n_kv_heads"], info["n_q_heads"], info["head_dim"], info["n_layers"]
    prompt = [(rng.standard_normal((2, 9, H, d), dtype=np.float32),
               rng.standard_normal((2, 9, H, d), dtype=np.float32)) for _ in range(L)]
    steps = [[(rng.standard_normal((2, 1, H, d), dtype=np.float32),
               rng.standard_normal((2, 1, H, d), dtype=np.float32),
               rng.standard_normal((2, Hq, d), dtype=np.float32)) for _ in range(L)] for _ in range(STEPS)]
    return prompt, steps


def full_outputs(cb, prompt, steps):
    """Every decode step's attend_batch of one cache of all heads, and a final attend."""
    outs = []
    with commvq.Cache(cb, **PARAMS) as full:
        for layer, (k, v) in enumerate(prompt):
            full.append_batch(layer, [0, 1], k, v)
        for step in steps:
            for layer, (k, v, q) in enumerate(step):
                full.append_batch(layer, [0, 1], k, v)
                outs.append(full.attend_batch(layer, [0, 1], q))
        outs.append(full.attend(0, 1, steps[-1][0][2]))
    return outs


def rank_outputs(cb, rank, ranks, prompt, steps, append_mine):
    """The same from the slice cache of one rank; append_mine(cache, layer, k, v) appends
    the rank's heads of k and v with the engine's exchanges."""
    H = cb.info["n_kv_heads"]
    count = H // ranks
    heads = slice(rank * count, (rank + 1) * count)
    G = cb.info["n_q_heads"] // H
    qheads = slice(rank * count * G, (rank + 1) * count * G)
    outs = []
    with commvq.Cache(cb, kv_head_begin=rank * count, kv_head_count=count, **PARAMS) as c:
        assert c.n_q_heads == count * G and c.kv_head_count == count

        def append(layer, k, v):
            append_mine(c, layer, np.ascontiguousarray(k[:, :, heads]), np.ascontiguousarray(v[:, :, heads]))

        for layer, (k, v) in enumerate(prompt):
            append(layer, k, v)
        for step in steps:
            for layer, (k, v, q) in enumerate(step):
                append(layer, k, v)
                outs.append(c.attend_batch(layer, [0, 1], np.ascontiguousarray(q[:, qheads])))
        outs.append(c.attend(0, 1, np.ascontiguousarray(steps[-1][0][2][:, qheads])))
    return outs


def same(rank_outs, full_outs, rank, ranks, G, H):
    count = H // ranks
    qheads = slice(rank * count * G, (rank + 1) * count * G)
    assert len(rank_outs) == len(full_outs)
    for (o, l), (fo, fl) in zip(rank_outs, full_outs):
        assert np.array_equal(o.view(np.uint32), np.ascontiguousarray(fo[:, qheads]).view(np.uint32)), "out differs"
        assert np.array_equal(l.view(np.uint32), np.ascontiguousarray(fl[:, qheads]).view(np.uint32)), "lse differs"


def in_process(cb):
    info = cb.info
    H, G = info["n_kv_heads"], info["n_q_heads"] // info["n_kv_heads"]
    prompt, steps = data(info, 5)
    full = full_outputs(cb, prompt, steps)
    for ranks in (1, 2):
        count = H // ranks
        caches = [commvq.Cache(cb, kv_head_begin=r * count, kv_head_count=count, **PARAMS) for r in range(ranks)]
        outs = [[] for _ in range(ranks)]

        def append(layer, k, v):
            mine = [np.ascontiguousarray(k[:, :, r * count:(r + 1) * count]) for r in range(ranks)]
            norms = np.concatenate([c.key_norms2(layer, [0, 1], mine[r]) for r, c in enumerate(caches)])  # all-gather
            for r, c in enumerate(caches):
                c.append_norms2(layer, [0, 1], mine[r], v, norms)

        for layer, (k, v) in enumerate(prompt):
            append(layer, k, v)
        for step in steps:
            for layer, (k, v, q) in enumerate(step):
                append(layer, k, v)
                for r, c in enumerate(caches):
                    outs[r].append(c.attend_batch(layer, [0, 1], np.ascontiguousarray(
                        q[:, r * count * G:(r + 1) * count * G])))
        for r, c in enumerate(caches):
            outs[r].append(c.attend(0, 1, np.ascontiguousarray(steps[-1][0][2][:, r * count * G:(r + 1) * count * G])))
            same(outs[r], full, r, ranks, G, H)
            c.close()
    print(f"numpy: 1 and 2 ranks reproduce one cache of {H} KV heads bit for bit "
          f"({STEPS} decode steps x {info['n_layers']} layers, attend_batch and attend)")

    # Refusals: a plain append to a token-mode slice, wrong shapes.
    with commvq.Cache(cb, kv_head_begin=1, kv_head_count=1, **PARAMS) as c:
        k = np.zeros((1, 1, info["head_dim"]), np.float32)
        v = np.zeros((1, H, info["head_dim"]), np.float32)
        try:
            c.append(0, 0, k, v)
            raise AssertionError("a plain append to a token-mode slice was taken")
        except commvq.CommvqError as e:
            assert e.status == commvq.ERR_INVALID_ARGUMENT and "append_norms2" in str(e), e
        for bad_k, bad_v in ((v, v), (k, k)):
            try:
                c.append_norms2(0, [0], bad_k, bad_v, np.zeros((H, 1, 1)))
                raise AssertionError("a wrong shape was taken")
            except ValueError:
                pass
        try:
            c.append_norms2(0, [0], k, v, np.zeros((1, 1, 1)))
            raise AssertionError("key_norms2 of the wrong shape was taken")
        except ValueError:
            pass
        assert c.seq_length(0) == 0
    print("numpy: refusals (plain append to a token-mode slice, wrong shapes) change nothing")


def gloo_rank(rank, ranks, init_file, codebook_path, out_dir):
    """One rank: its exchanges through commvq.tensor_parallel.append (torch tensors, gloo)."""
    import torch
    import torch.distributed as dist
    from commvq import tensor_parallel
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=ranks)
    cb = commvq.Codebook.load(codebook_path)
    prompt, steps = data(cb.info, 5)

    def append_mine(cache, layer, k, v):
        tensor_parallel.append(cache, layer, [0, 1], torch.from_numpy(k), torch.from_numpy(v))

    outs = rank_outputs(cb, rank, ranks, prompt, steps, append_mine)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), *[x for pair in outs for x in pair])
    dist.destroy_process_group()


def torch_refusals(cb):
    """Torch key norms of the wrong dtype or shape, or an array among tensors: refused, nothing appended."""
    import torch
    H, d = cb.info["n_kv_heads"], cb.info["head_dim"]
    with commvq.Cache(cb, kv_head_begin=1, kv_head_count=1, **PARAMS) as c:
        k, v = torch.ones((1, 1, d)), torch.ones((1, H, d))
        norms = c.key_norms2(0, [0], k)
        assert isinstance(norms, torch.Tensor) and norms.dtype == torch.float64 and tuple(norms.shape) == (1, 1, 1)
        assert abs(norms.item() - d) < 1e-12, norms
        full = torch.cat([norms, norms])
        for bad in (full.float(), full[:1], np.asarray(full)):
            try:
                c.append_norms2(0, [0], k, v, bad)
                raise AssertionError(f"key_norms2 {type(bad).__name__} {list(bad.shape)} was taken")
            except commvq.TensorError:
                pass
        assert c.seq_length(0) == 0
        c.append_norms2(0, [0], k, v, full)
        assert c.seq_length(0) == 1
    print("torch: key_norms2 gives float64 tensors; wrong norms tensors refused, nothing appended")


def with_gloo(cb, codebook_path):
    try:
        import torch.multiprocessing as mp
        import torch.distributed as dist
    except ImportError:
        print("torch: not installed, the gloo run is skipped")
        return
    if not dist.is_available() or not dist.is_gloo_available():
        print("torch: no gloo backend, the gloo run is skipped")
        return
    torch_refusals(cb)
    info = cb.info
    H, G = info["n_kv_heads"], info["n_q_heads"] // info["n_kv_heads"]
    prompt, steps = data(info, 5)
    full = full_outputs(cb, prompt, steps)
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(gloo_rank, args=(H, init_file, codebook_path, tmp), nprocs=H, join=True)
        for rank in range(H):
            saved = np.load(os.path.join(tmp, f"rank{rank}.npz"))
            flat = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            same(list(zip(flat[0::2], flat[1::2])), full, rank, H, G, H)
    print(f"torch.distributed gloo: {H} processes, one KV head each, reproduce one cache bit for bit")


def main():
    codebook_path = sys.argv[1]
    cb = commvq.Codebook.load(codebook_path)
    assert cb.info["n_kv_heads"] == 2, "the test wants a codebook of 2 KV heads"
    in_process(cb)
    with_gloo(cb, codebook_path)


if __name__ == "__main__":
    main()
