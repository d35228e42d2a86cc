#!/usr/bin/python3
"""tools/convert_commvq.py against files of the published CommVQ layout.

Builds a synthetic release exactly as the reference code writes it (per layer
and KV head `{layer:03d}_{head}.pt` with "steps" of "theta" [128, 64] and the
4096 "clustering_centers" [4096, 128] derived from it; value_vq_model tensors
in a sharded model safetensors; config.json with llama3 RoPE scaling), runs
the converter, loads its output with the library and checks:

  * the shape and RoPE description the library reports;
  * every key stage code equals a brute-force greedy residual search over the
    reference's own clustering_centers (float64, t = k / ||k over all heads||,
    pair j of a rotate-half key = (k[j], k[j+64])), except at near-ties;
  * the key scale is the token's norm over all heads, and the reconstructed
    key is s * sum of the chosen reference centers;
  * value reconstruction equals a float64 numpy re-implementation of the
    reference ValueCompressor (argmax instead of Gumbel sampling);
  * a release whose centers disagree with theta is refused.

Usage: test_convert.py [LIBRARY]   (or COMMVQ_LIBRARY=path/to/libcommvq.so)
"""

import ctypes
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "..", "tools")
sys.path.insert(0, TOOLS)
import bytellama  # noqa: E402  (safetensors writer)

# The published layout fixes head_dim 128 and C = 64 sub-centers.
HKV, HQ, D_HEAD, C = 2, 4, 128, 64
P = D_HEAD // 2
D = HKV * D_HEAD
N_TOKENS = 40
EPS = 1e-6
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, used by the reference encoder

failures = []


class Shape:
    """What differs between the synthetic releases: layers, stages, value bits."""

    def __init__(self, n_layers, stages, value_bits):
        self.n_layers, self.stages, self.value_bits = n_layers, stages, value_bits
        self.groups = D * value_bits // 2  # n
        self.hidden = 4 * self.groups      # I = min(4096, 4n)


def check(ok, message):
    print(("ok   " if ok else "FAIL ") + message)
    if not ok:
        failures.append(message)


# ---------------------------------------------------------------------------
# The synthetic release
# ---------------------------------------------------------------------------

def reference_centers(theta):
    """What the reference's M-step stores: center A*64+B of pair j is
    (x_A - y_B, x_B + y_A), pair-interleaved. Written with explicit loops over
    A and B, independently of the converter's vectorized version."""
    centers = np.zeros((C * C, D_HEAD))
    x, y = theta[0::2], theta[1::2]
    for A in range(C):
        for B in range(C):
            centers[A * C + B, 0::2] = x[A] - y[B]
            centers[A * C + B, 1::2] = x[B] + y[A]
    return centers


