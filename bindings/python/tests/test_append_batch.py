#!/usr/bin/python3
"""Cache.append_batch (commvq_cache_append_batch) from Python, on a CPU cache.

1. NumPy: a batch of decode steps (one token per sequence, then several)
   leaves the cache as append() row by row does: the same lengths and,
   bit for bit, the same attention outputs and lse of every sequence and
   layer; the shapes [n, heads, d], [n, heads * d], [n, t, heads, d] and
   [n, t, heads * d] are accepted, others refused before the call.
2. A refused batch (duplicate ids, an id out of range, a NaN in the last
   row, layers out of step) raises CommvqError with the library's status
   and changes no sequence.
3. With torch (Debian: python3-torch): CPU tensors give bitwise the NumPy
   path's results; a tensor of the wrong shape is a TensorError. Skipped,
   with a message, without torch.

Usage: COMMVQ_LIBRARY=path/libcommvq.so test_append_batch.py CODEBOOK
(a codebook of two or more layers: tests/data/test_codebook_small.safetensors)
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import commvq  # noqa: E402

PARAMS = dict(window=6, sink_tokens=1, max_seqs=4, max_tokens=512, block_tokens=8, n_threads=2)


def state(cache, info, q):
    """Lengths and the bits of a decode attention of every non-empty sequence and layer."""
    out = []
    for seq in range(PARAMS["max_seqs"]):
        n = cache.seq_length(seq)
        out.append(("length", seq, n))
        if n:
            for layer in range(info["n_layers"]):
                o, lse = cache.attend(layer, seq, q)
                out.append((seq, layer, o.tobytes(), lse.tobytes()))
    return out


def refused(call, status, fragment):
    try:
        call()
    except commvq.CommvqError as e:
        assert e.status == status, f"{e.status_name}: {e.message}"
        assert fragment in e.message, f"{e.message!r} lacks {fragment!r}"
        return
    raise AssertionError(f"accepted; want {fragment!r}")


def check_numpy(codebook):
    rng = np.random.default_rng(11)
    with commvq.Codebook.load(codebook) as cb, commvq.Cache(cb, **PARAMS) as a, commvq.Cache(cb, **PARAMS) as b:
        info = cb.info
        L, H, d = info["n_layers"], info["n_kv_heads"], info["head_dim"]
        assert L >= 2, "the test needs a codebook of two or more layers"
        q = rng.standard_normal((1, info["n_q_heads"], d)).astype(np.float32)

        def tok(*shape):
            return rng.standard_normal(shape).astype(np.float32)

        for seq, n in ((0, 9), (1, 3), (3, 20)):  # sequence 2 stays empty until the batches reach it
            for layer in range(L):
                k, v = tok(n, H, d), tok(n, H, d)
                a.append(layer, seq, k, v)
                b.append(layer, seq, k, v)
        steps = [([3, 0, 1, 2], 1, "3d"), ([1, 3], 1, "flat"), ([2, 0, 3], 4, "4d"), ([0, 1, 2, 3], 2, "3d-flat")]
        for ids, t, form in steps * 3:
            for layer in range(L):
                k, v = tok(len(ids), t, H, d), tok(len(ids), t, H, d)
                if form == "3d":
                    a.append_batch(layer, ids, k[:, 0], v[:, 0])
                elif form == "flat":
                    a.append_batch(layer, ids, k[:, 0].reshape(len(ids), H * d), v[:, 0].reshape(len(ids), H * d))
                elif form == "4d":
                    a.append_batch(layer, np.array(ids, dtype=np.int64), k, v)
                else:
                    a.append_batch(layer, ids, k.reshape(len(ids), t, H * d), v.reshape(len(ids), t, H * d))
                for i, seq in enumerate(ids):
                    b.append(layer, seq, k[i], v[i])
            assert state(a, info, q) == state(b, info, q), f"append_batch {form} differs from appends in turn"
        assert a.seq_length(3) == 20 + 3 * (1 + 1 + 4 + 2)

        # Refusals: status, message, and no sequence changed.
        before = state(a, info, q)
        k, v = tok(3, 1, H, d), tok(3, 1, H, d)
        refused(lambda: a.append_batch(0, [0, 1, 0], k, v), commvq.ERR_INVALID_ARGUMENT,
                "entries 0 and 2 both name sequence 0")
        refused(lambda: a.append_batch(0, [0, 1, 7], k, v), commvq.ERR_OUT_OF_RANGE, "entry 2: sequence 7")
        bad = v.copy()
        bad[2, 0, 0, 5] = np.nan
        refused(lambda: a.append_batch(0, [0, 1, 2], k, bad), commvq.ERR_INVALID_ARGUMENT,
                "v of entry 2, token 0, element 5")
        a.append(0, 2, k[0], v[0])  # sequence 2's layer 0 a token ahead: it may not lead again
        before = state(a, info, q)
        refused(lambda: a.append_batch(0, [0, 2], k[:2], v[:2]), commvq.ERR_INVALID_STATE, "entry 1")
        assert state(a, info, q) == before, "a refused batch changed the cache"
        try:
            a.append_batch(0, [0, 1], tok(2, H, d + 1), tok(2, H, d + 1))
        except ValueError as e:
            assert f"[2, {H}, {d}]" in str(e), str(e)
        else:
            raise AssertionError("a wrong shape was accepted")
        try:
            a.append_batch(0, [0, 1], tok(2, 3, H, d), tok(2, 2, H, d))
        except ValueError as e:
            assert "differ in tokens per sequence" in str(e), str(e)
        else:
            raise AssertionError("k and v of different token counts were accepted")
        assert state(a, info, q) == before
    print("numpy: append_batch equals appends in turn, bit for bit; refusals change nothing")


def check_torch(codebook, torch):
    rng = np.random.default_rng(12)
    dtypes = {commvq.DTYPE_F32: torch.float32, commvq.DTYPE_F16: torch.float16, commvq.DTYPE_BF16: torch.bfloat16}
    with commvq.Codebook.load(codebook) as cb:
        info = cb.info
        L, H, d = info["n_layers"], info["n_kv_heads"], info["head_dim"]
        q = rng.standard_normal((1, info["n_q_heads"], d)).astype(np.float32)
        for io, dtype in dtypes.items():
            params = dict(PARAMS, io_dtype=io)
            with commvq.Cache(cb, **params) as a, commvq.Cache(cb, **params) as b:
                for step in range(8):
                    ids = [2, 0, 3] if step % 2 else [1, 2]
                    t = 1 if step < 5 else 3
                    for layer in range(L):
                        k = torch.from_numpy(rng.standard_normal((len(ids), t, H, d)).astype(np.float32)).to(dtype)
                        v = torch.from_numpy(rng.standard_normal((len(ids), t, H, d)).astype(np.float32)).to(dtype)
                        if t == 1:
                            a.append_batch(layer, ids, k[:, 0].contiguous(), v[:, 0].contiguous())
                        else:
                            a.append_batch(layer, ids, k, v)
                        for i, seq in enumerate(ids):
                            b.append(layer, seq, k[i], v[i])
                q_t = torch.from_numpy(q).to(dtype)
                for seq in range(4):
                    for layer in range(L):
                        if a.seq_length(seq):
                            oa, la = a.attend(layer, seq, q_t)
                            ob, lb = b.attend(layer, seq, q_t)
                            assert torch.equal(oa, ob) and torch.equal(la, lb), f"{dtype}: tensors differ"
                k = torch.zeros((2, 2, H, d + 1), dtype=dtype)
                try:
                    a.append_batch(0, [0, 1], k, k)
                except commvq.TensorError as e:
                    assert "commvq_cache_append_batch: k must be [2" in e.message, e.message
                else:
                    raise AssertionError("a wrong shape was accepted")
            print(f"torch on cpu: {dtype} append_batch equals appends in turn, bit for bit")


def main(codebook):
    check_numpy(codebook)
    try:
        import torch
    except ImportError:
        print("SKIP torch tensors: torch is not installed (python3-torch)")
        print("PASS")
        return 0
    check_torch(codebook, torch)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
