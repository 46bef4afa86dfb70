"""Training checkpoints and cell guards: resume a killed cell exactly, and stop a cell that runs too long or too big.

A checkpoint holds everything the rest of a training run depends on: the model weights, the optimizer state, the
learning-rate scheduler, the torch RNG state(s), the number of steps done (the batch iterator is a pure function of
(seed, step), so skipping that many batches puts it where it was) and the loss curve so far. Tensors go to
safetensors files, everything else to JSON: nothing is unpickled on resume, so a checkpoint folder cannot run code.

Checkpoints live outside DVC's outs, in `.cache/checkpoints/<stage>/<cell>/<key>/` (gitignored): DVC deletes a
stage's outs before it runs it, which would delete a checkpoint kept there. `key` is a hash of everything that
determines the training trajectory (the cell's params, a fingerprint of its data, the training code and the torch
version), so a checkpoint is only ever resumed by a run that would have reached the same state itself; a checkpoint
under another key (params or code changed since) is stale and deleted by the next save. A checkpoint is written
as a new folder `<key>/step-<n>/` with `atomic_dir` (whole or absent) before the previous one is deleted, so a
kill at any moment leaves at least one whole checkpoint; all are removed once the cell has written its row.

    python -c "from efficientllm.checkpoint import cell_key; print(cell_key({'a': 1}))"
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from efficientllm.atomic import atomic_dir

CHECKPOINT_ROOT = Path(".cache/checkpoints")
"""Where stages keep their checkpoints (relative to the repository root, gitignored)."""
FORMAT_VERSION = 1
RUN_KNOBS = ("checkpoint_every_steps", "timeout_s", "memory_limit_mb", "trials", "trial_seeds")
"""Params of a training section that do not change its trajectory (reliability limits, the trial count: a trial's
seed is in the params itself), so they stay out of the checkpoint key."""


class CellTimeout(RuntimeError):
    """The cell ran longer than its `timeout_s` param; the stage records it as a failed row."""


class CellMemoryExceeded(MemoryError):
    """The process's resident memory passed the cell's `memory_limit_mb` param; recorded as a failed row."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the cell stops and its row says so."""


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_digest(paths: list[Path]) -> str:
    """sha256 over the sources of the given files and folders (every .py beneath a folder), in a fixed order."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.as_posix()).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def cell_key(*parts: Any) -> str:
    """A short hash of JSON-serialisable `parts` (params, digests): the identity of one training trajectory."""
    blob = json.dumps([parts, torch.__version__, FORMAT_VERSION], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class Checkpointer:
    """Save / restore one training cell's state every `every_steps` steps under `root/<key>/step-<n>/`.

    `save` is atomic; `load` returns None when there is no checkpoint for this key. A single process or a DDP
    group checkpoints (every replica holds the whole state: rank 0 saves it, every rank loads the same folder, so
    the group needs one machine or a shared filesystem); an FSDP run does not (it would need every rank's shard).
    """

    def __init__(self, root: Path, key: str, every_steps: int, *, trainable_only: bool = False):
        self.root, self.key, self.every_steps = Path(root), key, int(every_steps)
        # trainable_only: the frozen weights are rebuilt identically by the run itself (same base, same seeded
        # method init), so only the trained ones are saved (a PEFT adapter, or a 4-bit base that cannot be re-read).
        self.trainable_only = trainable_only
        self.path = self.root / key

    def due(self, steps_done: int, total_steps: int) -> bool:
        """After `steps_done` steps: is a checkpoint due? (never after the last step: the row follows at once)"""
        return self.every_steps > 0 and steps_done % self.every_steps == 0 and steps_done < total_steps

    def save(self, steps_done: int, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
             extra: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        named = ({n: p for n, p in model.named_parameters() if p.requires_grad} if self.trainable_only
                 else model.state_dict())
        weights = {k: v.detach().cpu().clone().contiguous() for k, v in named.items()}
        otensors, ometa = _flatten_optimizer(opt)
        otensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            otensors["rng.cuda"] = torch.cuda.get_rng_state()
        state = {"format_version": FORMAT_VERSION, "key": self.key, "steps_done": steps_done, "optimizer": ometa,
                 "scheduler": sched.state_dict(), "saved_unix_s": time.time(), **extra}
        target = self.path / f"step-{steps_done:09d}"
        with atomic_dir(target) as tmp:
            save_file(weights, str(tmp / "model.safetensors"))
            save_file(otensors, str(tmp / "state.safetensors"))
            (tmp / "state.json").write_text(json.dumps(state, allow_nan=True) + "\n")
        for older in self.path.iterdir():  # earlier steps and unfinished temp folders of this key
            if older != target:
                shutil.rmtree(older, ignore_errors=True)
        for stale in self.root.iterdir():  # checkpoints of other keys: params or code changed since
            if stale.is_dir() and stale.name != self.key:
                shutil.rmtree(stale, ignore_errors=True)
        print(f"checkpoint: {steps_done} steps saved to {target}", flush=True)

    def latest(self) -> Path | None:
        """The newest whole checkpoint folder of this key (temp folders start with a dot), or None."""
        done = sorted(p for p in self.path.glob("step-*") if (p / "state.json").exists()) if self.path.is_dir() else []
        return done[-1] if done else None

    def load(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any) -> dict[str, Any] | None:
        """Restore model, optimizer, scheduler and RNG in place; returns the saved JSON state, or None."""
        from safetensors.torch import load_file

        path = self.latest()
        if path is None:
            return None
        state = json.loads((path / "state.json").read_text())
        if state.get("key") != self.key or state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"checkpoint {path}: written for another key / format; delete it")
        device = next(model.parameters()).device
        weights = load_file(str(path / "model.safetensors"), device=str(device))
        if self.trainable_only:
            wanted = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(weights) != wanted:
                raise ValueError(f"checkpoint {path}: its weights are not this model's trainable parameters")
            model.load_state_dict(weights, strict=False)
        else:
            model.load_state_dict(weights, strict=True)
        tensors = load_file(str(path / "state.safetensors"))
        opt.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        print(f"checkpoint: resuming after {state['steps_done']} steps from {path}", flush=True)
        return state


def discard(root: Path) -> None:
    """Remove a cell's checkpoints (after its row is written: ok or failed)."""
    shutil.rmtree(root, ignore_errors=True)


class CellGuard:
    """Per-step checks of a running cell: wall-clock `timeout_s` and resident-memory `memory_limit_mb` (None: off).

    The memory check reads the process's RSS after each step (psutil), so it catches a cell that grows past the
    limit between steps, not a single allocation inside one; on CUDA an out-of-memory raises by itself.
    """

    def __init__(self, timeout_s: float | None, memory_limit_mb: float | None, section: str):
        self.timeout_s, self.memory_limit_mb, self.section = timeout_s, memory_limit_mb, section
        self.t0 = time.perf_counter()
        self._proc = None
        if memory_limit_mb is not None:
            import psutil

            self._proc = psutil.Process()

    def check(self, step: int) -> None:
        if self.timeout_s is not None:
            elapsed = time.perf_counter() - self.t0
            if elapsed > self.timeout_s:
                raise CellTimeout(f"[{self.section}] timeout_s={self.timeout_s:g} exceeded at step {step} "
                                  f"({elapsed:.1f} s elapsed)")
        if self._proc is not None:
            rss_mb = self._proc.memory_info().rss / 2**20
            if rss_mb > self.memory_limit_mb:
                raise CellMemoryExceeded(f"[{self.section}] memory_limit_mb={self.memory_limit_mb:g} exceeded at "
                                         f"step {step} (resident {rss_mb:.0f} MiB)")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files in Python's pickle format: loading one can run arbitrary code, so they are refused."""


def require_safetensors(model_dir: Path, what: str) -> None:
    """Raise FileNotFoundError unless the local model folder `model_dir` holds safetensors weights.

    A folder with only pickle weights (pytorch_model.bin, *.pt) is refused by name: nothing here unpickles a
    checkpoint, so a model folder cannot run code on load (and `trust_remote_code` is never set unless a param asks).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{what}: {model_dir} is not a folder")
    if any(model_dir.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise FileNotFoundError(f"{what}: {model_dir} holds pickle weights ({', '.join(pickles)}), refused: weights "
                                "load only from safetensors (convert them with safetensors.torch.save_file)")
    raise FileNotFoundError(f"{what}: {model_dir} has no weights (*.safetensors)")