def write_release(root, rng, shape, corrupt=False):
    key_dir = os.path.join(root, "keys")
    model_dir = os.path.join(root, "model")
    os.makedirs(key_dir)
    os.makedirs(model_dir)
    centers = {}
    L, n, I = shape.n_layers, shape.groups, shape.hidden
    for l in range(L):
        for h in range(HKV):
            steps = []
            for r in range(shape.stages):
                # Later stages fit smaller residuals, as trained ones do.
                theta = rng.normal(0, 0.04 / (r + 1), size=(2 * C, P))
                cc = reference_centers(theta)
                centers[l, h, r] = cc
                if corrupt and (l, h, r) == (L - 1, 0, shape.stages - 1):
                    cc = cc.copy()
                    cc[77] += 0.01
                steps.append({"mse_loss": torch.tensor(0.01), "theta": torch.tensor(theta, dtype=torch.float32),
                              "clustering_centers": torch.tensor(cc, dtype=torch.float32)})
            torch.save({"final_error": 0.01, "steps": steps}, os.path.join(key_dir, f"{l:03d}_{h}.pt"))
    values = {}
    for l in range(L):
        p = f"model.layers.{l}.self_attn.value_vq_model."
        values[l] = {
            p + "embedding": rng.normal(0, 1, (2 * n, D)),
            p + "norm1.weight": 1 + 0.1 * rng.normal(size=D),
            p + "norm1.bias": 0.1 * rng.normal(size=D),
            p + "enc1.weight": rng.normal(0, 1 / math.sqrt(D), (I, D)),
            p + "enc1.bias": 0.1 * rng.normal(size=I),
            # Large logits keep argmax near-ties (where float32 and float64
            # may disagree) rare.
            p + "out.weight": rng.normal(0, 20 / math.sqrt(I), (4 * n, I)),
            p + "out.bias": rng.normal(size=4 * n),
            p + "learnable_scale": rng.uniform(0.2, 3.0, size=D),
        }
    # Two shards with an index, the way large checkpoints come; an unrelated
    # weight sits beside the value tensors.
    shards = {"model-00001-of-00002.safetensors": {"model.embed_tokens.weight": np.zeros((4, 8))},
              "model-00002-of-00002.safetensors": {}}
    for l in range(L):
        shards["model-0000%d-of-00002.safetensors" % (1 + 2 * l // L)].update(values[l])
    weight_map = {}
    for fname, tensors in shards.items():
        bytellama.write_safetensors(os.path.join(model_dir, fname),
                                    {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()})
        weight_map.update({k: fname for k in tensors})
    with open(os.path.join(model_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    config = {"num_hidden_layers": L, "num_attention_heads": HQ, "num_key_value_heads": HKV,
              "hidden_size": HQ * D_HEAD, "head_dim": D_HEAD, "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f)
    # Value parameters as the library sees them: float32, like the file.
    values = {l: {k.rsplit(".value_vq_model.", 1)[1]: np.float32(v).astype(np.float64)
                  for k, v in values[l].items()} for l in range(L)}
    centers = {k: np.float32(v).astype(np.float64) for k, v in centers.items()}
    return key_dir, model_dir, centers, values


def run_converter(key_dir, model_dir, out, *extra):
    return subprocess.run([sys.executable, os.path.join(TOOLS, "convert_commvq.py"), "--keys", key_dir,
                           "--model", model_dir, "--out", out, "--model-name", "synthetic", "--trust-pickle",
                           *extra], capture_output=True, text=True)


# ---------------------------------------------------------------------------
# The library through ctypes
# ---------------------------------------------------------------------------

class RopeInfo(ctypes.Structure):
    _fields_ = [("theta", ctypes.c_double), ("scaling", ctypes.c_int32), ("factor", ctypes.c_double),
                ("low_freq_factor", ctypes.c_double), ("high_freq_factor", ctypes.c_double),
                ("original_max_position", ctypes.c_double)]


class CodebookInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("n_layers", ctypes.c_uint32),
                ("n_kv_heads", ctypes.c_uint32), ("n_q_heads", ctypes.c_uint32),
                ("head_dim", ctypes.c_uint32), ("key_stages", ctypes.c_uint32),
                ("sub_centers", ctypes.c_uint32), ("value_bits", ctypes.c_uint32),
                ("value_hidden", ctypes.c_uint32), ("pair_layout", ctypes.c_int32),
                ("scale_mode", ctypes.c_int32), ("format_version", ctypes.c_uint32),
                ("rope", RopeInfo), ("fingerprint", ctypes.c_uint64),
                ("compressed_token_bytes", ctypes.c_uint32), ("reserved_", ctypes.c_uint32)]


def open_library(path):
    lib = ctypes.CDLL(path)
    lib.commvq_last_error.restype = ctypes.c_char_p
    lib.commvq_codebook_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.commvq_codebook_free.argtypes = [ctypes.c_void_p]
    lib.commvq_codebook_info_init.argtypes = [ctypes.POINTER(CodebookInfo)]
    lib.commvq_codebook_get_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(CodebookInfo)]
    lib.commvq_codebook_encode_keys.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                                                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.commvq_codebook_reconstruct.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                                                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                                ctypes.c_void_p]
    lib.commvq_codebook_save_as.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32]
    return lib


def call(lib, name, *args):
    status = getattr(lib, name)(*args)
    if status != 0:
        raise RuntimeError(f"{name} failed ({status}): {lib.commvq_last_error().decode()}")


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


# ---------------------------------------------------------------------------
# Float64 references
# ---------------------------------------------------------------------------

def to_reference_pairs(k_head):
    """Rotate-half head vector -> the reference's interleaved (k[j], k[j+64])."""
    x = np.empty(D_HEAD)
    x[0::2], x[1::2] = k_head[:P], k_head[P:]
    return x


def from_reference_pairs(x):
    return np.concatenate([x[0::2], x[1::2]])


def reference_value_reconstruction(v, p, groups):
    """The reference ValueCompressor's encode+decode in float64, argmax codes.
    Returns (v_hat, smallest gap between the best and second logit)."""
    lam = p["learnable_scale"]
    x = v / (lam + EPS)
    prescale = np.linalg.norm(x)
    x = x / (prescale + EPS)
    x = (x - x.mean()) / np.sqrt(x.var() + LN_EPS) * p["norm1.weight"] + p["norm1.bias"]
    h = p["enc1.weight"] @ x + p["enc1.bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    logits = (p["out.weight"] @ h + p["out.bias"]).reshape(groups, 4)
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]).min()
    onehot = np.eye(4)[logits.argmax(axis=1)]
    onehot[:, :2] += onehot[:, 2:3]  # option 2 sets both bits, option 3 none
    bits = onehot[:, :2].reshape(-1)
    y = bits @ p["embedding"]
    v_hat = y / (np.linalg.norm(y) + EPS) * (prescale + EPS) * (lam + EPS)
    return v_hat, margin


