"""CommvqCache: a transformers Cache whose tokens live, compressed, in a libcommvq cache.

How it meets transformers' attention layers (LlamaAttention and its kin):

    key, value = past_key_values.update(key, value, layer_idx)   # post-RoPE [B, Hkv, T, d]
    out, _ = attention_fn(module, query, key, value, attention_mask, scaling=...)

update() only keeps the new keys and values and hands them back; the
attention function registered as "commvq" (attention.py) then calls
attend() here, which sees the attention mask (so it knows the padding) and
does the library's work:

* a layer's first forward (the prompt): dense SDPA over the prompt's own
  keys and values, at full precision, then the prompt's tokens are appended
  (the library encodes those that leave the window): one
  commvq_cache_append_batch call when no row is padded, row by row
  otherwise; with prefill="codes" the tokens are appended first and the
  prompt attends from the cache instead (what tools/quality.py measures);
* one new token per row (decode): one commvq_cache_append_batch call
  appends every row's token and one commvq_cache_attend_batch call attends
  from codes for the whole batch: two library calls per layer and step,
  whatever the batch;
* several new tokens on a filled layer (a later prompt chunk): appended,
  then attend causally from the cache, row by row.

Positions. The library numbers a sequence's tokens 0, 1, ... in the order
appended and rotates keys by that number (keys are given post-RoPE and
un-rotated inside: KEYS_POST_ROPE). Left-padding tokens are never appended,
so a row's real tokens are numbered as transformers' generate numbers them
(position_ids from the attention mask's cumulative sum). Where position_ids
reach the attention function and disagree (e.g. positions counting the
pads), the call fails with an error rather than quantize rotated keys.
Right padding, or a pad after a real token, is refused.

transformers' own bookkeeping (get_seq_length, mask sizes) counts columns,
pads included: the mask transformers builds spans the padded batch.

Tensor parallelism (docs/PARALLEL.md). Under transformers' tensor
parallelism (tp_plan="auto" under torchrun) each rank's attention layers see
a slice of the heads. The first forward finds fewer KV heads than the
codebook's and makes a slice cache of the rank's heads (rank r of the
process group holds the r-th slice, as the column-parallel projections
split them); every append then goes through commvq.tensor_parallel, which
all-gathers the values of all heads and, in the token scale mode, the
squared key norms, so each rank encodes exactly what one full cache does.
Every rank must run the same batch: the appends are collectives.

Batch rows map to library sequences (`rows`); beam search's reorder_cache,
batch_repeat_interleave and batch_select_indices become seq_fork (compressed
blocks shared copy-on-write) and seq_clear. There is no torch.compile or
CUDA-graph support (is_compileable is False).
"""

import threading
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .. import _api, tensor_parallel
from ..cache import Cache as Engine
from ..codebook import Codebook

_IO_DTYPES = {torch.float32: _api.DTYPE_F32, torch.float16: _api.DTYPE_F16, torch.bfloat16: _api.DTYPE_BF16}
_ROPE_SCALING = {"default": _api.ROPE_SCALING_NONE, "linear": _api.ROPE_SCALING_LINEAR,
                 "llama3": _api.ROPE_SCALING_LLAMA3}

# The cache whose update() ran last on this thread: the attention function,
# which transformers calls without the cache, finds it here and checks that
# the key it was given is the one that update() handed back.
_last_update = threading.local()


def pending_cache(layer_idx: int, key: torch.Tensor) -> Optional["CommvqCache"]:
    """The CommvqCache that just returned `key` from update(layer_idx), or None."""
    cache = getattr(_last_update, "cache", None)
    if cache is not None and cache._pending.get(layer_idx, (None,))[0] is key:
        return cache
    return None


