"""Parameter-budget sizing: find the value of one shape knob that gives a model a target parameter count.

A fair architecture comparison holds the parameter budget fixed. Given a function that builds a config from a shape
(a dict of transformers' names: hidden_size, num_hidden_layers, intermediate_size, ...), this module searches one
integer knob of that shape (``KNOBS``) until the model's parameter count is as close to the target as the knob's grid
allows. Counts are exact, not formulas: the model is built on the ``meta`` device (no memory, no init work), so any
architecture whose parameter count grows with the knob can be sized, including ones this module knows nothing about.

The budget is counted in **non-embedding** parameters (total minus the ``nn.Embedding`` tables; a tied LM head shares
the table, an untied one counts): the embedding is a lookup, its size follows the vocabulary and the width rather than
the architecture, and at small scale it would otherwise dominate the count (Kaplan et al. 2020 count N the same way).

    python -c "from efficientllm.models.sizing import fit_knob; print(fit_knob(lambda v: 3 * v, 100, start=1))"
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from efficientllm.models.accounting import count_parameters


@dataclass(frozen=True)
class Knob:
    """An integer field of the shape that the search may move; every other field stays as it is."""

    step: Callable[[Mapping[str, Any]], int]
    """Grid step of the knob for a shape (e.g. hidden_size moves in multiples of 2 x num_attention_heads)."""
    doc: str
    """What moving it does, for error messages and the README."""


KNOBS: dict[str, Knob] = {
    "intermediate_size": Knob(lambda shape: 1, "the feed-forward inner width: fine-grained, width and depth unchanged"),
    "num_hidden_layers": Knob(lambda shape: 1, "the number of blocks: coarse, one block per step"),
    "hidden_size": Knob(
        lambda shape: 2 * int(shape.get("num_attention_heads", 1)),
        "the residual width, in steps of 2 x num_attention_heads so that head_dim stays an even integer",
    ),
}
"""Knobs a recipe's ``size_by`` may name."""


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _positive_factor(key: str, factor: Any) -> float:
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"{key} must be a positive number, got {factor!r}")
    return float(factor)


def scale_depth(shape: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """num_hidden_layers x factor, rounded half up, at least 1."""
    factor = _positive_factor("depth_scale", factor)
    return {**shape, "num_hidden_layers": max(1, _round_half_up(shape["num_hidden_layers"] * factor))}


def scale_width(shape: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """Query heads x factor at a fixed head_dim; hidden_size = heads x head_dim.

    An MHA shape (kv heads == heads) keeps kv heads == heads. Otherwise the KV heads stay as they are and the query
    heads round half up to a multiple of them (at least one group), so every scaled shape is a valid GQA / MQA.
    """
    factor = _positive_factor("width_scale", factor)
    hidden, heads = shape["hidden_size"], shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads") or heads
    if hidden % heads:
        raise ValueError(f"width_scale needs hidden_size ({hidden}) divisible by num_attention_heads ({heads})")
    head_dim = hidden // heads
    if kv == heads:
        new_heads = new_kv = max(1, _round_half_up(heads * factor))
    else:
        new_kv = kv
        new_heads = kv * max(1, _round_half_up(heads * factor / kv))
    return {**shape, "hidden_size": new_heads * head_dim, "num_attention_heads": new_heads,
            "num_key_value_heads": new_kv}


SHAPE_SCALES: dict[str, Callable[[Mapping[str, Any], float], dict[str, Any]]] = {
    "depth_scale": scale_depth,
    "width_scale": scale_width,
}
"""Recipe keys that rescale the base shape relative to itself (so one recipe means the same at every model size);
applied before the recipe's absolute keys and before the budget search."""


@dataclass(frozen=True)
class Sizing:
    """The outcome of a budget search; goes into the row's ``extra.sizing``."""

    size_by: str
    """The knob that was searched."""
    value: int
    """Its chosen value."""
    target_non_embedding_params: int
    """The budget."""
    non_embedding_params: int
    """The count at the chosen value."""
    relative_error: float
    """(actual - target) / target."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTS: dict[tuple[type, str], int] = {}


def non_embedding_parameters(model_class: type[nn.Module], config: Any) -> int:
    """Parameters of ``model_class(config)`` minus its nn.Embedding tables, counted on the meta device (exact);
    memoised per config, since a stage resolves the same recipe more than once (validation, then training)."""
    key = (model_class, config.to_json_string(use_diff=False))
    if key not in _COUNTS:
        with torch.device("meta"):
            model = model_class(config)
        counts = count_parameters(model)
        _COUNTS[key] = counts["total"] - counts["embedding"]
    return _COUNTS[key]


def fit_knob(count: Callable[[int], int], target: int, *, start: int, step: int = 1, max_value: int = 1 << 22) -> int:
    """The value on the grid ``start, start + step, ...`` whose ``count`` is closest to ``target`` (ties: the smaller).

    ``count`` must be non-decreasing in the value (true of every knob in KNOBS). Exponential search for the first
    value at or above the target, then bisection, then a look at its neighbour below: O(log n) calls of ``count``.
    """
    if target <= 0:
        raise ValueError(f"the parameter budget must be positive, got {target}")
    if step <= 0 or start <= 0:
        raise ValueError(f"start and step must be positive, got start={start} step={step}")
    memo: dict[int, int] = {}

    def at(i: int) -> int:  # count at grid index i (value start + i * step)
        if i not in memo:
            memo[i] = count(start + i * step)
        return memo[i]

    if at(0) >= target:
        return start
    lo, hi = 0, 1  # invariant: at(lo) < target
    while at(hi) < target:
        lo, hi = hi, hi * 2
        if start + hi * step > max_value:
            raise ValueError(f"no value up to {max_value} reaches {target} parameters")
    while hi - lo > 1:  # at(lo) < target <= at(hi)
        mid = (lo + hi) // 2
        if at(mid) < target:
            lo = mid
        else:
            hi = mid
    best = lo if target - at(lo) <= at(hi) - target else hi
    return start + best * step


def size_to_budget(
    build_config: Callable[[dict[str, Any]], Any],
    model_class: type[nn.Module],
    shape: Mapping[str, Any],
    target: int,
    size_by: str,
    tolerance: float,
) -> tuple[Any, Sizing]:
    """Move ``shape[size_by]`` until the non-embedding parameter count of ``model_class(build_config(shape))`` is as
    close to ``target`` as the knob's grid allows; returns (config, Sizing).

    Raises ValueError naming the knob when it is unknown, or when the best count misses the target by more than
    ``tolerance`` (a fraction): then the knob is too coarse for the budget (e.g. whole layers at a small budget) and
    the recipe should name a finer one.
    """
    if size_by not in KNOBS:
        raise ValueError(f"size_by={size_by!r} is not a sizing knob; allowed: {sorted(KNOBS)}")
    knob = KNOBS[size_by]
    step = knob.step(shape)

    def count(value: int) -> int:
        return non_embedding_parameters(model_class, build_config({**shape, size_by: value}))

    value = fit_knob(count, target, start=step, step=step)
    config = build_config({**shape, size_by: value})
    actual = non_embedding_parameters(model_class, config)
    error = (actual - target) / target
    if abs(error) > tolerance:
        raise ValueError(
            f"sizing by {size_by} ({knob.doc}) gets no closer than {actual:,} non-embedding parameters to the budget "
            f"of {target:,} ({error:+.1%}, tolerance {tolerance:.0%}); size by a finer knob or raise "
            f"param_budget_tolerance"
        )
    return config, Sizing(size_by, value, int(target), int(actual), float(error))
