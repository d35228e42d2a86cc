"""libcommvq for Hugging Face transformers (5.x): a compressed Cache and its attention.

    import commvq.transformers            # registers attn_implementation="commvq"
    from commvq.transformers import CommvqCache

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="commvq", dtype=torch.bfloat16).cuda()
    cache = CommvqCache("model.cvq.safetensors", model.config, window=128, max_length=8192)
    out = model.generate(**inputs, past_key_values=cache, max_new_tokens=200)
    print(cache.memory())

For LLaMA-family models (LLaMA, Mistral, Qwen2: GQA, rotate-half RoPE) whose
codebook matches them; docs/TRANSFORMERS.md says what is supported. Needs
torch and transformers; `import commvq` alone never loads them.
"""

from .attention import NAME, commvq_attention, register
from .cache import CommvqCache, CommvqLayer

register()

__all__ = ["CommvqCache", "CommvqLayer", "commvq_attention", "register", "NAME"]
