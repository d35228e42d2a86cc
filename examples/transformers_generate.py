#!/usr/bin/env python3
"""Generate with a Hugging Face model whose KV cache is compressed by libcommvq.

    python3 examples/transformers_generate.py MODEL_DIR CODEBOOK [PROMPT ...]

MODEL_DIR: a LLaMA-family model (LLaMA, Mistral, Qwen2) in transformers'
format; CODEBOOK: a codebook trained for it (commvq-train, docs/TRAINING.md),
e.g. shared/models/bytellama-13m with data/codebooks/bytellama-13m-1bit.safetensors.
Needs torch, transformers 5.x and libcommvq (found as docs/BINDINGS.md says,
e.g. COMMVQ_LIBRARY=build/libcommvq.so); runs on the GPU when there is one.
"""

import sys

import torch
import transformers

import commvq.transformers  # registers attn_implementation="commvq"
from commvq.transformers import CommvqCache


def main(model_dir, codebook, prompts):
    device = "cuda" if torch.cuda.is_available() and commvq.cuda_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="commvq",
                                                              dtype=dtype).to(device).eval()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    except (OSError, ValueError):
        tokenizer = None  # bytellama has no tokenizer: its tokens are bytes
    if tokenizer is not None:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        pad_id = tokenizer.pad_token_id
    else:
        width = max(len(p.encode()) for p in prompts)
        rows = [p.encode() for p in prompts]
        inputs = {"input_ids": torch.tensor([[0] * (width - len(r)) + list(r) for r in rows], device=device),
                  "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)}
        pad_id = 0

    # window: recent tokens kept exact; max_length: tokens per sequence the cache is sized for.
    cache = CommvqCache(codebook, model.config, window=128, max_length=4096)
    with torch.no_grad():
        out = model.generate(**inputs, past_key_values=cache, max_new_tokens=200, do_sample=False,
                             pad_token_id=pad_id)
    prompt_width = inputs["input_ids"].shape[1]
    for row in out:
        new = row[prompt_width:].tolist()
        print(repr(tokenizer.decode(new) if tokenizer else bytes(t for t in new if t < 256).decode(errors="replace")))
    m = cache.memory()
    print(f"cache: {m['tokens']} tokens, {m['compressed_tokens']} of them compressed, {m['bytes_used']} bytes in use "
          f"({m['bytes_per_compressed_token']:.0f} bytes per compressed token vs {m['bytes_per_token_16bit']:.0f} at "
          f"16 bits), {m['bytes_reserved']} bytes reserved")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or ["The most important thing about a startup is", "def fib(n):"])