# ---------------------------------------------------------------------------

def check_keys(lib, cb, layer, centers, stages, rng):
    # Heads of different magnitude, as real keys have.
    k = (rng.normal(size=(N_TOKENS, HKV, D_HEAD)) * np.array([1.0, 3.0])[None, :, None]).astype(np.float32)
    R = stages
    codes = np.full((N_TOKENS, HKV, R), 0xFFFF, dtype=np.uint16)
    scales = np.full((N_TOKENS, 1), np.nan, dtype=np.float32)
    call(lib, "commvq_codebook_encode_keys", cb, layer, N_TOKENS, ptr(k), ptr(codes), ptr(scales))
    k_out = np.full_like(k, np.nan)
    call(lib, "commvq_codebook_reconstruct", cb, layer, N_TOKENS, ptr(k), None, ptr(k_out), None)

    k64 = k.astype(np.float64)
    norms = np.linalg.norm(k64.reshape(N_TOKENS, -1), axis=1)
    scale_err = np.abs(scales[:, 0] - norms).max() / norms.min()
    check(scale_err < 1e-6, f"layer {layer}: key scale = norm over all heads (rel err {scale_err:.1e} < 1e-6)")

    exact, near_ties, wrong = 0, 0, []
    worst_recon = 0.0
    for n in range(N_TOKENS):
        for h in range(HKV):
            t = to_reference_pairs(k64[n, h]) / norms[n]
            decoded = np.zeros(D_HEAD)
            for r in range(R):
                cc = centers[layer, h, r]
                dist = ((t[None, :] - cc) ** 2).sum(axis=1)
                best, got = int(dist.argmin()), int(codes[n, h, r])
                if got == best:
                    exact += 1
                elif got < C * C and dist[got] - dist[best] <= 1e-6 * max(dist[best], 1e-3):
                    near_ties += 1  # float32 vs float64 on a near-tie: both are optimal
                else:
                    wrong.append((n, h, r, best, got))
                    break
                # Follow the library's code so later stages stay comparable.
                t = t - cc[got]
                decoded += cc[got]
            want = from_reference_pairs(decoded) * norms[n]
            rel = np.abs(k_out[n, h] - want).max() / np.abs(want).max()
            worst_recon = max(worst_recon, rel)
    total = N_TOKENS * HKV * R
    check(not wrong, f"layer {layer}: {exact}/{total} stage codes equal brute force over clustering_centers, "
                     f"{near_ties} near-ties, wrong: {wrong[:3]}")
    check(exact >= total - 2, f"layer {layer}: at most 2 near-ties ({near_ties})")
    check(np.all(np.isfinite(k_out)) and worst_recon < 1e-5,
          f"layer {layer}: reconstructed keys = s * sum of reference centers (max rel err {worst_recon:.1e} < 1e-5)")


