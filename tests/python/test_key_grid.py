"""tools/key_grid.py on the shipped codebooks: every rounded key value is an
integer of at most B signed bits times a power of two per (layer, head,
channel), exactly an F16 number, within half a grid step of the original;
the file loads in the library (its fingerprint is right); rounding twice
changes nothing; bad widths are refused; the same with one power of two per
(head, stage) or per (head, stage, channel) at 8 bits.

    test_key_grid.py LIBCOMMVQ.so SCRATCH_DIR
"""
import ctypes
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import codebook_splice as cf  # noqa: E402
import key_grid  # noqa: E402

TOOL = os.path.join(ROOT, "tools", "key_grid.py")
failures = 0


def check(ok, what):
    global failures
    print(("PASS " if ok else "FAIL ") + what)
    failures += 0 if ok else 1


def keys(path):
    meta, tensors = cf.read(path)
    H, R, C, d = (int(meta[k]) for k in ("n_kv_heads", "key_stages", "sub_centers", "head_dim"))
    return [cf.as_f32(*tensors[f"layers.{l}.keys.sub_centers"][::2]).reshape(H, R, C, d)
            for l in range(int(meta["n_layers"]))]


def main():
    lib_path, scratch = sys.argv[1], sys.argv[2]
    os.makedirs(scratch, exist_ok=True)
    lib = ctypes.CDLL(lib_path)
    lib.commvq_codebook_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.commvq_codebook_free.argtypes = [ctypes.c_void_p]
    for bits_name, grid in (("1bit", 12), ("2bit", 11)):
        src = os.path.join(ROOT, "data", "codebooks", f"bytellama-13m-{bits_name}.safetensors")
        out = os.path.join(scratch, f"{bits_name}-g{grid}.safetensors")
        r = subprocess.run([sys.executable, TOOL, src, "--bits", str(grid), "-o", out], capture_output=True, text=True)
        check(r.returncode == 0, f"{bits_name}: key_grid.py --bits {grid} runs ({r.stderr.strip()[:200]})")
        top = (1 << (grid - 1)) - 1
        for l, (z, zq) in enumerate(zip(keys(src), keys(out))):
            peak = np.abs(z).max(axis=(1, 2), keepdims=True)
            step = np.where(peak > 0, np.exp2(np.ceil(np.log2(np.maximum(peak, 1e-30) / top))), 1.0)
            q = zq / step
            check(np.array_equal(q, np.rint(q)) and np.abs(q).max() <= top,
                  f"{bits_name} layer {l}: integers of at most {grid} signed bits times a power of two")
            check(bool(np.all(np.abs(zq - z) <= 0.5 * step)),
                  f"{bits_name} layer {l}: within half a grid step of the original")
            check(np.array_equal(zq.astype(np.float16).astype(np.float32), zq), f"{bits_name} layer {l}: F16 numbers")
        handle = ctypes.c_void_p()
        status = lib.commvq_codebook_load(out.encode(), ctypes.byref(handle))
        check(status == 0, f"{bits_name}: the rounded file loads (fingerprint and checksum right), status {status}")
        lib.commvq_codebook_free(handle)
        again = os.path.join(scratch, f"{bits_name}-g{grid}-again.safetensors")
        subprocess.run([sys.executable, TOOL, out, "--bits", str(grid), "-o", again], capture_output=True, check=True)
        with open(out, "rb") as a, open(again, "rb") as b:
            check(a.read() == b.read(), f"{bits_name}: rounding a rounded codebook changes nothing")
    # One power of two per (head, stage) or per (head, stage, channel): the 8-bit tables of QUALITY.md.
    src = os.path.join(ROOT, "data", "codebooks", "bytellama-13m-1bit.safetensors")
    for scale, axes in (("stage", (2, 3)), ("stage-channel", (2,))):
        out = os.path.join(scratch, f"1bit-g8-{scale}.safetensors")
        r = subprocess.run([sys.executable, TOOL, src, "--bits", "8", "--scale", scale, "-o", out],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"--bits 8 --scale {scale} runs ({r.stderr.strip()[:200]})")
        for l, (z, zq) in enumerate(zip(keys(src), keys(out))):
            peak = np.abs(z).max(axis=axes, keepdims=True)
            step = np.where(peak > 0, np.exp2(np.ceil(np.log2(np.maximum(peak, 1e-30) / 127))), 1.0)
            q = zq / step
            check(np.array_equal(q, np.rint(q)) and np.abs(q).max() <= 127 and bool(np.all(np.abs(zq - z) <= 0.5 * step))
                  and np.array_equal(zq.astype(np.float16).astype(np.float32), zq),
                  f"--scale {scale} layer {l}: 8-bit integers times one power of two per group, within half a step, F16")
        handle = ctypes.c_void_p()
        status = lib.commvq_codebook_load(out.encode(), ctypes.byref(handle))
        check(status == 0, f"--scale {scale}: the rounded file loads, status {status}")
        lib.commvq_codebook_free(handle)
    z2 = np.array([[[[0.75, 0.1]], [[0.05, 0.01]]]], dtype=np.float32)  # [H=1][R=2][C=1][d=2]
    zq2, _ = key_grid.grid_round(z2, 4, "stage")  # stage 0 on steps of 1/8, stage 1 (peak 0.05) on 1/128
    check(np.allclose(zq2, [[[[0.75, 0.125]], [[0.046875, 0.0078125]]]]),
          "grid_round by hand, one step per stage: 0.1 -> 1/8, 0.05 -> 6/128, 0.01 -> 1/128")
    for bad in ("3", "13"):
        r = subprocess.run([sys.executable, TOOL, src, "--bits", bad], capture_output=True, text=True)
        check(r.returncode != 0 and "outside 4..12" in r.stderr, f"--bits {bad} refused with a message")
    z = np.array([[[[0.75, -0.5], [0.1, 0.0]]]], dtype=np.float32)  # [H=1][R=1][C=2][d=2]
    zq, step = key_grid.grid_round(z, 4)  # 3 magnitude bits (top 7): both channels on steps of 2^-3
    check(np.allclose(zq, [[[[0.75, -0.5], [0.125, 0.0]]]]), "grid_round by hand: 0.1 -> 0.125 on steps of 1/8")
    print(f"{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
