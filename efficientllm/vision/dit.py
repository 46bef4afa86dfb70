"""The class-conditional Diffusion Transformer of the vision axis, built from diffusers' own blocks.

`VisionDiT` *is* diffusers' `DiTTransformer2DModel` (patch embedding with fixed 2-D sin-cos positions, adaLN-Zero
`BasicTransformerBlock`s whose norms embed the timestep and the class label, the final adaLN + unpatchify head),
with one seam per block swapped by the recipe:

- attention (`attention`): every variant is a diffusers `Attention`.
  * `mha` / `gqa` (MQA is `gqa` with one KV head): `Attention(kv_heads=...)` run by diffusers'
    `StableAudioAttnProcessor2_0`, which repeats each KV head over its query group (MHA takes the same processor
    with kv_heads = heads, so the variants differ in their KV projections only).
  * `mla`: an MLA-style low-rank joint KV compression (DeepSeek-V2, arXiv 2405.04434, eqs. 9-11, without the
    decoupled RoPE key: a DiT has no rotary positions). `kv_a_proj` (C -> r) + `kv_a_norm` (RMSNorm) make one
    r-wide latent per token, and the Attention's own `to_k` / `to_v` (built with `cross_attention_dim = r`)
    expand it to the keys and values of every head. The latent is what a KV cache would hold: r numbers per token
    and layer instead of 2 x kv_heads x head_dim. `LowRankKVAttnProcessor` is the processor; queries are full rank.
- feed-forward (`mlp`): `dense` is diffusers' `FeedForward` (GELU, 4C); `moe` is the text axis' own
  `MixtureOfExperts` (top-k routed SwiGLU experts with the Switch load-balancing loss, efficientllm.models.moe)
  behind `MoEFeedForward`, which keeps the aux loss for the training step (`aux_loss(model)`).

Label dropout for classifier-free guidance is done once per image by the training step (`drop_labels`): diffusers'
blocks each hold their own label embedding and would otherwise drop a label in some blocks but not others.

    python -c "from efficientllm.vision.dit import build_dit; print(build_dit({'attention': 'gqa', 'kv_heads': 1}))"
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention, StableAudioAttnProcessor2_0
from diffusers.models.transformers.dit_transformer_2d import DiTTransformer2DModel
from torch import nn
from torch.nn import functional as F

from efficientllm.vision.recipes import DiTShape, dit_kwargs


class LowRankKVAttnProcessor:
    """MLA-style attention on a diffusers `Attention` that carries `kv_a_proj` and `kv_a_norm` (see the module
    docstring): latent c = norm(W_a h) (B, N, r); K = to_k(c), V = to_v(c) (B, N, H*D); softmax attention."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("LowRankKVAttnProcessor is self-attention without a mask")
        B, N, _ = hidden_states.shape
        heads = attn.heads
        latent = attn.kv_a_norm(attn.kv_a_proj(hidden_states))  # (B, N, r): what a cache would keep
        query = attn.to_q(hidden_states).view(B, N, heads, -1).transpose(1, 2)  # (B, H, N, D)
        key = attn.to_k(latent).view(B, N, heads, -1).transpose(1, 2)
        value = attn.to_v(latent).view(B, N, heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value)  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(B, N, -1).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def make_attention(kind: str, dim: int, heads: int, kv_heads: int | None, kv_lora_rank: int | None) -> Attention:
    """The diffusers Attention of one DiT block for attention `kind` (bias as diffusers' DiT blocks have it)."""
    head_dim = dim // heads
    if kind == "mla":
        attn = Attention(query_dim=dim, cross_attention_dim=kv_lora_rank, heads=heads, dim_head=head_dim, bias=True,
                         out_bias=True, processor=LowRankKVAttnProcessor())
        attn.kv_a_proj = nn.Linear(dim, kv_lora_rank, bias=False)
        attn.kv_a_norm = nn.RMSNorm(kv_lora_rank, eps=1e-6)
        return attn
    return Attention(query_dim=dim, heads=heads, kv_heads=kv_heads or heads, dim_head=head_dim, bias=True,
                     out_bias=True, processor=StableAudioAttnProcessor2_0())


