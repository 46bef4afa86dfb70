"""Multi-process training: one process per device under torchrun, DDP or FSDP, and one row for all of them.

Why here: the pretraining and fine-tuning loops stay one loop each. With one process everything below is the
identity; under torchrun (WORLD_SIZE > 1) each rank trains on its shard of every global batch, so the token budget,
the batch order, the schedule and the loss are those of a single-process run with the same global batch (DDP
averages gradients over ranks; a rank's mean loss over an equal share of the tokens averages to the global mean;
fine-tuning, whose ranks hold unequal numbers of response tokens, weights each rank's loss by its share, see
efficientllm.finetune).

How the ranks become one row (`aggregate_windows`): time is rank 0's (its step latencies and window length;
every step ends in a collective, so rank 0's clock is the group's); throughput is the global tokens over rank
0's window; memory (AMU bytes, peak) and energy are summed over devices, counting a shared meter once (host RAM
for `rss` sampling, the package counter for `rapl`); utilisation is the mean over devices; `device_count` is the
world size.

Backends: nccl on CUDA (a rank's device is cuda:LOCAL_RANK), gloo on the CPU (what the tests run). Parallelism:
`ddp` replicates the model (DistributedDataParallel); `fsdp` shards parameters, gradients and optimizer state
(FSDP2 `fully_shard`, one unit per decoder block) for the shapes whose replicas do not fit.

A stage with `nproc_per_node > 1` starts its ranks itself (stages.cells.launch_ranks, the same launcher for every
stage); this module is what each rank runs:

    torchrun --standalone --nproc_per_node 2 -m stages.pretrain --variant mha   # what the stage launches itself
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from efficientllm.config import ConfigError
from efficientllm.measure.device import resolve_device

PARALLELISM = ("ddp", "fsdp")
"""Ways to spread a model over ranks (`pretrain.parallelism`, `finetune.parallelism`)."""

TORCHRUN_ENV = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")
"""Variables torchrun sets in every worker; the stage's launcher checks them to never launch itself twice."""


def under_torchrun(environ: dict[str, str] | None = None) -> bool:
    """True inside a process that torchrun (or another launcher setting RANK / WORLD_SIZE) started."""
    env = os.environ if environ is None else environ
    return any(k in env for k in TORCHRUN_ENV) or ("RANK" in env and "WORLD_SIZE" in env)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the group; a single process is rank 0 of a world of 1."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    """nccl | gloo, None for a single process (no process group)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over ranks (every rank gets it), as a Python float."""
        if not self.distributed:
            return float(value)
        t = value.detach().float().reshape(1).to(self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)  # gloo has no AVG
        return float(t) / self.world_size

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of a list of numbers over ranks (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's picklable `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's picklable `obj`, in rank order, on rank 0 (None on the others)."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (B, T) -> (B / world, T)."""
        if not self.distributed:
            return batch
        per_rank, rem = divmod(batch.shape[0], self.world_size)
        if rem:
            raise ValueError(f"a batch of {batch.shape[0]} sequences does not split over {self.world_size} ranks")
        return batch[self.rank * per_rank:(self.rank + 1) * per_rank]

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def single_process(device: str | torch.device = "auto") -> DistContext:
    """The context of a plain (not distributed) run on `device`."""
    return DistContext(rank=0, world_size=1, local_rank=0, device=resolve_device(device), backend=None)


def init_distributed(device: str = "auto", section: str = "pretrain") -> DistContext:
    """Join the process group torchrun set up (env://), or return the single-process context outside torchrun.

    On CUDA each rank takes cuda:LOCAL_RANK (nccl); on the CPU all ranks use gloo. `device` is the params value of
    `section`: `cuda:N` is refused under several ranks (each rank's device comes from LOCAL_RANK).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return single_process(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    spec = str(device).strip().lower()
    if spec.startswith("cuda:"):
        raise ConfigError(f"[{section}] device: {device!r} names one GPU, but {world} ranks run; use cuda or auto")
    kind = resolve_device(spec).type
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank {rank}: LOCAL_RANK {local_rank} but {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
        dist.init_process_group(backend, device_id=dev)
    else:
        dev, backend = torch.device("cpu"), "gloo"
        dist.init_process_group(backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (a no-op for a single process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


# --- batches ----------------------------------------------------------------------------------------------------


def micro_batching(batch_size: int, world_size: int, micro_batch_size: int | None,
                   section: str = "pretrain") -> tuple[int, int]:
    """(sequences per forward on one device, forwards per optimizer step) for a global `batch_size`.

    None: one forward per step of batch_size / world_size sequences (no gradient accumulation).
    """
    per_rank, rem = divmod(batch_size, world_size)
    if rem or per_rank == 0:
        raise ConfigError(f"[{section}] batch_size={batch_size} must be a multiple of the {world_size} ranks")
    micro = per_rank if micro_batch_size is None else micro_batch_size
    if per_rank % micro:
        raise ConfigError(
            f"[{section}] micro_batch_size={micro} must divide batch_size / ranks = {batch_size} / {world_size}"
        )
    return micro, per_rank // micro


# --- the model --------------------------------------------------------------------------------------------------


def _may_skip_parameters(model: nn.Module) -> bool:
    """Whether a step can leave parameters without a gradient: routed experts (modules that report inactive
    parameters, see models.accounting) may receive no token in a step, and DDP must then look for unused ones."""
    return any(m.inactive_parameters() > 0 for m in model.modules() if hasattr(m, "inactive_parameters"))


def wrap_model(model: nn.Module, ctx: DistContext, parallelism: str = "ddp",
               param_dtype: torch.dtype | None = None, section: str = "pretrain") -> nn.Module:
    """The module to train: `model` itself for one process, a DDP replica, or `model` sharded in place (FSDP).

    FSDP: every module whose class is in the model's `_no_split_modules` (transformers' name for its blocks)
    becomes one unit, then the root; `param_dtype` (bf16) is the all-gather / compute dtype, gradients are
    reduced in fp32. Build the optimizer after this call: FSDP replaces the parameters by sharded ones. Parameters
    still on the host are moved to the rank's device unit by unit as they are sharded, so a model loaded on the
    host never has to fit one device whole. Frozen parameters (PEFT) may share a unit with trainable ones:
    FSDP2 all-gathers them and reduce-scatters gradients of the trainable ones only.
    """
    if parallelism not in PARALLELISM:
        raise ConfigError(f"[{section}] parallelism: {parallelism!r} is not one of {', '.join(PARALLELISM)}")
    if not ctx.distributed:
        return model
    if parallelism == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=_may_skip_parameters(model))
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mp_policy": policy} if policy is not None else {}
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True for a model that `wrap_model` sharded with FSDP (its parameters are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients over ranks in this forward/backward only when `enabled` (the last micro-batch of a step)."""
    if hasattr(model, "no_sync") and not enabled:  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    yield


