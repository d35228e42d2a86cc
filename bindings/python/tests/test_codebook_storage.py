#!/usr/bin/python3
"""The Python binding's Codebook.save(storage=...) and the training fields
model_name, value_weights and value_hidden.

Usage: COMMVQ_LIBRARY=path/libcommvq.so test_codebook_storage.py CODEBOOK SCRATCH_DIR
Exit status 0 when every check passes.
"""

import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import commvq  # noqa: E402


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def expect_error(status, call):
    try:
        call()
    except commvq.CommvqError as e:
        assert e.status == status, f"got {e.status_name}, want {commvq.status_string(status)}"
        assert e.message
        return e.message
    raise AssertionError(f"no error, want {commvq.status_string(status)}")


def main(codebook_path, scratch):
    os.makedirs(scratch, exist_ok=True)
    f32, f16, f16_again = (os.path.join(scratch, n) for n in ("f32.safetensors", "f16.safetensors", "f16b.safetensors"))
    if os.path.exists(f16_again):  # from an earlier run: the refused save below must not find it
        os.remove(f16_again)
    with commvq.Codebook.load(codebook_path) as cb:
        cb.save(f32)
        cb.save(f16, storage="f16")
        original = cb.info["fingerprint"]
        try:
            cb.save(f16, storage="f8")
            raise AssertionError("storage f8 accepted")
        except ValueError:
            pass
        message = expect_error(commvq.ERR_INVALID_ARGUMENT, lambda: cb.save(f16_again, storage=7))
        assert "dtype" in message, message
        assert not os.path.exists(f16_again)
    h = header(f16)
    assert h["layers.0.keys.sub_centers"]["dtype"] == "F16"
    assert h["layers.0.values.lambda"]["dtype"] == "F32"
    assert os.path.getsize(f16) < 0.6 * os.path.getsize(f32), (os.path.getsize(f16), os.path.getsize(f32))
    with commvq.Codebook.load(f32) as a, commvq.Codebook.load(f16) as b:
        assert a.info["fingerprint"] == original
        assert b.info["fingerprint"] != original
        assert h["__metadata__"]["fingerprint"] == "%016x" % b.info["fingerprint"]
        b.save(f16_again, storage=commvq.DTYPE_F16)  # the constant works too
    with open(f16, "rb") as x, open(f16_again, "rb") as y:
        assert x.read() == y.read(), "an F16 file saved again as F16 changed"
    print(f"save: F32 {os.path.getsize(f32)} bytes, F16 {os.path.getsize(f16)} bytes")

    rng = np.random.default_rng(1)
    keys = rng.standard_normal((2, 96, 1, 16)).astype(np.float32)
    values = rng.standard_normal((2, 96, 1, 16)).astype(np.float32)
    small = dict(sub_centers=4, key_stages=1, key_max_steps=2, value_steps=5, value_batch=16, n_threads=1)
    weights = np.ones((2, 96), dtype=np.float32)
    with commvq.Codebook.train(keys, values, value_hidden=8, model_name="py-test \u00e9", value_weights=weights,
                               **small) as cb:
        assert cb.info["value_hidden"] == 8
        trained = os.path.join(scratch, "trained.safetensors")
        cb.save(trained)
    assert header(trained)["__metadata__"]["model"] == "py-test \u00e9"
    try:
        commvq.Codebook.train(keys, values, value_weights=weights[:, :10], **small)
        raise AssertionError("value_weights of the wrong shape accepted")
    except ValueError:
        pass
    weights[1, 7] = -1
    message = expect_error(commvq.ERR_INVALID_ARGUMENT,
                           lambda: commvq.Codebook.train(keys, values, value_weights=weights, **small))
    assert "layer 1, token 7" in message, message
    print("train: value_hidden, model_name and value_weights reach the library")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
