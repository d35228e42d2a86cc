#!/usr/bin/python3
"""tools/codebook_splice.py on the shipped codebooks: the fingerprint it
computes is the files' own; a file spliced with itself is itself; and, for
the pair shipped on 2026-11-29 (trained on the same data and settings in two
runs on one GPU), the 2-bit file's first 11 key stages with the 1-bit file's
values are the 1-bit file, byte for byte (key stages form a prefix, values do
not depend on the keys). Later shipped pairs need not share their keys: the
prefix check then says so and is skipped. Also the refusals. No library or
model needed.

Usage: test_codebook_splice.py SCRATCH_DIR
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import codebook_splice as cs  # noqa: E402

CB = os.path.join(HERE, "..", "..", "data", "codebooks")


def main(scratch):
    os.makedirs(scratch, exist_ok=True)
    one = os.path.join(CB, "bytellama-13m-1bit.safetensors")
    two = os.path.join(CB, "bytellama-13m-2bit.safetensors")
    for path in (one, two):
        meta, tensors = cs.read(path)
        assert cs.fingerprint(meta, tensors) == meta["fingerprint"], path
    print("fingerprints recomputed")

    for path in (one, two):
        same = os.path.join(scratch, "same.safetensors")
        assert cs.main(["--keys", path, "--values", path, "-o", same]) == 0
        assert open(same, "rb").read() == open(path, "rb").read(), path
    print("a file spliced with itself is itself, byte for byte")

    pair = (cs.read(one)[0]["fingerprint"], cs.read(two)[0]["fingerprint"])
    if pair == ("5f4bea50a1ba2e77", "1bc09571a3d2ac4e"):
        out = os.path.join(scratch, "spliced-1bit.safetensors")
        assert cs.main(["--keys", two, "--stages", "11", "--values", one, "-o", out]) == 0
        assert open(out, "rb").read() == open(one, "rb").read(), "2-bit keys[:11] + 1-bit values != the 1-bit file"
        print("2-bit keys[:11] + 1-bit values = the 1-bit file, byte for byte")
    else:
        print(f"prefix check skipped: the shipped pair {pair} is not the 2026-11-29 one")

    for argv, fragment in ((["--keys", one, "--stages", "12", "--values", one], "has 11 key stages"),
                           (["--keys", one, "--stages", "0", "--values", one], "has 11 key stages")):
        try:
            cs.main(argv + ["-o", os.path.join(scratch, "bad.safetensors")])
            raise AssertionError(f"{argv} accepted")
        except SystemExit as e:
            assert fragment in str(e.code), e.code
    meta, tensors = cs.read(one)
    other = dict(meta, head_dim="64")
    cs.write(os.path.join(scratch, "other.safetensors"), other, tensors)
    try:
        cs.splice(os.path.join(scratch, "other.safetensors"), one)
        raise AssertionError("files of other models spliced")
    except SystemExit as e:
        assert "head_dim" in str(e.code), e.code
    print("refusals")


if __name__ == "__main__":
    main(*sys.argv[1:])
