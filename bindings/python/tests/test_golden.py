#!/usr/bin/python3
"""The bindings' golden test (tests/data/golden/golden.txt describes it), in Python.

Usage: COMMVQ_LIBRARY=path/libcommvq.so test_golden.py GOLDEN_DIR SCRATCH_DIR
Exit status 0 when every check passes.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import commvq  # noqa: E402


def read_manifest(path):
    manifest = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                manifest[key.strip()] = value.strip()
    return manifest


def expect_error(status, fragment, call):
    try:
        call()
    except commvq.CommvqError as e:
        assert e.status == status, f"got {e.status_name}, want {commvq.status_string(status)}"
        assert e.status_name == commvq.status_string(status)
        assert e.message and fragment in e.message, f"message {e.message!r} does not mention {fragment!r}"
        print(f"{e.status_name}: {e.message}")
        return
    raise AssertionError(f"no error, want {commvq.status_string(status)}")


def main(golden_dir, scratch_dir):
    m = read_manifest(os.path.join(golden_dir, "golden.txt"))
    n = {key: int(m[key]) for key in ("n_layers", "layer", "seq", "n_tokens", "n_queries", "n_kv_heads",
                                      "n_q_heads", "head_dim", "max_seqs", "max_tokens", "block_tokens",
                                      "window", "n_threads", "overflow_tokens")}

    def array(key, *shape):
        return np.fromfile(os.path.join(golden_dir, m[key]), dtype="<f4").reshape(shape)

    keys = array("keys", n["n_tokens"], n["n_kv_heads"], n["head_dim"])
    values = array("values", n["n_tokens"], n["n_kv_heads"], n["head_dim"])
    queries = array("queries", n["n_queries"], n["n_q_heads"], n["head_dim"])
    want_out = array("out", n["n_queries"], n["n_q_heads"], n["head_dim"])
    want_lse = array("lse", n["n_queries"], n["n_q_heads"])

    commvq.load_library()
    assert commvq.version_number() // 10000 == commvq.VERSION_MAJOR
    print("libcommvq", commvq.version())

    with commvq.Codebook.load(os.path.join(golden_dir, m["codebook"])) as cb:
        info = cb.info
        for key in ("n_layers", "n_kv_heads", "n_q_heads", "head_dim"):
            assert info[key] == n[key], f"codebook {key} = {info[key]}, golden.txt says {n[key]}"
        cache = commvq.Cache(cb, max_seqs=n["max_seqs"], max_tokens=n["max_tokens"],
                             block_tokens=n["block_tokens"], window=n["window"], n_threads=n["n_threads"])
    with cache:
        layer, seq = n["layer"], n["seq"]
        cache.append(layer, seq, keys, values)
        assert cache.seq_length(seq) == n["n_tokens"]
        out, lse = cache.attend(layer, seq, queries)

        atol, rtol = float(m["atol"]), float(m["rtol"])
        bad = 0
        for name, got, want in (("out", out, want_out), ("lse", lse, want_lse)):
            wrong = ~(np.abs(got.astype(np.float64) - want) <= atol + rtol * np.abs(want))
            for index in list(zip(*np.nonzero(wrong)))[:5]:
                print(f"  {name}{list(index)}: got {got[index]:.9g}, want {want[index]:.9g}")
            bad += int(wrong.sum())
        if bad:
            print(f"golden mismatch: {bad} values differ")
            return 1

        expect_error(commvq.ERR_OUT_OF_RANGE, "layer",
                     lambda: cache.attend(n["n_layers"], seq, queries))
        extra = n["overflow_tokens"]
        expect_error(commvq.ERR_CAPACITY, "", lambda: cache.append(layer, seq, keys[:extra], values[:extra]))
        assert cache.seq_length(seq) == n["n_tokens"], "a failed append changed the sequence"

    missing = os.path.join(scratch_dir, "no-such-codebook.safetensors")
    expect_error(commvq.ERR_IO, missing, lambda: commvq.Codebook.load(missing))

    # Ownership: closing twice is harmless, use after close is refused.
    cache.close()
    try:
        cache.seq_length(0)
        raise AssertionError("a closed cache answered")
    except ValueError:
        pass
    # Wrong libraries are refused at load time, with the reason.
    for variable, fragment in (("COMMVQ_STUB_PARTIAL", "lacks the symbol commvq_"),
                               ("COMMVQ_STUB_OTHER_MAJOR", "needs major version")):
        stub = os.environ.get(variable)
        if not stub:
            print(f"{variable} not set: that check is skipped")
            continue
        try:
            commvq._api.open_library(stub)
            raise AssertionError(f"{stub} was accepted")
        except commvq.LoadError as e:
            assert fragment in str(e), f"{e} does not say {fragment!r}"
            print(e)
    print("golden test passed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
