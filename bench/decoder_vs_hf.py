"""Is our decoder as fast as transformers' Llama? Training tokens/s, side by side, same config and weights.

Our `EfficientLMForCausalLM` with gqa attention + RoPE + SwiGLU is the Llama architecture behind swappable
seams; the seams must not cost throughput, or every architecture comparison carries a handicap. This builds
both models from one shape (ours, then `LlamaForCausalLM` with the weights copied over, sdpa attention on
both), and times full training steps (forward, backward, AdamW) on the same seeded batches. Rounds
alternate which model goes first, so drift hits both; the figure is the ratio of median tokens/s,
ours / HF. Goal: >= 1.0.

Shapes: `default` is params.yaml's tiny profile (hidden 64, 2 layers; per-op overhead dominates), `small`
is a model where matmuls dominate (hidden 512, 8 layers, T=256).

    OMP_WAIT_POLICY=PASSIVE python bench/decoder_vs_hf.py [--shape default|small|both] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from efficientllm.measure import device_name, resolve_device, synchronize  # noqa: E402
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM  # noqa: E402

SHAPES = {
    "default": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=2048, seq_len=128, batch_size=8),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=8192, seq_len=256, batch_size=4),
}


def build_pair(shape: dict, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    arch = {k: v for k, v in shape.items() if k not in ("seq_len", "batch_size")}
    torch.manual_seed(0)
    ours = EfficientLMForCausalLM(EfficientLMConfig(**arch, max_position_embeddings=shape["seq_len"],
                                                    tie_word_embeddings=False))
    hf_cfg = LlamaConfig(**arch, max_position_embeddings=shape["seq_len"], rope_theta=ours.config.rope_theta,
                         rms_norm_eps=ours.config.rms_norm_eps, tie_word_embeddings=False, attention_bias=False,
                         mlp_bias=False)
    hf_cfg._attn_implementation = "sdpa"
    hf = LlamaForCausalLM(hf_cfg)
    hf.load_state_dict(ours.state_dict(), strict=True)  # same parameter names: the weights are identical
    return ours.to(device).train(), hf.to(device).train()


def tokens_per_s(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor],
                 device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for b in batches:
        loss = model(input_ids=b, labels=b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
    synchronize(device)
    return sum(b.numel() for b in batches) / (time.perf_counter() - t0)


def run_shape(name: str, rounds: int, steps: int, device: torch.device) -> dict:
    shape = SHAPES[name]
    ours, hf = build_pair(shape, device)
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (ours, hf)}
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, shape["vocab_size"], (shape["batch_size"], shape["seq_len"]), generator=g).to(device)
               for _ in range(steps)]
    with torch.no_grad():  # sanity: same weights, same logits
        x = batches[0][:1]
        torch.testing.assert_close(ours(input_ids=x).logits, hf(input_ids=x).logits, rtol=1e-4, atol=1e-4)
    for m in (ours, hf):
        tokens_per_s(m, opts[m], batches[:2], device)  # warm-up, same shapes
    res = {"ours": [], "hf": []}
    for r in range(rounds):
        order = (("ours", ours), ("hf", hf)) if r % 2 == 0 else (("hf", hf), ("ours", ours))
        for key, m in order:
            res[key].append(tokens_per_s(m, opts[m], batches, device))
    med = {k: statistics.median(v) for k, v in res.items()}
    return {"shape": name, "params": sum(p.numel() for p in ours.parameters()), "ours_tokens_per_s": med["ours"],
            "hf_tokens_per_s": med["hf"], "ratio_ours_hf": med["ours"] / med["hf"], "rounds": rounds,
            "steps": steps, "samples": res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="both", choices=(*SHAPES, "both"))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="training steps per round")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    names = list(SHAPES) if args.shape == "both" else [args.shape]
    results = [run_shape(n, args.rounds, args.steps, device) for n in names]
    print(f"device: {device_name(device)} ({device}), threads {torch.get_num_threads()}")
    print(f"{'shape':<8} {'params':>11} {'ours tok/s':>11} {'HF Llama tok/s':>15} {'ours / HF':>10}")
    for r in results:
        verdict = "meets" if r["ratio_ours_hf"] >= 1.0 else "misses"
        print(f"{r['shape']:<8} {r['params']:>11,} {r['ours_tokens_per_s']:>11,.0f} {r['hf_tokens_per_s']:>15,.0f} "
              f"{r['ratio_ours_hf']:>9.3f}x  ({verdict} the >= 1.0 goal)")
    print(json.dumps({"bench": "decoder_vs_hf", "device": str(device), "device_name": device_name(device),
                      "results": [{k: v for k, v in r.items() if k != "samples"} for r in results]}))


if __name__ == "__main__":
    main()
