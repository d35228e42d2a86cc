#!/usr/bin/env python3
"""Shows that a golden test can fail: perturbs one expected output and runs it.

Usage: expect_golden_mismatch.py GOLDEN_DIR COPY_DIR -- COMMAND...
Copies GOLDEN_DIR to COPY_DIR, moves one value of the expected output
(out.f32) by far more than the tolerance, then runs COMMAND (which must read
COPY_DIR). Passes only when COMMAND fails and says "golden mismatch".
"""

import os
import shutil
import struct
import subprocess
import sys


def main():
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        sys.exit(__doc__)
    golden, copy, command = sys.argv[1], sys.argv[2], sys.argv[4:]
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(golden, copy)
    path = os.path.join(copy, "out.f32")
    with open(path, "r+b") as f:
        f.seek(4 * 7)  # any element; this one is a real output, not padding
        (value,) = struct.unpack("<f", f.read(4))
        f.seek(4 * 7)
        f.write(struct.pack("<f", value + 1e-2 * (1.0 + abs(value))))
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    print(result.stdout)
    if result.returncode != 0 and "golden mismatch" in result.stdout:
        print("the test noticed the perturbed golden output, as it must")
        return 0
    print(f"the test did not report the perturbed golden output (exit status {result.returncode})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