def check_values(lib, cb, layer, params, groups, rng):
    # Channels of very different size, like real values and lambda.
    v = (rng.normal(size=(N_TOKENS, HKV, D_HEAD)) * rng.uniform(0.1, 4.0, size=(1, HKV, D_HEAD))).astype(np.float32)
    v_out = np.full_like(v, np.nan)
    call(lib, "commvq_codebook_reconstruct", cb, layer, N_TOKENS, None, ptr(v), None, ptr(v_out))
    compared, skipped, worst = 0, 0, 0.0
    for n in range(N_TOKENS):
        want, margin = reference_value_reconstruction(v[n].reshape(-1).astype(np.float64), params, groups)
        if margin < 1e-3:
            skipped += 1  # an argmax near-tie: float32 may pick either option
            continue
        compared += 1
        rel = np.abs(v_out[n].reshape(-1) - want).max() / np.abs(want).max()
        worst = max(worst, rel)
    check(np.all(np.isfinite(v_out)), f"layer {layer}: every reconstructed value element written")
    check(compared >= N_TOKENS - 4 and worst < 1e-4,
          f"layer {layer}: values = float64 reference encoder (argmax) on {compared} tokens "
          f"({skipped} near-ties skipped), max rel err {worst:.1e} < 1e-4")


def read_fingerprint(lib, path):
    """The library's fingerprint of a codebook file (loading checks the stored one)."""
    cb = ctypes.c_void_p()
    call(lib, "commvq_codebook_load", path.encode(), ctypes.byref(cb))
    info = CodebookInfo()
    lib.commvq_codebook_info_init(ctypes.byref(info))
    call(lib, "commvq_codebook_get_info", cb, ctypes.byref(info))
    lib.commvq_codebook_free(cb)
    return info.fingerprint


def check_f16_storage(lib, cb, key_dir, model_dir, root, f32_path):
    """--storage f16 writes what the library's own F16 writer writes: the
    same tensors in the same dtypes with the same values, and the same
    fingerprint (that of the rounded values), which the library accepts."""
    f16_path = os.path.join(root, "converted-f16.safetensors")
    res = run_converter(key_dir, model_dir, f16_path, "--storage", "f16")
    check(res.returncode == 0, f"converter --storage f16 succeeds: {res.stdout.strip()} {res.stderr.strip()}")
    if res.returncode != 0:
        return
    lib_path = os.path.join(root, "library-f16.safetensors")
    call(lib, "commvq_codebook_save_as", cb, lib_path.encode(), 1)  # COMMVQ_DTYPE_F16
    ours, meta = bytellama.read_safetensors(f16_path)
    theirs, lib_meta = bytellama.read_safetensors(lib_path)
    same = ours.keys() == theirs.keys() and all(
        ours[k].dtype == theirs[k].dtype and ours[k].tobytes() == theirs[k].tobytes() for k in ours)
    check(same, "converter F16 tensors = the library's F16 tensors (dtype and value)")
    dtypes = {k.split(".", 2)[2]: str(v.dtype) for k, v in ours.items() if k.startswith("layers.0.")}
    check(dtypes == {"keys.sub_centers": "float16", "values.enc1.weight": "float16",
                     "values.enc2.weight": "float16", "values.codebook": "float16",
                     "values.lambda": "float32", "values.norm.weight": "float32", "values.norm.bias": "float32",
                     "values.enc1.bias": "float32", "values.enc2.bias": "float32"},
          f"F16 storage rounds the matrices, keeps the vectors: {dtypes}")
    fp16, fp_lib, fp32 = read_fingerprint(lib, f16_path), read_fingerprint(lib, lib_path), read_fingerprint(lib, f32_path)
    check(meta["fingerprint"] == lib_meta["fingerprint"] == "%016x" % fp16 == "%016x" % fp_lib,
          f"the F16 file's fingerprint {meta['fingerprint']} is the library's {fp_lib:016x}")
    check(fp16 != fp32, "the rounded codebook has another fingerprint than the F32 one")
    check(os.path.getsize(f16_path) < 0.6 * os.path.getsize(f32_path),
          f"F16 file {os.path.getsize(f16_path)} bytes, F32 {os.path.getsize(f32_path)}")


