#!/usr/bin/python3
"""Integers that do not fit their C type are refused before they reach ctypes,
which would truncate them (layer=2**33+1 would become layer 1).

Usage: COMMVQ_LIBRARY=path/libcommvq.so test_ranges.py CODEBOOK SCRATCH_DIR
Exit status 0 when every check passes.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import commvq  # noqa: E402

checked = 0


def refused(error, argument, call):
    """call() raises `error` whose message names `argument`."""
    global checked
    try:
        call()
    except error as e:
        assert argument in str(e), f"{error.__name__} {str(e)!r} does not name {argument!r}"
        checked += 1
        return
    except Exception as e:  # noqa: BLE001 - reported as the wrong failure
        raise AssertionError(f"{argument}: got {type(e).__name__}: {e}, want {error.__name__}") from e
    raise AssertionError(f"{argument}: accepted, want {error.__name__}")


def main(codebook_path, scratch_dir):
    commvq.load_library()
    rng = np.random.default_rng(1)
    with commvq.Codebook.load(codebook_path) as cb:
        info = cb.info
        shape = (3, info["n_kv_heads"], info["head_dim"])
        k = rng.standard_normal(shape, dtype=np.float32)
        v = rng.standard_normal(shape, dtype=np.float32)
        q = rng.standard_normal((1, info["n_q_heads"], info["head_dim"]), dtype=np.float32)

        # Cache parameters: every integer field by its own C type.
        refused(ValueError, "max_tokens", lambda: commvq.Cache(cb, max_tokens=1 << 64))
        refused(ValueError, "max_tokens", lambda: commvq.Cache(cb, max_tokens=-1))
        refused(ValueError, "max_seqs", lambda: commvq.Cache(cb, max_seqs=-1))
        refused(ValueError, "max_seqs", lambda: commvq.Cache(cb, max_seqs=1 << 32))
        refused(ValueError, "window", lambda: commvq.Cache(cb, window=-5))
        refused(ValueError, "device", lambda: commvq.Cache(cb, device=2**31))
        refused(ValueError, "io_dtype", lambda: commvq.Cache(cb, io_dtype=-(2**31) - 1))
        refused(TypeError, "block_tokens", lambda: commvq.Cache(cb, block_tokens=16.0))
        refused(TypeError, "attn_scale", lambda: commvq.Cache(cb, attn_scale="0.1"))

        with commvq.Cache(cb, max_seqs=2, max_tokens=64, window=2) as cache:
            cache.append(np.int64(0), np.uint8(0), k, v)  # NumPy integers are integers
            refused(ValueError, "layer", lambda: cache.append(2**33 + 1, 0, k, v))
            refused(ValueError, "layer", lambda: cache.append(-1, 0, k, v))
            refused(ValueError, "seq", lambda: cache.append(0, 2**32, k, v))
            refused(TypeError, "layer", lambda: cache.append(1.0, 0, k, v))
            assert cache.seq_length(0) == 3, "a refused append changed the cache"
            refused(ValueError, "layer", lambda: cache.attend(2**32, 0, q))
            refused(ValueError, "seq", lambda: cache.attend(0, -1, q))
            refused(ValueError, "layer", lambda: cache.attend_batch(-1, [0], q))
            refused(ValueError, "seq_ids", lambda: cache.attend_batch(0, [-1], q))
            refused(ValueError, "seq_ids", lambda: cache.attend_batch(0, np.array([2**32]), q))
            refused(TypeError, "seq_ids", lambda: cache.attend_batch(0, [0.5], q))
            refused(ValueError, "seq", lambda: cache.seq_length(-1))
            refused(ValueError, "seq", lambda: cache.seq_clear(2**32))
            refused(ValueError, "new_length", lambda: cache.seq_truncate(0, -1))
            refused(ValueError, "new_length", lambda: cache.seq_truncate(0, 1 << 64))
            refused(ValueError, "src", lambda: cache.seq_fork(-1, 1))
            refused(ValueError, "dst", lambda: cache.seq_fork(0, 2**32))
            path = os.path.join(scratch_dir, "seq.cvqs")
            refused(ValueError, "seq", lambda: cache.seq_save(2**32, path))
            refused(ValueError, "seq", lambda: cache.seq_load(-3, path))
            refused(ValueError, "cuda_stream", lambda: cache.set_stream(-1))
            refused(ValueError, "cuda_stream", lambda: cache.set_stream(1 << 64))
            assert cache.seq_length(0) == 3

        refused(ValueError, "layer", lambda: cb.encode_keys(2**32 + 1, k))
        refused(ValueError, "layer", lambda: cb.reconstruct(-1, k, v))
        refused(ValueError, "storage", lambda: cb.save(os.path.join(scratch_dir, "cb.safetensors"), 2**31))
        refused(ValueError, "status", lambda: commvq.status_string(2**40))

        # Training parameters, the nested rope fields included, before any work starts.
        keys = rng.standard_normal((1, 8) + shape[1:], dtype=np.float32)
        refused(ValueError, "key_stages", lambda: commvq.Codebook.train(keys, keys, key_stages=-1))
        refused(ValueError, "max_samples", lambda: commvq.Codebook.train(keys, keys, max_samples=1 << 64))
        refused(ValueError, "seed", lambda: commvq.Codebook.train(keys, keys, seed=-1))
        refused(ValueError, "scaling", lambda: commvq.Codebook.train(keys, keys, rope={"scaling": 2**31}))
        refused(TypeError, "theta", lambda: commvq.Codebook.train(keys, keys, rope={"theta": "1e4"}))
    print(f"{checked} out-of-range or mistyped integers refused, each naming its argument")


if __name__ == "__main__":
    main(*sys.argv[1:])
