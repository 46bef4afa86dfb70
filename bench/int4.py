"""int4 (bitsandbytes NF4) vs bf16: weight bytes held and decode tokens/s, side by side in one run.

What is measured, for each precision, on the same saved model loaded through the quantize axis's own loaders
(efficientllm.techniques.quantization.PRECISIONS, default QuantizeConfig: double quantization, bf16 compute, bf16
embeddings):
- weight bytes actually held: every parameter, buffer and quantization constant (absmax, code tables), after load
  and again during decode (on the CPU bitsandbytes repacks 4-bit weights on the first forward and keeps the absmax
  in bf16), next to the nominal 16 / 4 = 4x;
- decode speed: greedy requests at batch 1 (the memory-bound regime, where fewer weight bytes should mean faster
  tokens), warm-up first, per-token times from the same logits-processor clock the quantize cells use; decode
  tokens/s = 1 / median per-token decode time, and end-to-end generated tokens/s.

Why this model shape: bitsandbytes quantizes only the decoder's linear layers; embeddings, norms and the LM head
stay in bf16. On the default tiny model (hidden 64, vocab 2048) the embedding is most of the bytes, so int4 can
only shrink it ~1.4x. Here hidden 2048, 4 layers, SwiGLU 5632, vocab 256 (tied): ~206M parameters, 99.7% of them
in linear layers, widths multiples of 64 so every layer takes bitsandbytes' packed CPU kernel. The goal is >= 3.7x
fewer bytes (the limit is 4x: 4 bits per weight plus the absmax constants). Weights are random: bytes and speed do
not depend on their values.

Prints a human table and one JSON line (`{"bench": "int4", ...}`).

    OMP_WAIT_POLICY=PASSIVE python bench/int4.py [--hidden 2048 --layers 4 --intermediate 5632 --requests 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from efficientllm.config import QuantizeConfig  # noqa: E402
from efficientllm.inference import TokenClock, timed_generate  # noqa: E402
from efficientllm.measure import device_name, resolve_device, synchronize  # noqa: E402
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM  # noqa: E402
from efficientllm.techniques.quantization import (  # noqa: E402
    NOMINAL_BITS,
    PRECISIONS,
    logical_param_count,
    weight_bytes,
)


def build(out: Path, args: argparse.Namespace) -> None:
    """A random-init decoder saved in bf16 (what both precisions load)."""
    cfg = EfficientLMConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                            num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                            num_key_value_heads=args.hidden // 128, max_position_embeddings=256,
                            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(0)
    EfficientLMForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)


def measure(model_dir: Path, precision: str, device: torch.device, args: argparse.Namespace) -> dict:
    loaded = PRECISIONS[precision](model_dir, device, QuantizeConfig())
    model = loaded.model
    after_load = weight_bytes(model)["total"]
    prompts = torch.randint(2, args.vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    for _ in range(args.warmup):
        timed_generate(model, prompts, args.new_tokens, device)
    steps, e2e = [], []
    for _ in range(args.requests):
        clock = TokenClock(lambda: synchronize(device))
        timing, _ = timed_generate(model, prompts, args.new_tokens, device, clock=clock)
        steps += timing.decode_s
        e2e.append(timing.e2e_s)
    held = weight_bytes(model)
    result = {
        "precision": precision,
        "dtype": loaded.dtype,
        "params": logical_param_count(model),
        "nominal_bits": NOMINAL_BITS[precision],
        "weight_bytes": held["total"],
        "weight_bytes_after_load": after_load,
        "quantized_bytes": held["quantized"],
        "load_s": loaded.load_s,
        "tpot_s_p50": statistics.median(steps),
        "decode_tokens_per_s": 1.0 / statistics.median(steps),
        "e2e_tokens_per_s": args.new_tokens * len(e2e) / sum(e2e),
        "details": loaded.details,
    }
    del model, loaded
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        t0 = time.perf_counter()
        build(model_dir, args)
        build_s = time.perf_counter() - t0
        rows = {p: measure(model_dir, p, device, args) for p in ("bf16", "int4")}

    bf16, int4 = rows["bf16"], rows["int4"]
    # what bitsandbytes leaves in bf16 (embedding, norms) is the same in both; the rest of bf16's bytes is linear
    unquantized = int4["weight_bytes"] - int4["quantized_bytes"]
    linear_share = (bf16["weight_bytes"] - unquantized) / bf16["weight_bytes"]
    summary = {
        "bench": "int4",
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "shape": {"hidden": args.hidden, "layers": args.layers, "intermediate": args.intermediate,
                  "vocab": args.vocab, "params": bf16["params"]},
        "workload": {"batch": 1, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                     "requests": args.requests, "warmup": args.warmup},
        "bytes_ratio_bf16_over_int4": bf16["weight_bytes"] / int4["weight_bytes"],
        "bytes_ratio_after_load": bf16["weight_bytes_after_load"] / int4["weight_bytes_after_load"],
        "nominal_ratio": NOMINAL_BITS["bf16"] / NOMINAL_BITS["int4"],
        "decode_speedup_int4_over_bf16": int4["decode_tokens_per_s"] / bf16["decode_tokens_per_s"],
        "linear_share_of_bf16_bytes": linear_share,
        "build_s": build_s,
        "rows": rows,
    }
    print(f"int4 (bitsandbytes nf4, double quant) vs bf16 on {summary['device_name']} ({summary['threads']} threads)"
          f"; {bf16['params'] / 1e6:.1f}M params (hidden {args.hidden}, {args.layers} layers, SwiGLU "
          f"{args.intermediate}, vocab {args.vocab}; {linear_share:.1%} of the bf16 bytes in linear layers); batch 1, "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens x {args.requests}")
    print(f"{'precision':<10}{'weight MiB':>12}{'after load':>12}{'load s':>8}{'TPOT ms':>10}{'decode tok/s':>14}"
          f"{'e2e tok/s':>11}")
    for r in rows.values():
        print(f"{r['precision']:<10}{r['weight_bytes'] / 2**20:>12.1f}{r['weight_bytes_after_load'] / 2**20:>12.1f}"
              f"{r['load_s']:>8.1f}{r['tpot_s_p50'] * 1e3:>10.1f}{r['decode_tokens_per_s']:>14.1f}"
              f"{r['e2e_tokens_per_s']:>11.1f}")
    print(f"bytes bf16 / int4: {summary['bytes_ratio_bf16_over_int4']:.2f}x during decode, "
          f"{summary['bytes_ratio_after_load']:.2f}x after load (nominal 4x, goal >= 3.7x); "
          f"decode speed int4 / bf16: {summary['decode_speedup_int4_over_bf16']:.2f}x")
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