def check_release(lib, shape, seed):
    """Converts a synthetic release of this shape and checks the result."""
    rng = np.random.default_rng(seed)
    print(f"-- {shape.n_layers} layers, R = {shape.stages}, {shape.value_bits}-bit values")
    with tempfile.TemporaryDirectory() as root:
        key_dir, model_dir, centers, values = write_release(root, rng, shape)
        out = os.path.join(root, "converted.safetensors")
        res = run_converter(key_dir, model_dir, out)
        check(res.returncode == 0, f"converter succeeds: {res.stdout.strip()} {res.stderr.strip()}")
        if res.returncode != 0:
            return

        cb = ctypes.c_void_p()
        call(lib, "commvq_codebook_load", out.encode(), ctypes.byref(cb))
        info = CodebookInfo()
        lib.commvq_codebook_info_init(ctypes.byref(info))
        call(lib, "commvq_codebook_get_info", cb, ctypes.byref(info))
        got = (info.n_layers, info.n_kv_heads, info.n_q_heads, info.head_dim, info.key_stages,
               info.sub_centers, info.value_bits, info.value_hidden, info.pair_layout, info.scale_mode)
        want = (shape.n_layers, HKV, HQ, D_HEAD, shape.stages, C, shape.value_bits, shape.hidden,
                0, 0)  # rotate-half, token scale
        check(got == want, f"codebook shape {got} == {want}")
        rope = (info.rope.theta, info.rope.scaling, info.rope.factor, info.rope.low_freq_factor,
                info.rope.high_freq_factor, info.rope.original_max_position)
        check(rope == (500000.0, 2, 8.0, 1.0, 4.0, 8192.0), f"RoPE from config.json (llama3): {rope}")

        for layer in range(shape.n_layers):
            check_keys(lib, cb, layer, centers, shape.stages, rng)
            check_values(lib, cb, layer, values[layer], shape.groups, rng)
        check_f16_storage(lib, cb, key_dir, model_dir, root, out)
        lib.commvq_codebook_free(cb)


def main():
    lib_path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("COMMVQ_LIBRARY")
    if not lib_path:
        print("usage: test_convert.py LIBRARY (or set COMMVQ_LIBRARY)", file=sys.stderr)
        return 2
    lib = open_library(lib_path)
    check_release(lib, Shape(n_layers=2, stages=3, value_bits=1), seed=20250617)
    check_release(lib, Shape(n_layers=1, stages=2, value_bits=2), seed=20250618)

    print("-- a release whose centers disagree with theta")
    with tempfile.TemporaryDirectory() as root:
        key_dir, model_dir, _, _ = write_release(root, np.random.default_rng(7), Shape(2, 2, 1), corrupt=True)
        out = os.path.join(root, "converted.safetensors")
        res = run_converter(key_dir, model_dir, out)
        check(res.returncode != 0 and "disagree with theta" in res.stderr and not os.path.exists(out),
              f"centers that disagree with theta are refused: {res.stderr.strip()}")

    print("PASS" if not failures else f"FAIL ({len(failures)} checks)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
