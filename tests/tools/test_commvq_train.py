#!/usr/bin/python3
"""commvq-train takes the model's settings from the KV file and refuses flags
that contradict it; its progress is a bar only on a terminal; --eval compares
a file's error with the calibration data's and flags one out of domain.

Usage: test_commvq_train.py COMMVQ_TRAIN SCRATCH_DIR
The KV files are made here: small random keys and values with the metadata
tools/collect_kv.py writes, for a model unlike the library's defaults
(theta 500000, interleaved pairs, llama3 scaling, 4 query heads for 2 KV heads).
"""

import json
import os
import pty
import struct
import subprocess
import sys

import numpy as np

LAYERS, TOKENS, KV_HEADS, Q_HEADS, HEAD_DIM, QUERIES = 2, 64, 2, 4, 8, 8
METADATA = {
    "model": "synthetic-llama3",
    "n_layers": str(LAYERS),
    "n_kv_heads": str(KV_HEADS),
    "n_q_heads": str(Q_HEADS),
    "head_dim": str(HEAD_DIM),
    "rope_theta": "500000.0",
    "rope_layout": "interleaved",
    "rope_scaling": "llama3",
    "rope_scaling_params": json.dumps({"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 8192}, sort_keys=True),
    "chunks": json.dumps([{"row": 0, "source": 0, "byte_start": 0, "n_tokens": TOKENS}]),
    "n_tokens": str(TOKENS),
    "n_queries": str(QUERIES),
    "query_start": str(TOKENS - QUERIES),
    "keys": "pre-RoPE",
    "queries": "post-RoPE",
}
# Training as small as it gets: only the plumbing is under test.
TINY = ["--stages", "2", "--sub-centers", "4", "--key-steps", "2", "--value-steps", "4", "--value-batch", "16",
        "--value-hidden", "8", "--threads", "1"]


def write_kv(path, metadata, queries=True, rank=None, seed=7):
    """Random keys and values; with rank, each head's keys and values lie in a
    rank-dimensional subspace (a narrow "domain" a codebook fits closely)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    basis = np.random.default_rng(3).standard_normal((rank or HEAD_DIM, HEAD_DIM)).astype(np.float32)

    def draw():
        x = rng.standard_normal((TOKENS, KV_HEADS, rank or HEAD_DIM), dtype=np.float32)
        return x @ basis if rank else x

    for layer in range(LAYERS):
        tensors[f"keys.{layer}"] = draw()
        tensors[f"values.{layer}"] = draw()
        if queries:
            tensors[f"queries.{layer}"] = rng.standard_normal((QUERIES, Q_HEADS, HEAD_DIM), dtype=np.float32)
    header, offset = {"__metadata__": metadata}, 0
    for name, array in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for array in tensors.values():
            f.write(array.tobytes())


def codebook_metadata(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))["__metadata__"]


class Trainer:
    def __init__(self, tool, scratch):
        self.tool, self.scratch, self.runs = tool, scratch, 0

    def kv(self, name, metadata=METADATA, queries=True, **kw):
        path = os.path.join(self.scratch, name)
        write_kv(path, metadata, queries, **kw)
        return path

    def run(self, kv, *flags, stdout=False):
        """(exit status, stderr, codebook metadata or None[, stdout]); stdout and stderr are files, not a terminal."""
        self.runs += 1
        out = os.path.join(self.scratch, f"codebook{self.runs}.safetensors")
        self.last = out
        result = subprocess.run([self.tool, "-i", kv, "-o", out, *TINY, *flags], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, timeout=120)
        got = (result.returncode, result.stderr, codebook_metadata(out) if result.returncode == 0 else None)
        return got + (result.stdout,) if stdout else got

    def tool_run(self, *args):
        """(exit status, stdout, stderr) of the tool with exactly these arguments."""
        result = subprocess.run([self.tool, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                timeout=120)
        return result.returncode, result.stdout, result.stderr

    def refused(self, kv, flags, *fragments):
        status, err, _ = self.run(kv, *flags)
        assert status == 2, f"{flags}: exit {status}, want 2 (refused)\n{err}"
        for fragment in fragments:
            assert fragment in err, f"{flags}: message lacks {fragment!r}:\n{err}"
        print(f"refused {' '.join(flags) or '(no flags)'}: {err.strip().splitlines()[-1]}")


def main(tool, scratch):
    os.makedirs(scratch, exist_ok=True)
    t = Trainer(tool, scratch)
    kv = t.kv("model.safetensors")

    # The file's settings, with no flags.
    status, err, meta = t.run(kv)
    assert status == 0, err
    want = {"n_q_heads": "4", "pair_layout": "interleaved", "rope_scaling": "llama3", "model": "synthetic-llama3"}
    for key, value in want.items():
        assert meta[key] == value, f"codebook {key} {meta[key]!r}, want {value!r}"
    for key, value in {"rope_theta": 500000.0, "rope_factor": 8.0, "rope_high_freq_factor": 4.0,
                       "rope_low_freq_factor": 1.0, "rope_original_max_position": 8192.0}.items():
        assert float(meta[key]) == value, f"codebook {key} {meta[key]!r}, want {value}"
    assert "rope_theta 500000 (from the KV file)" in err, err
    # Not a terminal: plain lines, no carriage return or escape code.
    assert "\r" not in err and "\x1b" not in err, repr(err)
    assert "100.0% values layer 1" in err, err
    print("defaults from the file; plain progress lines off a terminal")

    # Flags that agree with the file (in other spellings) are fine; the model name is free text.
    status, err, meta = t.run(kv, "--rope-theta", "5e5", "--q-heads", "4", "--pairs", "interleaved",
                              "--rope-scaling", "llama3", "--rope-factor", "8", "--model-name", "variant")
    assert status == 0, err
    assert meta["model"] == "variant" and "the file records synthetic-llama3" in err, (meta["model"], err)
    print("agreeing flags accepted")

    t.refused(kv, ["--rope-theta", "10000"], "--rope-theta 10000 contradicts", "rope_theta 500000",
              "synthetic-llama3", "Leave --rope-theta out")
    t.refused(kv, ["--q-heads", "2"], "--q-heads 2 contradicts", "n_q_heads 4")
    t.refused(kv, ["--pairs", "rotate-half"], "--pairs rotate-half contradicts", "interleaved")
    t.refused(kv, ["--rope-scaling", "none"], "--rope-scaling none contradicts", "llama3")
    t.refused(kv, ["--rope-factor", "4"], "--rope-factor 4 contradicts", "rope factor 8")
    t.refused(kv, ["--rope-original-max-position", "4096"], "contradicts", "original_max_position 8192")

    # Metadata that contradicts the tensors, or itself, is refused too.
    t.refused(t.kv("heads.safetensors", {**METADATA, "n_kv_heads": "4"}), [], "n_kv_heads 4", "2 KV heads")
    t.refused(t.kv("queries.safetensors", {**METADATA, "n_q_heads": "8"}), [], "n_q_heads 8", "4 heads")
    t.refused(t.kv("post.safetensors", {**METADATA, "keys": "post-RoPE"}), [], "post-RoPE keys")
    t.refused(t.kv("theta.safetensors", {**METADATA, "rope_theta": "fast"}), [], "rope_theta is 'fast'")

    # A file that records nothing: the defaults, said to be guesses.
    bare = t.kv("bare.safetensors", {}, queries=False)
    status, err, meta = t.run(bare)
    assert status == 0, err
    assert meta["n_q_heads"] == "2" and float(meta["rope_theta"]) == 10000.0, meta
    assert "warning: the file records no rope_theta" in err and "warning: the file records no query heads" in err, err
    status, err, meta = t.run(bare, "--rope-theta", "1e6", "--q-heads", "4")
    assert status == 0 and float(meta["rope_theta"]) == 1e6 and meta["n_q_heads"] == "4", err
    print("a file without metadata: defaults with warnings, or the flags")

    # --eval: the error next to the calibration data's; a file far out of the
    # codebook's domain is flagged. The calibration keys and values lie in a
    # 2-dimensional subspace per head; "wide" fills all 8 dimensions.
    narrow = t.kv("narrow.safetensors", rank=2)
    narrow2 = t.kv("narrow2.safetensors", rank=2, seed=8)  # the same subspace, other tokens
    wide = t.kv("wide.safetensors", seed=9)
    status, err, _, out = t.run(narrow, "--eval", narrow, "--eval", wide, stdout=True)
    assert status == 0, err
    assert "calibrate on them too" in err and "Calibration text" in err, err
    checks = out.split("domain check of ")[1:]
    assert len(checks) == 2, out
    assert checks[0].startswith(narrow) and "against the calibration data (" + narrow in checks[0], checks[0]
    assert "within the calibration data's domain" in checks[0] and "OUT OF DOMAIN" not in checks[0], checks[0]
    assert checks[1].startswith(wide) and "WARNING: " + wide + " is OUT OF DOMAIN" in checks[1], checks[1]
    assert "layer 1  keys" in checks[1] and "x the calibration data's (above 1.5x)" in checks[1], checks[1]
    codebook = t.last
    print("--eval after training: in domain on the calibration data, out of domain on other data")

    # A codebook given with --codebook: compared with --calib, or told how to compare.
    status, out, err = t.tool_run("--codebook", codebook, "--eval", wide)
    assert status == 0 and "pass --calib" in out and "domain check" not in out, (out, err)
    status, out, err = t.tool_run("--codebook", codebook, "--calib", narrow, "--eval", narrow2, "--eval", wide,
                                  "--threads", "1")
    assert status == 0, err
    checks = out.split("domain check of ")[1:]
    assert len(checks) == 2 and "OUT OF DOMAIN" not in checks[0] and "OUT OF DOMAIN" in checks[1], out
    # A threshold above every ratio flags nothing.
    status, out, err = t.tool_run("--codebook", codebook, "--calib", narrow, "--eval", wide, "--ood-ratio", "1e12")
    assert status == 0 and "OUT OF DOMAIN" not in out and "within" in out, out
    for flags, fragment in ((["--codebook", codebook, "--calib", narrow], "--calib needs --eval"),
                            (["-i", narrow, "-o", os.path.join(scratch, "x.safetensors"), "--calib", narrow,
                              "--eval", wide], "--calib goes with --codebook"),
                            (["--codebook", codebook, "--eval", wide, "--ood-ratio", "0"], "must be positive")):
        status, out, err = t.tool_run(*flags)
        assert status == 2 and fragment in err, (flags, status, err)
    status, out, _ = t.tool_run("--help")
    assert status == 0 and "must cover every domain the model will read" in out, out
    print("--codebook --eval with --calib; bad flags refused; the help says what calibration must cover")

    # On a terminal: the bar, redrawn in place.
    leader, follower = pty.openpty()
    out = os.path.join(scratch, "tty.safetensors")
    process = subprocess.Popen([tool, "-i", kv, "-o", out, *TINY], stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's last writer exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=120) == 0
    tty = b"".join(chunks).decode(errors="replace")
    assert "\r[" in tty and "\x1b[K" in tty, repr(tty[-300:])
    print("a progress bar on a terminal")


if __name__ == "__main__":
    main(*sys.argv[1:])
