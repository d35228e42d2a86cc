#!/usr/bin/python3
"""torch tensors in Cache.append / append_batch / attend / attend_batch, and NumPy unchanged.

1. The checks themselves (commvq._tensors.check on plain descriptions): every
   refusal names the call, the argument and the sizes; no torch needed.
2. NumPy arrays work as before (no torch imported by the package).
3. With torch (Debian: python3-torch): real CPU tensors on a CPU cache, in
   f32, f16 and bf16, give bitwise the NumPy path's results; a tensor of the
   wrong dtype, shape, layout or device is a TensorError before the library
   is called. Skipped, with a message, without torch.
4. With torch, CUDA and a CUDA build: CUDA tensors on a CUDA cache (device
   pointers, torch's current stream) against the same cache fed NumPy
   arrays. Skipped elsewhere.

Usage: COMMVQ_LIBRARY=path/libcommvq.so test_tensors.py CODEBOOK
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import commvq  # noqa: E402
from commvq import _tensors  # noqa: E402


def refused(fragments, call, status=None):
    try:
        call()
    except commvq.TensorError as e:
        assert isinstance(e, commvq.CommvqError) and isinstance(e, ValueError)
        for f in fragments:
            assert f in e.message, f"{e.message!r} lacks {f!r}"
        if status is not None:
            assert e.status == status, e.status_name
        return e.message
    raise AssertionError(f"accepted; want an error naming {fragments}")


def check_descriptions():
    info = _tensors.TensorInfo
    ok = info("cpu", "torch.float32", (5, 2, 128), True)
    assert _tensors.check("commvq_cache_append", "k", ok, commvq.DEVICE_CPU, commvq.DTYPE_F32, None, 2, 128) == 5
    flat = info("cuda:1", "torch.bfloat16", (3, 256), True)
    assert _tensors.check("commvq_cache_attend", "q", flat, 1, commvq.DTYPE_BF16, 3, 2, 128) == 3
    args = (commvq.DEVICE_CPU, commvq.DTYPE_F32, None, 2, 128)
    refused(["commvq_cache_append", "k is on cuda:0", "the cache on cpu"],
            lambda: _tensors.check("commvq_cache_append", "k", ok._replace(device="cuda:0"), *args),
            commvq.ERR_INVALID_ARGUMENT)
    refused(["v is on cuda:0", "the cache on cuda:1"],
            lambda: _tensors.check("commvq_cache_append", "v", ok._replace(device="cuda:0"), 1, commvq.DTYPE_F32,
                                   None, 2, 128))
    refused(["k is torch.float16", "io dtype is torch.float32"],
            lambda: _tensors.check("commvq_cache_append", "k", ok._replace(dtype="torch.float16"), *args))
    refused(["[n, 2, 128]", "[n, 256]", "got [5, 4, 128]"],
            lambda: _tensors.check("commvq_cache_append", "k", ok._replace(shape=(5, 4, 128)), *args),
            commvq.ERR_SHAPE_MISMATCH)
    refused(["v must be [5, 2, 128]", "got [6, 2, 128]"],
            lambda: _tensors.check("commvq_cache_append", "v", ok._replace(shape=(6, 2, 128)),
                                   commvq.DEVICE_CPU, commvq.DTYPE_F32, 5, 2, 128))
    refused(["not contiguous", "[5, 2, 128]"],
            lambda: _tensors.check("commvq_cache_append", "k", ok._replace(contiguous=False), *args))
    refused(["out must be a contiguous torch.float32 tensor of shape [5, 4, 128] on cpu", "got torch.float16"],
            lambda: _tensors.check_output("commvq_cache_attend", "out", ok._replace(dtype="torch.float16",
                                          shape=(5, 4, 128)), commvq.DEVICE_CPU, "torch.float32", (5, 4, 128)))
    print("checks: device, dtype, shape, layout and outputs refused by name")


def tokens(rng, n, heads, d, dtype):
    return rng.standard_normal((n, heads, d)).astype(np.float32).astype(dtype)


def check_numpy(codebook):
    assert "torch" not in sys.modules, "commvq imported torch"
    rng = np.random.default_rng(3)
    with commvq.Codebook.load(codebook) as cb, commvq.Cache(cb, window=8, max_tokens=1024) as cache:
        info = cb.info
        for layer in range(info["n_layers"]):
            cache.append(layer, 0, tokens(rng, 40, info["n_kv_heads"], info["head_dim"], np.float32),
                         tokens(rng, 40, info["n_kv_heads"], info["head_dim"], np.float32))
        out, lse = cache.attend(0, 0, tokens(rng, 2, info["n_q_heads"], info["head_dim"], np.float64))
        assert out.dtype == np.float32 and np.isfinite(out).all() and np.isfinite(lse).all()
    assert "torch" not in sys.modules, "commvq imported torch"
    print("numpy: append and attend as before, torch never imported")


def as_io(torch, x, dtype, device):
    """A float32 array as a tensor of the io dtype, and the NumPy form the binding takes for it."""
    t = torch.from_numpy(x).to(device=device, dtype=dtype)
    if dtype == torch.bfloat16:
        return t, t.cpu().view(torch.int16).numpy().view(np.uint16)
    return t, t.cpu().numpy()


def from_io(torch, array, dtype):
    if dtype == torch.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def compare(torch, codebook, device_index, device):
    """Two caches, one fed tensors and one arrays of the same values: bitwise the same results."""
    rng = np.random.default_rng(7)
    dtypes = {commvq.DTYPE_F32: torch.float32, commvq.DTYPE_F16: torch.float16, commvq.DTYPE_BF16: torch.bfloat16}
    with commvq.Codebook.load(codebook) as cb:
        info = cb.info
        Hq, Hkv, d = info["n_q_heads"], info["n_kv_heads"], info["head_dim"]
        for io, dtype in dtypes.items():
            params = dict(device=device_index, window=16, sink_tokens=2, max_seqs=3, max_tokens=2048, io_dtype=io)
            with commvq.Cache(cb, **params) as a, commvq.Cache(cb, **params) as b:
                for seq, n in ((0, 100), (2, 37)):
                    for layer in range(info["n_layers"]):
                        k, k_np = as_io(torch, tokens(rng, n, Hkv, d, np.float32), dtype, device)
                        v, v_np = as_io(torch, tokens(rng, n, Hkv, d, np.float32), dtype, device)
                        a.append(layer, seq, k, v.reshape(n, Hkv * d))  # the flat layout is accepted too
                        b.append(layer, seq, k_np, v_np)
                for layer in range(info["n_layers"]):  # a decode step of both sequences in one call
                    k, k_np = as_io(torch, tokens(rng, 2, Hkv, d, np.float32), dtype, device)
                    v, v_np = as_io(torch, tokens(rng, 2, Hkv, d, np.float32), dtype, device)
                    a.append_batch(layer, [2, 0], k, v)
                    b.append_batch(layer, [2, 0], k_np, v_np)
                q, q_np = as_io(torch, tokens(rng, 5, Hq, d, np.float32), dtype, device)
                last = info["n_layers"] - 1
                out, lse = a.attend(last, 0, q)
                assert out.device == q.device and out.dtype == dtype and lse.dtype == torch.float32
                out_np, lse_np = b.attend(last, 0, q_np)
                qb, qb_np = as_io(torch, tokens(rng, 2, Hq, d, np.float32), dtype, device)
                outb, lseb = a.attend_batch(last, [2, 0], qb, causal=False)
                outb_np, lseb_np = b.attend_batch(last, [2, 0], qb_np, causal=False)
                # out= and lse= tensors are written in place
                out2, lse2 = torch.empty_like(out), torch.empty_like(lse)
                got = a.attend(last, 0, q, out=out2, lse=lse2)
                assert got[0] is out2 and got[1] is lse2
                if device != "cpu":
                    torch.cuda.current_stream().synchronize()
                for t, ref in ((out, out_np), (outb, outb_np), (out2, out_np)):
                    assert torch.equal(t.cpu(), from_io(torch, ref, dtype)), f"{dtype}: tensor and array paths differ"
                for t, ref in ((lse, lse_np), (lseb, lseb_np), (lse2, lse_np)):
                    assert torch.equal(t.cpu(), torch.from_numpy(ref))
                assert a.seq_length(0) == 101 and a.seq_length(2) == 38

                call = "commvq_cache_append"
                k = torch.zeros((4, Hkv, d), dtype=dtype, device=device)
                other = torch.float16 if dtype != torch.float16 else torch.float32
                refused([call, f"k is {other}", f"io dtype is {dtype}"], lambda: a.append(0, 1, k.to(other), k))
                refused([call, f"v must be [4, {Hkv}, {d}]", "got [3"], lambda: a.append(0, 1, k, k[:3]))
                wide = torch.zeros((4, Hkv, 2 * d), dtype=dtype, device=device)[:, :, :d]
                refused([call, "not contiguous"], lambda: a.append(0, 1, wide, k))
                refused([call, "v is a ndarray", "torch tensors for every input or none"],
                        lambda: a.append(0, 1, k, np.zeros((4, Hkv, d), np.float32)))
                refused(["commvq_cache_append_batch", f"v must be [4, {Hkv}, {d}]", "got [3"],
                        lambda: a.append_batch(0, [1, 3, 4, 5], k, k[:3]), commvq.ERR_SHAPE_MISMATCH)
                refused([call, "is on meta", f"the cache on {_tensors.device_name(device_index)}"],
                        lambda: a.append(0, 1, torch.empty((4, Hkv, d), dtype=dtype, device="meta"), k))
                if device != "cpu":
                    refused([call, "is on cpu", "the cache on cuda"], lambda: a.append(0, 1, k.cpu(), k))
                qbad = torch.zeros((2, Hq, d), dtype=dtype, device=device)
                refused(["commvq_cache_attend_batch", f"q must be [3, {Hq}, {d}]"],
                        lambda: a.attend_batch(0, [0, 1, 2], qbad))
                refused(["commvq_cache_attend", "out must be a contiguous"],
                        lambda: a.attend(0, 0, qbad, out=torch.empty((2, Hq, d + 1), dtype=dtype, device=device)))
                assert a.seq_length(1) == 0, "a refused append changed the cache"
            print(f"torch on {device}: {dtype} tensors give bitwise the NumPy path's results; bad tensors refused")


def main(codebook):
    check_descriptions()
    check_numpy(codebook)
    try:
        import torch
    except ImportError:
        print("SKIP torch tensors: torch is not installed (python3-torch)")
        print("PASS")
        return 0
    compare(torch, codebook, commvq.DEVICE_CPU, "cpu")
    if not torch.cuda.is_available():
        print("SKIP CUDA tensors: torch sees no CUDA device")
    elif not commvq.cuda_available():
        print("SKIP CUDA tensors: the library was built without CUDA or sees no device")
    else:
        compare(torch, codebook, 0, "cuda:0")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
