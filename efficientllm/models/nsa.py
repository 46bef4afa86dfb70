"""Native sparse attention (NSA, Yuan et al. 2025, arXiv 2502.11089), written here in plain PyTorch.

Each query mixes three attention branches over the same (rotated) keys and values (paper eq. 5):

    o_t = g_cmp * Attn(q_t, compressed blocks) + g_slc * Attn(q_t, selected blocks) + g_win * Attn(q_t, window)

1. compressed: every block of l = ``nsa_compress_block_size`` consecutive keys (blocks start every d =
   ``nsa_compress_stride`` tokens) is summarised into one key and one value by a learned MLP over the block with an
   intra-block position embedding (eq. 7). A query sees a compressed block only once every token in it is visible
   to it (causal, and not padding);
2. selected: the keys are tiled into selection blocks of l' = ``nsa_selection_block_size``; each block's importance
   is the compressed-attention probability mass of the compressed blocks overlapping it, each weighted by the
   fraction of it that overlaps (the identity when l = l' = d, as the paper's eq. 8; a simpler stand-in for eq. 9's
   triangular spatial sum otherwise; both rank blocks by nearby compressed scores), summed over the query heads
   that share a kv head (eq. 10, so a GQA group reads one set of blocks). The top n = ``nsa_num_selected_blocks``
   blocks are kept, always including the query's own block, the initial block and the previous block, in that
   priority (the paper's "1 initial block and 2 local blocks"), then the most important of the rest;
3. sliding window: the last w = ``nsa_window_size`` keys (the query's own included).

The gates are per head and per branch, sigmoid(``branch_gate``(x)) (section 3.3.3). Selection is not differentiable;
the compression MLP learns through the compressed branch's output, as in the paper.

Why not the ``native-sparse-attention-pytorch`` package (0.2.3)? It does not fit the seam: it applies its own rotary
embedding from a cache offset instead of ``positional.rotate`` with ``position_ids`` (so left-padded batches and the
other positional encodings cannot be honoured), takes no additive mask (no padding, no relative bias), keeps a nested
tuple cache that ``DynamicCache`` cannot hold and decodes one token per call only, and fuses q/k/v into one
projection with its own pre-norm. Writing the algorithm against the seam costs ~200 lines and gives the same
mask, cache and GQA behaviour as every other variant.

Implementation choices (all documented deviations from the paper's kernel, not from its maths):

- One q/k/v projection shared by the three branches (the paper gives each branch its own keys and values). The
  cache then holds the rotated K and V exactly as GQA's does, so ``kv_cache_bytes_per_token`` is 2 x Hkv x D x
  bytes; the compressed keys/values are recomputed from the cache at every forward (their FLOPs are counted).
  Keys are compressed after rotation, because the cache holds rotated keys (past positions are not kept).
- The selected and window branches run the ordinary score kernel (``config.attn_kernel``) over all keys under a
  block / window mask: exact NSA outputs, but dense O(T^2) work and a (B, H, T, Tk) mask per branch, not the
  paper's sparse gather kernel. On CPU at short context this is the fastest correct form; ``flops_per_token``
  counts what it computes (see there). At long context (the 8K paper profile) the masks cost B x H x T^2 elements
  per layer; that scale wants a sparse (Triton) kernel behind the same class, which this module does not provide.
- Blocks are tiled on cache indices, so a left-padded row sees a different block tiling than the same sequence
  alone; padding keys are masked in every branch (compressed blocks that contain padding are skipped).
- An additive score bias in the mask (positional="relative") applies to the selected and window branches; the
  compressed branch has no per-token positions to bias. Rotary, absolute, learned and no encodings work unchanged.

    python -c "from efficientllm.models import EfficientLMConfig as C, EfficientLMForCausalLM as M; \
print(M(C(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, attention='nsa')))"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from efficientllm.models.attention import ATTENTION_KERNELS, AttentionInputs, GroupedQueryAttention

if TYPE_CHECKING:
    from transformers import Cache

    from efficientllm.models.configuration import EfficientLMConfig

_NSA_KEYS = (
    "nsa_compress_block_size",
    "nsa_compress_stride",
    "nsa_selection_block_size",
    "nsa_num_selected_blocks",
    "nsa_window_size",
)


def num_compressed_blocks(k_len: int, block: int, stride: int) -> int:
    """Complete compression blocks [i*stride, i*stride + block) within k_len keys."""
    return (k_len - block) // stride + 1 if k_len >= block else 0


class BlockCompressor(nn.Module):
    """phi of eq. 7: (..., l, D) block of keys (or values) -> (..., D), an MLP over the flattened block after adding a
    learned intra-block position embedding. Shared by all kv heads."""

    def __init__(self, block: int, head_dim: int) -> None:
        super().__init__()
        self.block_positions = nn.Parameter(torch.zeros(block, head_dim))  # (l, D)
        self.fc1 = nn.Linear(block * head_dim, head_dim)
        self.fc2 = nn.Linear(head_dim, head_dim)

    @staticmethod
    def flops_per_block(block: int, head_dim: int) -> int:
        return 2 * block * head_dim * head_dim + 2 * head_dim * head_dim

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        x = (blocks + self.block_positions).flatten(-2)  # (..., l * D)
        return self.fc2(F.silu(self.fc1(x)))  # (..., D)

    def reset_extra_parameters(self, std: float) -> None:
        nn.init.normal_(self.block_positions, std=std)


class NativeSparseAttention(GroupedQueryAttention):
    """NSA with H query heads over Hkv key/value heads (see the module docstring).

    GQA's q/k/v/o projections (Llama names), rotation and K/V cache, with the three branches in place of its one
    dense attention.
    """

    def __init__(self, config: EfficientLMConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        C, H, D = config.hidden_size, config.num_attention_heads, config.head_dim
        self.num_heads, self.num_kv_heads = H, config.num_key_value_heads
        self.k_compress = BlockCompressor(config.nsa_compress_block_size, D)
        self.v_compress = BlockCompressor(config.nsa_compress_block_size, D)
        self.branch_gate = nn.Linear(C, 3 * H, bias=False)  # per head: (compressed, selected, window)

    # --- config-only hooks ------------------------------------------------------------------------------------------

    @classmethod
    def validate_config(cls, config: EfficientLMConfig) -> None:
        for key in _NSA_KEYS:
            value = getattr(config, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"attention='nsa' needs {key} to be a positive int, got {value!r}")
        ctx = config.max_position_embeddings
        block, stride = config.nsa_compress_block_size, config.nsa_compress_stride
        selection, selected = config.nsa_selection_block_size, config.nsa_num_selected_blocks
        if stride > block:
            raise ValueError(
                f"nsa_compress_stride ({stride}) must be <= nsa_compress_block_size ({block}): larger strides "
                "leave tokens that no compressed block covers"
            )
        for key, size in (("nsa_compress_block_size", block), ("nsa_selection_block_size", selection)):
            if isinstance(ctx, int) and ctx % size:
                raise ValueError(f"{key} ({size}) must divide max_position_embeddings ({ctx})")
        if isinstance(ctx, int) and selected > ctx // selection:
            raise ValueError(
                f"nsa_num_selected_blocks ({selected}) exceeds the {ctx // selection} selection blocks of the context "
                f"(max_position_embeddings {ctx} / nsa_selection_block_size {selection})"
            )
        if isinstance(ctx, int) and config.nsa_window_size > ctx:
            raise ValueError(f"nsa_window_size ({config.nsa_window_size}) must be <= max_position_embeddings ({ctx})")

    @classmethod
    def forward_flops(cls, config: EfficientLMConfig, q_len: int, k_len: int) -> float:
        """Matmul FLOPs of one forward of ONE layer (per sequence), q_len new tokens over k_len keys, as computed:

        projections (q, k, v, o, gates) per new token; compressing every complete block of the k_len keys (K and V,
        per kv head; recomputed each forward); compressed scores and values (4 H D per block per query); the
        block-importance map (2 Hkv Nc Ns per query; forward only, so training is 3 x forward minus twice this
        small term); the selected and window branches over the full key range
        (2 x 4 k_len H D per query: the dense masked kernel). A sparse gather kernel would instead spend
        4 H D (n l' + w) per query on those two branches.
        """
        C, H, Hkv, D = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        block, stride = config.nsa_compress_block_size, config.nsa_compress_stride
        n_cmp = num_compressed_blocks(k_len, block, stride)
        n_sel = -(-k_len // config.nsa_selection_block_size)
        per_query = 2 * C * (H * D + 2 * Hkv * D) + 2 * H * D * C + 2 * C * 3 * H
        per_query += 2 * 4 * k_len * H * D
        compress = 0
        if n_cmp:
            per_query += 4 * H * n_cmp * D + 2 * Hkv * n_cmp * n_sel
            compress = 2 * Hkv * n_cmp * BlockCompressor.flops_per_block(block, D)
        return float(q_len * per_query + compress)

    @classmethod
    def flops_per_token(cls, config: EfficientLMConfig, seq_len: int) -> float:
        return cls.forward_flops(config, seq_len, seq_len) / seq_len

    # --- the three branches ---------------------------------------------------------------------------------------

    def compressed_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, H, T, D); k, v (B, Hkv, Tk, D); allowed (B|1, 1, T, Tk) bool. Returns the branch output (B, H, T, D)
        and its probabilities (B, Hkv, G, T, Nc). Before the first block completes, Nc = 0 and the output is 0; the
        empty tensors still run through the compressors, so their parameters get a zero gradient rather than None."""
        B, H, T, D = q.shape
        Hkv, Tk, G = k.shape[1], k.shape[2], H // k.shape[1]
        block, stride = self.config.nsa_compress_block_size, self.config.nsa_compress_stride
        n_cmp = num_compressed_blocks(Tk, block, stride)
        if n_cmp:
            k_blocks = k.unfold(2, block, stride).transpose(-1, -2)  # (B, Hkv, Nc, l, D)
            v_blocks = v.unfold(2, block, stride).transpose(-1, -2)
            visible = allowed.unfold(-1, block, stride).all(-1)[:, :, None]  # (B|1, 1, 1, T, Nc): whole block seen
        else:  # unfold rejects a window longer than the tensor
            k_blocks = v_blocks = k.new_zeros(B, Hkv, 0, block, D)
            visible = allowed.new_zeros(1, 1, 1, T, 0)
        ck, cv = self.k_compress(k_blocks), self.v_compress(v_blocks)  # (B, Hkv, Nc, D)
        scores = (q.reshape(B, Hkv, G * T, D) @ ck.transpose(-1, -2)).view(B, Hkv, G, T, n_cmp) * self.scale
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) * visible  # rows with no block: 0
        out = probs.view(B, Hkv, G * T, n_cmp) @ cv  # (B, Hkv, G*T, D)
        return out.view(B, H, T, D), probs

    def select_blocks(self, probs: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
        """Top-n selection blocks per (batch, kv head, query): (B, Hkv, T, Ns) bool, Ns = ceil(k_len / l')."""
        block, stride = self.config.nsa_compress_block_size, self.config.nsa_compress_stride
        size = self.config.nsa_selection_block_size
        G = self.num_heads // self.num_kv_heads
        n_sel = -(-k_len // size)
        device = probs.device
        blocks = torch.arange(n_sel, device=device)  # (Ns,)
        # overlap[c, s] = |compressed block c  intersect  selection block s| / l; each row sums to <= 1
        starts = torch.arange(probs.shape[-1], device=device)[:, None] * stride  # (Nc, 1)
        lo = torch.maximum(starts, blocks[None] * size)
        hi = torch.minimum(starts + block, (blocks[None] + 1) * size)
        overlap = (hi - lo).clamp(min=0).to(probs.dtype) / block  # (Nc, Ns)
        # (B, Hkv, T, Ns), each entry in [0, G] (eq. 9, 10); it only ranks blocks, so no gradient (and no backward)
        importance = (probs.detach().sum(2) @ overlap).float()
        own = (torch.arange(k_len - q_len, k_len, device=device) // size)[:, None]  # (T, 1) the query's block
        # (T, Ns) priority of the always-on blocks, own > initial > previous (4 > 2 + 1 when one block is both)
        forced = 4 * (blocks == own) + 2 * (blocks == 0) + (blocks == own - 1)
        key = (importance + forced * (G + 1)).masked_fill(blocks > own, -1.0)  # future blocks last (masked anyway)
        # stable sort, not topk: ties (e.g. zero importance) resolve to the lowest block index whatever the shapes,
        # so cached and uncached forwards select the same blocks
        top = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., : self.config.nsa_num_selected_blocks]
        return torch.zeros(key.shape, dtype=torch.bool, device=device).scatter_(-1, top, True)

    def masked_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, base: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """The score kernel restricted to ``keep`` (B|1, Hkv|1, T, Tk) bool on top of the additive ``base`` mask."""
        if keep.shape[1] > 1:
            keep = keep.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)  # (B, H, T, Tk)
        mask = torch.where(keep, base, torch.finfo(base.dtype).min)
        return ATTENTION_KERNELS[self.config.attn_kernel](q, k, v, mask, self.scale)

    def branch_outputs(
        self, hidden: torch.Tensor, inputs: AttentionInputs, past_key_values: Cache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(compressed, selected, window) outputs, each (B, H, T, D), before gating."""
        T = hidden.shape[1]
        q, k, v = self.project_qkv(hidden, inputs, past_key_values)  # (B, H, T, D), (B, Hkv, Tk, D) x 2
        Tk = k.shape[2]
        q_idx = torch.arange(Tk - T, Tk, device=q.device)[:, None]  # (T, 1) cache index of each query
        k_idx = torch.arange(Tk, device=q.device)[None]  # (1, Tk)
        if inputs.mask is None:  # plain causal: the queries are the last T of the Tk keys
            base = torch.zeros(T, Tk, dtype=q.dtype, device=q.device).masked_fill(
                k_idx > q_idx, torch.finfo(q.dtype).min
            )
            base = base[None, None]  # (1, 1, T, Tk)
        else:
            base = inputs.mask  # (B|1, 1|H, T, Tk): causal, padding and any positional bias
        allowed = base[:, :1] > torch.finfo(base.dtype).min / 2  # (B|1, 1, T, Tk)

        o_cmp, probs = self.compressed_attention(q, k, v, allowed)
        selected = self.select_blocks(probs, T, Tk)  # (B, Hkv, T, Ns)
        size = self.config.nsa_selection_block_size
        o_slc = self.masked_attention(q, k, v, base, selected.repeat_interleave(size, dim=-1)[..., :Tk])
        o_win = self.masked_attention(q, k, v, base, (k_idx > q_idx - self.config.nsa_window_size)[None, None])
        return o_cmp, o_slc, o_win

    def attend(self, hidden: torch.Tensor, inputs: AttentionInputs, past_key_values: Cache | None) -> torch.Tensor:
        """The three branches mixed by their per-head gates (eq. 5): (B, H, T, D)."""
        B, T, _ = hidden.shape
        o_cmp, o_slc, o_win = self.branch_outputs(hidden, inputs, past_key_values)
        gates = torch.sigmoid(self.branch_gate(hidden)).view(B, T, self.num_heads, 3).transpose(1, 2)  # (B, H, T, 3)
        return gates[..., 0:1] * o_cmp + gates[..., 1:2] * o_slc + gates[..., 2:3] * o_win  # (B, H, T, D)