def full_state_dict(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0's CPU (a collective for FSDP: every rank calls it); None elsewhere."""
    if not is_sharded(model):
        inner = getattr(model, "module", model)
        return inner.state_dict() if ctx.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if ctx.is_main else None


def unsharded_copy(model: nn.Module, model_cls: type, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plain CPU `model_cls` (not distributed) holding `state_dict`, built without a random init.

    `model` is the sharded original: buffers that are not in a state dict (e.g. RoPE frequencies) are copied from
    it, since FSDP leaves buffers whole on every rank.
    """
    with torch.device("meta"):
        fresh = model_cls(model.config)
    fresh.to_empty(device="cpu")
    if hasattr(fresh, "tie_weights"):  # to_empty gave tied matrices (embedding = LM head) a tensor each
        fresh.tie_weights()
    fresh.load_state_dict(state_dict)
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, buf in fresh.named_buffers():
            buf.copy_(buffers[name])
    return fresh


# --- one row from every rank's window ---------------------------------------------------------------------------


def window_payload(result: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    """A rank's window result plus what aggregation needs to tell shared meters apart."""
    return {**result, "rank": ctx.rank, "host": socket.gethostname(), "device": str(ctx.device)}


def _source(values: list[Any]) -> str | None:
    known = sorted({v for v in values if v})
    return "+".join(known) if known else None


def _sum(values: list[Any]) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))


def _pool(p: dict[str, Any], source: str | None) -> tuple:
    """The meter a reading comes from: host-wide meters (host RAM for `rss`, package energy for `rapl`) are
    shared by the ranks of one host and count once; device meters and per-process estimates count per rank."""
    if source in ("rss", "rapl"):
        return (p["host"],)
    if source in ("nvml", "torch"):
        return (p["host"], p["device"])
    return (p["rank"],)


def aggregate_windows(payloads: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One set of window columns (measure.window.WINDOW_COLUMNS) from every rank's, rank 0 first."""
    if not payloads:
        raise ValueError("aggregate_windows: no window results")
    payloads = sorted(payloads, key=lambda p: p.get("rank", 0))
    first = payloads[0]
    if len(payloads) == 1:
        return {k: v for k, v in first.items() if k not in ("rank", "host", "device")}
    window_s = first["window_s"]

    # AMU: bytes add up; the ratio is of the memory they share (each device's, or a host's RAM once).
    amu = [p.get("amu_bytes") for p in payloads]
    amu_bytes = _sum(amu)
    totals: dict[tuple, float] = {}
    for p in payloads:
        b, r = p.get("amu_bytes"), p.get("amu_ratio")
        if b is not None and r:
            totals.setdefault(_pool(p, p.get("amu_source")), b / r)
    amu_ratio = amu_bytes / sum(totals.values()) if amu_bytes is not None and len(totals) and all(
        p.get("amu_ratio") for p in payloads) else None

    pcu = [p.get("pcu_ratio") for p in payloads]
    pcu_ratio = None if any(v is None for v in pcu) else sum(pcu) / len(pcu)

    energy: dict[tuple, float | None] = {}
    for p in payloads:
        energy.setdefault(_pool(p, p.get("energy_source")), p.get("energy_j"))
    energy_j = _sum(list(energy.values()))
    aec = energy_j / window_s if energy_j is not None and window_s else None
    return {
        "amu_bytes": amu_bytes,
        "amu_ratio": amu_ratio,
        "amu_source": _source([p.get("amu_source") for p in payloads]),
        "pcu_ratio": pcu_ratio,
        "pcu_source": _source([p.get("pcu_source") for p in payloads]),
        "other_cpu_cores": None,  # each rank counts the others as other processes: not a measure of other load
        "peak_mem_bytes": _sum([p.get("peak_mem_bytes") for p in payloads]),
        "peak_mem_source": _source([p.get("peak_mem_source") for p in payloads]),
        "energy_j": energy_j,
        "energy_source": _source([p.get("energy_source") for p in payloads]),
        "aec_w": aec if aec is None or math.isfinite(aec) else None,
        "window_s": window_s,
    }


def per_device_summary(payloads: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-rank figures kept in a row's `extra`, so a sum can be checked against its parts."""
    keys = ("rank", "host", "device", "amu_bytes", "peak_mem_bytes", "pcu_ratio", "energy_j", "window_s")
    return [{k: p.get(k) for k in keys} for p in sorted(payloads, key=lambda p: p.get("rank", 0))]
