# tools/quality.py's bits per byte on the first 8 essay chunks (check_transformers.py --chunks 8's reference),
# window 128, for three 1-bit codebooks: which one the 2026-12-06 check used, and the new file's figure.
# The first codebook is data/codebooks/bytellama-13m-1bit.safetensors at commit 93e3cc8 (git show 93e3cc8:data/codebooks/bytellama-13m-1bit.safetensors > /tmp/q7/cb-5f4bea.safetensors).
import os, sys, time
sys.path.insert(0, "/work/main/tools")
import torch, bytellama, quality
torch.set_num_threads(2)
E = "/work/shared/data/eval-dev"
chunks, _ = quality.domain_chunks(quality.standard_domains(E)[0], quick=False)
chunks = chunks[:8]
model = bytellama.Llama("/work/shared/models/bytellama-13m", device="cpu")
lib = quality.Library("/work/main/build-cpu/libcommvq.so", 2)
for name, path in [("5f4bea50 (essays only, shipped until 2026-12-06 19:31)", "/tmp/q7/cb-5f4bea.safetensors"),
                   ("5ff4cef9 (v1000)", "/tmp/cb/bytellama-13m-1b-m64-s100-i512-v1000.safetensors"),
                   ("ca0a7133 (v3000, shipped now)", "/work/main/data/codebooks/bytellama-13m-1bit.safetensors")]:
    t = time.time()
    cb = lib.codebook(path)
    att = quality.Attention(model, {"kind": "commvq", "bits": 1, "window": 128}, lib, cb, 2)
    total, count = quality.score(model, chunks, att, 0)
    print(f"{name}: {total / count:.4f} bpb over {count} bytes ({time.time() - t:.0f} s)", flush=True)
