"""Per-example quality: every evaluated example's score, kept next to its cell's row (`examples.jsonl`).

A cell's quality (a perplexity, an eval loss, a task accuracy) is a statistic of many examples; keeping each
example's part lets the report test a difference between two cells scored on the same examples with a paired
bootstrap (efficientllm.report.stats), and give each cell's score its own interval. One JSON object per line:

    {"set": "val_ppl", "stat": "exp_ratio", "example": "17", "value": 301.2, "weight": 127}

- `set`: the example set (`val_ppl`, `eval_loss`, `exact_match`, `<task>.<metric>` of lm-eval);
- `stat`: how the set's examples make its statistic: `ratio` = sum(value) / sum(weight) (a mean score with
  weight 1, a mean loss per token with value = loss sum, weight = tokens), `exp_ratio` = exp of that (perplexity);
- `example`: the example's id within the set (a block index, a record id, an lm-eval doc id), the same for every
  cell scored on that set, so two cells pair up by it.

The row's `extra.quality_sets` names the sets whose statistics make its `quality_value` (their mean).

    python -c "from efficientllm.examples import ExampleLog; l = ExampleLog(); l.add('acc', 'ratio', 1, 1.0); \\
        print(l.text())"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

EXAMPLES_FILE = "examples.jsonl"
"""The per-example file next to a cell's row.json (a DVC out of the measured stages)."""
STATS = ("ratio", "exp_ratio")


@dataclass
class ExampleLog:
    """The examples of one cell, in the order they were scored."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, set_name: str, stat: str, example: Any, value: float, weight: float = 1.0) -> None:
        if stat not in STATS:
            raise ValueError(f"example stat {stat!r} is not one of {', '.join(STATS)}")
        self.records.append({"set": set_name, "stat": stat, "example": str(example), "value": float(value),
                             "weight": float(weight)})

    def extend(self, other: ExampleLog | list[dict[str, Any]]) -> None:
        self.records.extend(other.records if isinstance(other, ExampleLog) else other)

    def text(self) -> str:
        """The jsonl text of the file (empty for no examples)."""
        return "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.records)