class MoEFeedForward(nn.Module):
    """The text axis' MixtureOfExperts as a diffusers feed-forward: returns the tokens, keeps the aux loss."""

    def __init__(self, dim: int, num_experts: int, top_k: int, width: int, aux_coef: float) -> None:
        super().__init__()
        from efficientllm.models import EfficientLMConfig
        from efficientllm.models.moe import MixtureOfExperts

        config = EfficientLMConfig(vocab_size=8, hidden_size=dim, intermediate_size=width, num_hidden_layers=1,
                                   num_attention_heads=1, mlp="moe", num_experts=num_experts,
                                   num_experts_per_tok=top_k, moe_intermediate_size=width,
                                   router_aux_loss_coef=aux_coef)
        self.moe = MixtureOfExperts(config)
        self.aux_loss: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out, self.aux_loss = self.moe(hidden_states)  # (B, N, C), scalar
        return out


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the MoE load-balancing losses of the last forward (None for a dense model)."""
    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoEFeedForward) and m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


class VisionDiT(DiTTransformer2DModel):
    """diffusers' DiTTransformer2DModel with the recipe's attention and feed-forward in every block."""

    @register_to_config
    def __init__(self, num_attention_heads: int = 4, attention_head_dim: int = 16, in_channels: int = 1,
                 out_channels: int | None = None, num_layers: int = 2, sample_size: int = 8, patch_size: int = 2,
                 num_embeds_ada_norm: int = 10, attention: str = "mha", kv_heads: int | None = None,
                 kv_lora_rank: int | None = None, mlp: str = "dense", num_experts: int = 4,
                 num_experts_per_tok: int = 2, moe_intermediate_size: int | None = None,
                 router_aux_loss_coef: float = 0.01) -> None:
        super().__init__(num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
                         in_channels=in_channels, out_channels=out_channels or in_channels, num_layers=num_layers,
                         sample_size=sample_size, patch_size=patch_size, num_embeds_ada_norm=num_embeds_ada_norm,
                         norm_type="ada_norm_zero")
        dim = num_attention_heads * attention_head_dim
        width = moe_intermediate_size or expert_width(dim)
        for block in self.transformer_blocks:
            block.attn1 = make_attention(attention, dim, num_attention_heads, kv_heads, kv_lora_rank)
            if mlp == "moe":
                block.ff = MoEFeedForward(dim, num_experts, num_experts_per_tok, width, router_aux_loss_coef)
            block.norm1.emb.class_embedder.dropout_prob = 0.0  # labels are dropped once per image (drop_labels)

    @property
    def num_classes(self) -> int:
        return int(self.config.num_embeds_ada_norm)

    @property
    def null_class(self) -> int:
        """The label of the unconditional embedding (classifier-free guidance)."""
        return self.num_classes

    def get_output_embeddings(self) -> nn.Module:
        """The output head (final adaLN modulation + patch projection): what `freeze` trains above the last blocks."""
        return nn.ModuleList([self.proj_out_1, self.proj_out_2])


def expert_width(dim: int) -> int:
    """SwiGLU expert width with the parameters of diffusers' dense GELU feed-forward (2 x C x 4C = 3 x C x w)."""
    return max(1, round(8 * dim / 3))


def build_dit(recipe: dict[str, Any], shape: DiTShape | None = None) -> VisionDiT:
    """A freshly initialised VisionDiT of `recipe` (default shape: 8x8 greyscale digits, 10 classes)."""
    shape = shape or DiTShape(image_size=8, channels=1, num_classes=10, patch_size=2, hidden_size=64, num_layers=2,
                              num_attention_heads=4)
    return VisionDiT(**dit_kwargs(shape, recipe))


def kv_bytes_per_token(model: VisionDiT, bytes_per_value: int) -> int:
    """Bytes of the keys and values (MLA: the latent) one image token holds over every layer: what the variants
    shrink and what a KV cache would keep (DiT sampling itself re-computes them at every denoising step)."""
    c = model.config
    head_dim = c.attention_head_dim
    if c.attention == "mla":
        per_layer = c.kv_lora_rank
    else:
        per_layer = 2 * (c.kv_heads or c.num_attention_heads) * head_dim
    return per_layer * c.num_layers * bytes_per_value


def attention_shapes(model: VisionDiT) -> dict[str, Any]:
    """The first block's attention projection shapes (out, in) and the KV width per token and layer."""
    attn = model.transformer_blocks[0].attn1
    shapes = {name: tuple(getattr(attn, name).weight.shape) for name in ("to_q", "to_k", "to_v")}
    if hasattr(attn, "kv_a_proj"):
        shapes["kv_a_proj"] = tuple(attn.kv_a_proj.weight.shape)
    return shapes


def describe(model: VisionDiT) -> dict[str, Any]:
    """The row's `extra` description of a variant: its components, their sizes, the attention shapes."""
    c = model.config
    return {"attention": "mqa" if c.attention == "gqa" and c.kv_heads == 1 else c.attention,
            "attention_impl": c.attention, "kv_heads": c.kv_heads if c.attention != "mla" else None,
            "kv_lora_rank": c.kv_lora_rank, "mlp": c.mlp,
            "num_experts": c.num_experts if c.mlp == "moe" else None,
            "num_experts_per_tok": c.num_experts_per_tok if c.mlp == "moe" else None,
            "family": "dit", "patch_size": c.patch_size, "num_layers": c.num_layers,
            "hidden_size": c.num_attention_heads * c.attention_head_dim, "num_attention_heads": c.num_attention_heads,
            "attention_shapes": {k: list(v) for k, v in attention_shapes(model).items()}}