class CommvqLayer(CacheLayerMixin):
    """transformers' view of one layer: how many columns (tokens, pads included) it has seen.
    The tokens themselves are in the library."""

    is_compileable = False
    is_sliding = False

    def __init__(self) -> None:
        super().__init__()
        self.columns = 0

    def lazy_initialization(self, key_states: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               cache_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("CommvqLayer.update: update through the CommvqCache, which owns the layers")

    def get_mask_sizes(self, query: Union[int, torch.Tensor], *args: Any) -> Tuple[int, int]:
        # transformers 5.x passes the query length; earlier versions the query's cache_position.
        length = query if isinstance(query, int) else int(query.shape[0])
        return self.columns + length, 0

    def get_seq_length(self, *args: Any) -> int:
        return self.columns

    def get_max_cache_shape(self, *args: Any) -> int:
        return -1

    # transformers 5.17 names the same query get_max_length (abstract there).
    def get_max_length(self, *args: Any) -> int:
        return -1

    def reset(self) -> None:
        self.columns = 0


class CommvqCache(Cache):
    """A transformers Cache backed by libcommvq (1 or 2 bits per element).

        cache = CommvqCache("model.cvq.safetensors", model.config, window=128, max_length=8192)
        model.generate(**inputs, past_key_values=cache, max_new_tokens=200)

    The model must run with attn_implementation="commvq" (import
    commvq.transformers registers it). The library cache is created at the
    first forward, on the device and in the dtype of the model's queries
    (float32, float16 or bfloat16), for max(max_batch_size, batch) sequences
    of up to max_length tokens each (compressed tokens, all sequences
    together: max_seqs * max_length).

    codebook: a commvq.Codebook or the path of a codebook file.
    config: the model's config, checked against the codebook (layers, heads,
    head_dim, RoPE) when given.
    window, sink_tokens, n_threads: as commvq_cache_params_t.
    process_group: under tensor parallelism, the torch.distributed group whose
    ranks hold the slices of the KV heads in rank order (None: the default
    group); unused when the model's layers have all the heads.
    prefill: "dense" (the prompt attends at full precision over its own keys
    and values, then is appended) or "codes" (appended first, then attends
    from the cache).
    """

    def __init__(self, codebook: Union[Codebook, str], config: Any = None, *, window: int = 128,
                 sink_tokens: int = 0, max_batch_size: Optional[int] = None, max_length: int = 8192,
                 prefill: str = "dense", n_threads: int = 0, process_group: Any = None) -> None:
        if prefill not in ("dense", "codes"):
            raise ValueError(f"CommvqCache: prefill must be 'dense' or 'codes', got {prefill!r}")
        self._owns_codebook = not isinstance(codebook, Codebook)
        self._codebook: Optional[Codebook] = Codebook.load(codebook) if self._owns_codebook else codebook
        self.info = self._codebook.info
        if self.info["pair_layout"] != _api.PAIRS_ROTATE_HALF:
            raise ValueError("CommvqCache: the codebook's pair layout is interleaved; transformers' LLaMA-family "
                             "models rotate halves (a codebook trained with pair_layout=PAIRS_ROTATE_HALF)")
        if config is not None:
            check_config(self.info, config)
        super().__init__(layers=[CommvqLayer() for _ in range(self.info["n_layers"])])
        self.window, self.sink_tokens, self.n_threads = window, sink_tokens, n_threads
        self.max_batch_size_, self.max_length, self.prefill = max_batch_size, max_length, prefill
        self.process_group = process_group
        self.engine: Optional[Engine] = None
        self.rows: List[int] = []  # library sequence of each batch row
        self._row_ids: Tuple[Optional[List[int]], Optional[np.ndarray]] = (None, None)  # rows as uint32, cached
        self._free: List[int] = []  # library sequences not in use
        self._pending: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> what update() returned

    # ---- transformers' Cache interface --------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keeps the layer's new post-RoPE keys and values [B, Hkv, T, d] for the attention
        function, which appends them; returns them unchanged."""
        if layer_idx in self._pending:
            raise RuntimeError(f"CommvqCache: layer {layer_idx} was updated twice with no attention in between: "
                               "load the model with attn_implementation='commvq' (import commvq.transformers)")
        self._pending[layer_idx] = (key_states, value_states)
        _last_update.cache = self
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0, *args: Any) -> int:
        """Columns seen (tokens per row, left padding included), as transformers counts them."""
        return self.layers[layer_idx].columns if layer_idx < len(self.layers) else 0

    def get_mask_sizes(self, query: Union[int, torch.Tensor], layer_idx: int = 0, *args: Any) -> Tuple[int, int]:
        return self.layers[min(layer_idx, len(self.layers) - 1)].get_mask_sizes(query)

    def get_max_cache_shape(self, layer_idx: int = 0, *args: Any) -> int:
        return -1

    def get_max_length(self, layer_idx: int = 0, *args: Any) -> int:
        return -1

    def reset(self) -> None:
        """Empties every sequence; the library cache (and its memory) stays for the next batch."""
        self._pending.clear()
        for layer in self.layers:
            layer.reset()
        if self.engine is not None:
            for seq in self.rows:
                self.engine.seq_clear(seq)
            self._free = sorted(self._free + self.rows)
        self.rows = []

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Row b becomes a copy of old row beam_idx[b] (beam search)."""
        self._remap([int(i) for i in beam_idx.tolist()], "reorder_cache")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._remap([b for b in range(len(self.rows)) for _ in range(repeats)], "batch_repeat_interleave")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if indices.dtype == torch.bool:
            indices = indices.nonzero().flatten()
        self._remap([int(i) for i in indices.tolist()], "batch_select_indices")

    def crop(self, max_length: int) -> None:
        """Keeps the first max_length columns (negative: drops -max_length), in every row and layer."""
        columns = self.get_seq_length()
        keep = columns + max_length if max_length < 0 else max_length
        if keep >= columns:
            return
        self._require_in_step("crop")
        drop = columns - max(keep, 0)
        for seq in self.rows:
            self.engine.seq_truncate(seq, max(self.engine.seq_length(seq) - drop, 0))
        for layer in self.layers:
            layer.columns = max(keep, 0)

    # ---- memory ------------------------------------------------------------------------
    def memory(self) -> Dict[str, Any]:
        """Bytes the cache holds and reserves (commvq_cache_stats_t), and tokens per row."""
        if self.engine is None:
            return {"bytes_used": 0, "bytes_reserved": 0, "tokens": 0, "compressed_tokens": 0, "row_tokens": []}
        s = self.engine.stats()
        return {"bytes_used": s["bytes_compressed"] + s["bytes_window"], "bytes_compressed": s["bytes_compressed"],
                "bytes_window": s["bytes_window"], "bytes_reserved": s["bytes_reserved"],
                "bytes_per_compressed_token": s["bytes_per_compressed_token"],
                "bytes_per_token_16bit": s["bytes_per_token_16bit"], "tokens": s["tokens"],
                "compressed_tokens": s["compressed_tokens"],
                "row_tokens": [self.engine.seq_length(seq) for seq in self.rows]}

    # ---- the attention function's side ----------------------------------------------------
    def attend(self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: Optional[torch.Tensor], scaling: Optional[float], sdpa: Any,
               **kwargs: Any) -> Tuple[torch.Tensor, None]:
        """Appends the layer's pending tokens and computes its attention: [B, T, Hq, d]."""
        layer = module.layer_idx
        self._pending.pop(layer)
        B, Hq, T, d = query.shape
        engine = self._engine_for(query, key, scaling)
        state = self.layers[layer]
        if T == 1 and state.columns > 0:
            out = self._decode(engine, layer, query, key, value)
        else:
            real = real_tokens(attention_mask, B, T)
            if layer == 0:
                self._check_positions(kwargs.get("position_ids"), real, T)
            if state.columns == 0 and self.prefill == "dense":
                out, _ = sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=0.0, **kwargs)
                self._append_rows(engine, layer, key, value, real)
            else:
                self._append_rows(engine, layer, key, value, real)
                out = query.new_zeros((B, T, Hq, d))  # rows' padding queries stay 0: nothing reads them
                for b, (seq, n) in enumerate(zip(self.rows, real)):
                    if n:
                        q = query[b, :, T - n:].transpose(0, 1).contiguous()
                        out[b, T - n:], _ = engine.attend(layer, seq, q)
        state.columns += T
        return out, None

    def _decode(self, engine: Engine, layer: int, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
        """One token per row: one append_batch and one attend_batch for all rows."""
        k = key[:, :, 0].contiguous()  # [B, Hkv, d]; a no-op for LlamaAttention's layout
        v = value[:, :, 0].contiguous()
        rows = self._rows_array()
        tensor_parallel.append(engine, layer, rows, k, v, self.process_group)
        out, _ = engine.attend_batch(layer, rows, query[:, :, 0].contiguous())
        return out.unsqueeze(1)

    def _rows_array(self) -> np.ndarray:
        """self.rows as a uint32 array, made again only when the rows change (they are replaced, never edited)."""
        rows, array = self._row_ids
        if rows is not self.rows:
            array = np.asarray(self.rows, dtype=np.uint32)
            self._row_ids = (self.rows, array)
        return array

    def _append_rows(self, engine: Engine, layer: int, key: torch.Tensor, value: torch.Tensor,
                     real: List[int]) -> None:
        T = key.shape[2]
        if all(n == T for n in real):  # no padding: every row in one call, [B, T, Hkv, d]
            tensor_parallel.append(engine, layer, self._rows_array(), key.transpose(1, 2).contiguous(),
                                   value.transpose(1, 2).contiguous(), self.process_group)
            return
        for b, (seq, n) in enumerate(zip(self.rows, real)):
            if n:  # one row of n tokens: [1, n, Hkv, d]
                tensor_parallel.append(engine, layer, [seq], key[b:b + 1, :, T - n:].transpose(1, 2).contiguous(),
                                       value[b:b + 1, :, T - n:].transpose(1, 2).contiguous(), self.process_group)

    def _engine_for(self, query: torch.Tensor, key: torch.Tensor, scaling: Optional[float]) -> Engine:
        """The library cache, created at the first forward; checks the batch and shapes."""
        B, Hq, _, d = query.shape
        if self.engine is None:
            begin, count = self._head_slice(Hq, key.shape[1], d)
            if query.dtype not in _IO_DTYPES:
                raise ValueError(f"CommvqCache: queries are {query.dtype}; the library takes float32, float16 or "
                                 "bfloat16")
            max_seqs = max(self.max_batch_size_ or B, B)
            device = _api.DEVICE_CPU if query.device.type == "cpu" else (query.device.index or 0)
            # One spare block per sequence: a forked sequence copies its shared last block when it diverges.
            self.engine = Engine(self._codebook, device=device, max_seqs=max_seqs,
                                 max_tokens=max_seqs * (self.max_length + 64), window=self.window,
                                 sink_tokens=self.sink_tokens, io_dtype=_IO_DTYPES[query.dtype],
                                 key_convention=_api.KEYS_POST_ROPE, attn_scale=float(scaling or 0.0),
                                 n_threads=self.n_threads, kv_head_begin=begin, kv_head_count=count)
            self._free = list(range(max_seqs))
            if self._owns_codebook:
                self._codebook.close()  # the library cache keeps its own copy
            self._codebook = None
        elif (Hq, key.shape[1], d) != (self.engine.n_q_heads, self.engine.kv_head_count, self.engine.head_dim):
            # The heads were settled when the cache was made: later forwards must bring the same.
            e = self.engine
            raise ValueError(f"CommvqCache: the model's layers have {Hq} query heads, {key.shape[1]} KV heads and "
                             f"head_dim {d}; the cache was made for {e.n_q_heads}, {e.kv_head_count} and {e.head_dim}")
        if not self.rows:
            if B > len(self._free):
                raise ValueError(f"CommvqCache: a batch of {B} rows, but the cache was made for "
                                 f"{len(self._free)} sequences (max_batch_size)")
            self.rows, self._free = self._free[:B], self._free[B:]
        elif B != len(self.rows):
            raise ValueError(f"CommvqCache: a batch of {B} rows, but the cache holds {len(self.rows)}; "
                             "call reset() before a new batch")
        return self.engine

    def _head_slice(self, Hq: int, Hkv: int, d: int) -> Tuple[int, int]:
        """The KV heads this process's layers hold, (begin, count): all of them, or
        under tensor parallelism the slice of its rank in the process group."""
        info = self.info
        full, group_size = info["n_kv_heads"], info["n_q_heads"] // info["n_kv_heads"]
        shape = (f"the model's layers have {Hq} query heads, {Hkv} KV heads and head_dim {d}; the codebook "
                 f"{info['n_q_heads']}, {full} and {info['head_dim']}")
        if d != info["head_dim"] or Hq != Hkv * group_size or Hkv == 0 or full % Hkv:
            raise ValueError(f"CommvqCache: {shape}")
        if Hkv == full:
            return 0, full
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(f"CommvqCache: {shape}, and torch.distributed is not initialized: a slice of the heads "
                             "is only understood under tensor parallelism")
        ranks, rank = dist.get_world_size(self.process_group), dist.get_rank(self.process_group)
        if ranks * Hkv != full:
            raise ValueError(f"CommvqCache: {shape}, but the process group has {ranks} ranks "
                             f"({ranks} x {Hkv} KV heads is not {full})")
        return rank * Hkv, Hkv

    def _check_positions(self, position_ids: Optional[torch.Tensor], real: List[int], T: int) -> None:
        """The library's positions (each row's token count so far, then on) must be transformers'."""
        if position_ids is None or self.engine is None:
            return
        pos = position_ids.expand(len(self.rows), -1).tolist()
        for b, (seq, n) in enumerate(zip(self.rows, real)):
            start = self.engine.seq_length(seq)
            if n and pos[b][T - n:] != list(range(start, start + n)):
                raise ValueError(
                    f"CommvqCache: row {b}'s new tokens sit at positions {pos[b][T - n]}..{pos[b][-1]}, but the "
                    f"cache numbers them {start}..{start + n - 1} (its padding-free token count); pass position_ids "
                    "that count only unpadded tokens, as generate() does from the attention mask")

    def _remap(self, sources: List[int], call: str) -> None:
        """New row r = copy of old row sources[r]: a source's first use keeps its sequence, later uses fork it."""
        if self.engine is None or not self.rows:
            return
        self._require_in_step(call)
        old = self.rows
        if any(not 0 <= s < len(old) for s in sources):
            raise ValueError(f"CommvqCache.{call}: row indices {sources} outside 0..{len(old) - 1}")
        used = set(sources)
        for r, seq in enumerate(old):
            if r not in used:
                self.engine.seq_clear(seq)
                self._free.append(seq)
        need = len(sources) - len(used)
        if need > len(self._free):
            raise ValueError(f"CommvqCache.{call}: {len(sources)} rows need {need} more sequences than the "
                             f"{len(self._free)} free; create the cache with max_batch_size >= {len(sources)}")
        taken, rows = set(), []
        for s in sources:
            if s in taken:
                seq = self._free.pop(0)
                self.engine.seq_fork(old[s], seq)
            else:
                taken.add(s)
                seq = old[s]
            rows.append(seq)
        self.rows = rows

    def _require_in_step(self, call: str) -> None:
        if self._pending:
            raise RuntimeError(f"CommvqCache.{call}: layers {sorted(self._pending)} are mid-forward")


def real_tokens(mask: Optional[torch.Tensor], B: int, T: int) -> List[int]:
    """Per row, how many of the T new tokens are real (not padding): the columns the
    last query sees. They must be the last ones (left padding); waits for the device."""
    if mask is None:
        return [T] * B
    if mask.dim() == 4:
        last = mask[:, 0, -1, -T:]
    elif mask.dim() == 2:  # a padding mask [B, columns]
        last = mask[:, -T:]
    else:
        raise ValueError(f"CommvqCache: an attention mask of shape {list(mask.shape)}; want 4-D (sdpa) or 2-D")
    if last.dtype != torch.bool:
        last = last > torch.finfo(last.dtype).min / 2 if last.is_floating_point() else last != 0
    rows = last.expand(B, T).tolist()
    counts = []
    for b, row in enumerate(rows):
        n = sum(row)
        if row[T - n:] != [True] * n:
            raise ValueError(f"CommvqCache: row {b} has padding after a real token; only left padding is supported")
        counts.append(n)
    return counts


def check_config(info: Dict[str, Any], config: Any) -> None:
    """The model's shape and RoPE against the codebook's (ValueError naming both)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    model = {"n_layers": text.num_hidden_layers, "n_q_heads": heads, "n_kv_heads": kv, "head_dim": head_dim}
    for name, value in model.items():
        if info[name] != value:
            raise ValueError(f"CommvqCache: the model has {name} {value}, the codebook {info[name]}")
    rope = dict(getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(text, "rope_theta", None))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in _ROPE_SCALING:
        raise ValueError(f"CommvqCache: RoPE type {kind!r} is not supported (default, linear, llama3)")
    if _ROPE_SCALING[kind] != info["rope"]["scaling"]:
        raise ValueError(f"CommvqCache: the model's RoPE type is {kind}, the codebook's scaling "
                         f"{info['rope']['scaling']} (0 none, 1 linear, 2 llama3)")
    if theta is not None and abs(float(theta) - info["rope"]["theta"]) > 1e-6 * info["rope"]["theta"]:
        raise ValueError(f"CommvqCache: the model's RoPE theta is {theta}, the codebook's {info['rope']['theta']}")
