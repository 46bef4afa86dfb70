"""The configurable decoder: embed -> L x [norm -> attention -> add, norm -> feed-forward -> add] -> norm -> LM head.

The block never looks at component names: it builds ``ATTENTION[config.attention]`` and ``MLP[config.mlp]``, and the
model builds one ``POSITIONAL[config.positional]`` that it applies to the embeddings (``embed``), to the scores
(``bias``, folded into the mask once per forward) and hands to every attention layer (``rotate``), with the position
ids and the mask, in one ``AttentionInputs``. With "gqa", "rope" and "swiglu" the network is numerically HF Llama, with
the same parameter names.

The classes are transformers ``PreTrainedModel``s: ``generate`` (with ``DynamicCache``), ``save_pretrained``
(safetensors) and ``AutoModelForCausalLM.from_pretrained`` work once ``efficientllm.models`` is imported.

    python -c "from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM as M; \
print(M(EfficientLMConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)))"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Cache, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from efficientllm.models.attention import ATTENTION, AttentionInputs
from efficientllm.models.configuration import EfficientLMConfig
from efficientllm.models.mlp import MLP
from efficientllm.models.positional import POSITIONAL


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (Zhang & Sennrich 2019); identical to LlamaRMSNorm."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def build_attention_mask(
    padding_mask: torch.Tensor | None,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device,
    bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The additive mask every attention kernel takes: causal AND not-padding, plus the positional score bias.

    padding_mask (B, k_len): 1 for real tokens, 0 for padding (left padding in batched generation), covering cached
    and new tokens. Queries are the last ``q_len`` of the ``k_len`` key positions. Returns (B|1, 1|H, q_len, k_len),
    0 where attention is allowed and finfo.min where not, or None when the plain causal mask over q_len == k_len
    suffices (the kernel then uses its own causal path).
    """
    if padding_mask is not None:
        if padding_mask.ndim != 2 or padding_mask.shape[-1] != k_len:
            raise ValueError(
                f"attention_mask must be a 2-D padding mask of shape (batch, past + new tokens) = (B, {k_len}); "
                f"got shape {tuple(padding_mask.shape)}"
            )
        if bool(padding_mask.all()):  # host sync; generate() already drops all-ones masks
            padding_mask = None
    if padding_mask is None and bias is None and q_len == k_len:
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, Tk)
    allowed = (k_pos <= q_pos)[None, None]  # (1, 1, Tq, Tk)
    if padding_mask is not None:
        # A padding query still sees itself, so no row is fully masked: its (unused) output stays finite instead of
        # NaN, and a NaN key at a padded position cannot leak into real rows through 0 * NaN.
        visible = padding_mask.bool()[:, None, None, :] | (k_pos == q_pos)[None, None]  # (B, 1, Tq, Tk)
        allowed = allowed & visible
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    if bias is not None:
        mask = mask + bias.to(dtype)  # (B|1, H, Tq, Tk)
    return mask


def default_position_ids(
    padding_mask: torch.Tensor | None, q_len: int, past_len: int, device: torch.device
) -> torch.Tensor:
    """Positions of the new tokens: counted over real tokens only when a padding mask is given (so a left-padded
    row gets the same positions as the unpadded sequence), else past_len .. past_len + q_len - 1."""
    if padding_mask is not None:
        return (padding_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]  # (B, T)
    return torch.arange(past_len, past_len + q_len, device=device)[None]  # (1, T)


class DecoderBlock(GradientCheckpointingLayer):
    """Pre-norm residual block; returns the new hidden states and the feed-forward's aux loss (or None)."""

    def __init__(self, config: EfficientLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = ATTENTION[config.attention](config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP[config.mlp](config)

    def forward(
        self, hidden: torch.Tensor, inputs: AttentionInputs, past_key_values: Cache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), inputs, past_key_values)  # (B, T, C)
        update, aux_loss = self.mlp(self.post_attention_layernorm(hidden))
        return hidden + update, aux_loss


@dataclass
class EfficientLMModelOutput(BaseModelOutputWithPast):
    """BaseModelOutputWithPast plus ``aux_loss``: the summed auxiliary losses of all layers (None for dense)."""

    aux_loss: torch.Tensor | None = None


@dataclass
class EfficientLMCausalLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus ``aux_loss`` (already included in ``loss`` when labels are given)."""

    aux_loss: torch.Tensor | None = None


class EfficientLMPreTrainedModel(PreTrainedModel):
    config_class = EfficientLMConfig
    config: EfficientLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    # The kernel is chosen by config.attn_kernel; this flag only lets transformers accept attn_implementation="sdpa".
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Linear and Embedding: normal(0, initializer_range), padding row zeroed; RMSNorm: ones (Llama's scheme).
        super()._init_weights(module)
        reset = getattr(module, "reset_extra_parameters", None)
        if reset is not None:  # hook for anything else: every Component (component.py) and NSA's compressors
            reset(self.config.initializer_range)


class EfficientLMModel(EfficientLMPreTrainedModel):
    """The decoder stack without the LM head; returns the final-normed hidden states."""

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__(config)
        config.check()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.positional = POSITIONAL[config.positional](config)
        self.layers = nn.ModuleList(DecoderBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> EfficientLMModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions is not supported by EfficientLM")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        q_len = hidden.shape[1]

        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        k_len = past_len + q_len
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, q_len, past_len, hidden.device)

        hidden = self.positional.embed(hidden, position_ids)
        bias = self.positional.bias(q_len, k_len)  # (1, H, Tq, Tk) or None
        mask = build_attention_mask(attention_mask, q_len, k_len, hidden.dtype, hidden.device, bias)
        inputs = AttentionInputs(self.positional, position_ids, mask)  # the same for every layer

        all_hidden = [hidden] if output_hidden_states else None
        aux_loss = None
        for layer in self.layers:
            # past_key_values by keyword: under gradient checkpointing transformers drops it (a replayed forward
            # must not write the cache twice)
            hidden, layer_aux = layer(hidden, inputs, past_key_values=past_key_values)
            if layer_aux is not None:
                aux_loss = layer_aux if aux_loss is None else aux_loss + layer_aux
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden  # HF convention: the last entry is the normed output

        return EfficientLMModelOutput(
            last_hidden_state=hidden,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            aux_loss=aux_loss,
        )


class EfficientLMForCausalLM(EfficientLMPreTrainedModel, GenerationMixin):
    """EfficientLMModel + LM head. loss = shifted token cross-entropy (ignore_index -100) + the layers' aux losses."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # applied only if tie_word_embeddings

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__(config)
        self.model = EfficientLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> EfficientLMCausalLMOutput:
        """``logits_to_keep``: 0 keeps all positions, n > 0 the last n (generate passes 1), a tensor the given indices.
        Extra ``kwargs`` (e.g. ``num_items_in_batch`` from the Trainer) go to the loss."""
        kwargs.pop("return_dict", None)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=kwargs.pop("output_attentions", None),
        )
        hidden = out.last_hidden_state  # (B, T, C)
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)  # (B, T', V)

        loss = None
        if labels is not None:
            # transformers' causal-LM loss: shift by one, fp32 cross-entropy, ignore_index=-100, and the Trainer's
            # num_items_in_batch normalisation under gradient accumulation.
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            if out.aux_loss is not None:
                loss = loss + out.aux_loss

        return EfficientLMCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            aux_loss=out.aux_loss,
        )
