"""Quality of a model at one precision: held-out perplexity, and task scores through lm-evaluation-harness.

- `perplexity`: mean token loss over the first `n_blocks` blocks of the pretraining corpus's held-out split, the
  same tokens for every precision (so the numbers compare), loss computed in fp32 from the model's logits.
- `run_tasks`: `lm_eval.simple_evaluate` on an `HFLM` wrapped around the model already in memory (no reload, so
  the quantized weights are the ones scored), with the task YAMLs of the repository's `tasks/` folder
  (`task_configs` reads them and points their `data_files` at absolute local paths) and, for task names that are
  not there, lm-eval's own registry (e.g. the Open LLM Leaderboard v2 tasks of the paper-scale profile). The batch
  size is pinned: padding changes what a batched forward computes, so a score is only reproducible at one batch
  size, and the row records it. Each task contributes its primary metric; the quality score is their mean.

    python -c "from efficientllm.evaluation import task_configs; print(task_configs(['efficientllm_cloze'], 'tasks'))"
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import yaml
from torch import nn

from efficientllm.examples import ExampleLog
from efficientllm.measure import synchronize


@torch.no_grad()
def perplexity(model: nn.Module, val_blocks: np.ndarray, *, n_blocks: int, batch_size: int,
               device: torch.device, examples: ExampleLog | None = None) -> dict[str, Any]:
    """Mean next-token loss (nats) and perplexity over the first n_blocks held-out blocks (fewer if there are fewer).

    The loss is computed here, in fp32 from the logits, so every precision is scored by the same arithmetic.
    `examples`: each block's loss sum and target count is added to it (set `val_ppl`).
    """
    n = min(len(val_blocks), n_blocks)
    if n == 0:
        raise ValueError("no held-out blocks for perplexity")
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        batch = torch.as_tensor(np.asarray(val_blocks[start:min(start + batch_size, n)]).astype(np.int64)).to(device)
        logits = model(input_ids=batch, use_cache=False).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += batch[:, 1:].numel()
        if examples is not None:
            per_block = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch[:, 1:],
                                                          reduction="none").sum(dim=1)
            for j, loss_sum in enumerate(per_block.tolist()):
                examples.add("val_ppl", "exp_ratio", start + j, loss_sum, batch.shape[1] - 1)
    synchronize(device)
    mean = total / count
    return {"eval_loss": mean, "val_ppl": math.exp(mean) if mean < 700 else None, "ppl_tokens": count,
            "ppl_blocks": n}


# ----------------------------------------------------------------------------- lm-eval


def local_task_files(tasks_dir: str | Path) -> dict[str, Path]:
    """Task name -> YAML file, for every `*.yaml` in tasks_dir that defines a `task:`."""
    found: dict[str, Path] = {}
    for path in sorted(Path(tasks_dir).glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
            found[cfg["task"]] = path
    return found


def task_configs(names: Sequence[str], tasks_dir: str | Path,
                 data_files: Mapping[str, str] | None = None) -> list[dict[str, Any] | str]:
    """What simple_evaluate gets for each task: the repository YAML as a dict with absolute data paths, or the
    plain name for a task lm-eval knows itself.

    A task's local data files are resolved against the working directory (the repository root in a stage), or
    replaced by `data_files[name]` for every split. A file that does not exist raises FileNotFoundError naming the
    task, before lm-eval starts.
    """
    data_files = dict(data_files or {})
    local = local_task_files(tasks_dir)
    unknown = sorted(set(data_files) - set(local))
    if unknown:
        raise ValueError(f"eval.data_files names {unknown[0]!r}, which is not a task YAML in {tasks_dir}")
    out: list[dict[str, Any] | str] = []
    for name in names:
        if name not in local:
            out.append(name)
            continue
        cfg = yaml.safe_load(local[name].read_text(encoding="utf-8"))
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        if isinstance(files, Mapping):
            resolved = {}
            for split, path in files.items():
                p = Path(data_files.get(name, path)).resolve()
                if not p.is_file():
                    raise FileNotFoundError(f"task {name}: data file {p} (split {split}) does not exist")
                resolved[split] = str(p)
            cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": resolved}
        out.append(cfg)
    return out


@dataclass
class TaskScores:
    primary: dict[str, float | None]
    """Task -> its primary metric."""
    all_metrics: dict[str, dict[str, Any]]
    """Task -> every metric lm-eval reported (stderr included)."""
    n_docs: dict[str, int | None]
    eval_s: float
    settings: dict[str, Any] = field(default_factory=dict)
    examples: ExampleLog = field(default_factory=ExampleLog)
    """Every scored document's primary metric (set `<task>.<metric>`, example = lm-eval's doc_id)."""

    @property
    def quality_value(self) -> float | None:
        """Mean of the primary metrics; None if any is missing."""
        values = list(self.primary.values())
        if not values or any(v is None for v in values):
            return None
        return math.fsum(values) / len(values)

    def quality_metric(self, metrics: Mapping[str, str]) -> str:
        names = [f"{t}.{metrics[t]}" for t in self.primary]
        return names[0] if len(names) == 1 else f"mean({','.join(names)})"


def _metric_value(task_result: Mapping[str, Any], metric: str) -> float | None:
    """`<metric>,none`, else `<metric>,<filter>` when exactly one filter produced it."""
    if f"{metric},none" in task_result:
        value = task_result[f"{metric},none"]
    else:
        keys = [k for k in task_result if k.startswith(f"{metric},") and "stderr" not in k]
        if len(keys) != 1:
            return None
        value = task_result[keys[0]]
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def run_tasks(model: nn.Module, tokenizer: Any, *, tasks: Sequence[str], metrics: Mapping[str, str],
              tasks_dir: str | Path, device: torch.device, batch_size: int, limit: int | None = None,
              num_fewshot: int | None = None, data_files: Mapping[str, str] | None = None,
              apply_chat_template: bool = False, seed: int = 1234) -> TaskScores:
    """Score the in-memory `model` on `tasks` with lm_eval.simple_evaluate; see the module docstring."""
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    missing = [t for t in tasks if t not in metrics]
    if missing:
        raise ValueError(f"task {missing[0]!r} has no primary metric (eval.metrics)")
    configs = task_configs(tasks, tasks_dir, data_files)
    # lm-eval's own registry (thousands of YAMLs, seconds to index) only when a task is not in the repository.
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=any(isinstance(c, str) for c in configs))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size, device=str(device))
    t0 = time.perf_counter()
    # simple_evaluate ends by dumping the environment (`pip list` in a subprocess, ~2 s per call); the row carries
    # its own provenance, so that dump is skipped.
    with mock.patch.object(lm_eval.evaluator, "add_env_info", lambda results: None):
        out = lm_eval.simple_evaluate(
            model=lm, tasks=configs, num_fewshot=num_fewshot, limit=limit, log_samples=True, bootstrap_iters=0,
            task_manager=manager, apply_chat_template=apply_chat_template, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
    eval_s = time.perf_counter() - t0
    results = out["results"]
    n_samples = out.get("n-samples", {})
    primary, every, n_docs = {}, {}, {}
    for name in tasks:
        res = results.get(name, {})
        primary[name] = _metric_value(res, metrics[name])
        every[name] = {k: v for k, v in res.items() if k not in ("alias", "name", "sample_len")}
        n_docs[name] = (n_samples.get(name) or {}).get("effective", res.get("sample_len"))
    settings = {"batch_size": batch_size, "limit": limit, "num_fewshot": num_fewshot,
                "apply_chat_template": apply_chat_template, "lm_eval_version": lm_eval.__version__,
                "tasks": list(tasks), "metrics": {t: metrics[t] for t in tasks}}
    return TaskScores(primary, every, n_docs, eval_s, settings, examples=task_examples(out.get("samples", {}), tasks,
                                                                                   metrics))


def task_examples(samples: Mapping[str, Sequence[Mapping[str, Any]]], tasks: Sequence[str],
                  metrics: Mapping[str, str]) -> ExampleLog:
    """lm-eval's logged samples as examples: each document's primary metric, by doc_id (the same documents, in the
    same order, for every model scored with the same settings)."""
    log = ExampleLog()
    for name in tasks:
        metric = metrics[name]
        for sample in samples.get(name, ()):
            value = sample.get(metric)
            if isinstance(value, int | float) and math.isfinite(value):
                log.add(f"{name}.{metric}", "ratio", sample.get("doc_id"), float(value))
    return log
