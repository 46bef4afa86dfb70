"""SFT sources: slug -> function returning normalised records, from the hub, local files or the embedded generator.

Why: a dataset spec in params (`sft.datasets.<name>: {source: <slug>, **kwargs}`) names one source and its keyword
arguments; `load_sft_source` checks both and returns records in the one OpenO1 form (efficientllm/data/sft.py), so
the prepare_sft stage treats every source alike.
- `openo1`: OpenO1-SFT (hub `O1-OPEN/OpenO1-SFT`, one jsonl; columns `instruction`, `output`) from the hub id or
  local .jsonl / .json / .parquet files.
- `medical_o1`: medical-o1-reasoning-SFT (hub `FreedomIntelligence/medical-o1-reasoning-SFT`, configs en, zh,
  en_mix, zh_mix; JSON arrays of `Question`, `Complex_CoT`, `Response`); the target is built from CoT + response in
  the same Thought/Output form.
- `arith`, `arith_medical`: the embedded offline generator (efficientllm/data/arith.py).
Local files: one file, a folder (its own .jsonl / .json / .parquet files, sorted) or a list; a leading UTF-8
byte-order mark is dropped. Errors (`SFTDataError`) name the file and the line or index, or the hub id.

    python -c "from efficientllm.data.sft_sources import load_sft_source as l; \
print(len(l({'source': 'openo1', 'path': '../shared/data/openo1_format_sample.jsonl'}, seed=0)))"
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from efficientllm.data.arith import arith, arith_medical
from efficientllm.data.files import expand_paths
from efficientllm.data.sft import READERS, SFTDataError, medical_mcq_record, medical_o1_record, openo1_record

OPENO1_HUB_ID = "O1-OPEN/OpenO1-SFT"
MEDICAL_O1_HUB_ID = "FreedomIntelligence/medical-o1-reasoning-SFT"
MEDICAL_O1_CONFIGS = ("en", "zh", "en_mix", "zh_mix")


def _read_files(path: str | Sequence[str], label: str) -> list[tuple[str, Any]]:
    """(where, row) of every row of the files `path` names, files in order."""
    rows: list[tuple[str, Any]] = []
    for f in expand_paths(path, tuple(READERS), label=label, recursive=False, error=SFTDataError):
        rows.extend(READERS[f.suffix](f))
    return rows


def _read_hub(hub_id: str, *, config: str | None, split: str, revision: str | None,
              data_files: str | Sequence[str] | None) -> list[tuple[str, Any]]:
    """Rows of a hub dataset through `datasets.load_dataset` (needs network or the local HF cache)."""
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, name=config, split=split, revision=revision,
                                   data_files=list(data_files) if isinstance(data_files, list | tuple) else data_files)
    except Exception as e:  # offline, unknown id, missing config: one clear line, the cause chained
        raise SFTDataError(
            f"hub dataset {hub_id!r} (config {config!r}, revision {revision!r}) could not be loaded: "
            f"{type(e).__name__}: {e}. Offline runs need `path:` to local files."
        ) from e
    label = f"hub {hub_id}" + (f"[{config}]" if config else "")
    return [(f"{label} row {i}", row) for i, row in enumerate(ds)]


def _take(rows: list[tuple[str, Any]], max_examples: int | None) -> list[tuple[str, Any]]:
    if max_examples is not None:
        if max_examples < 1:
            raise SFTDataError(f"max_examples must be >= 1 or null, got {max_examples}")
        rows = rows[:max_examples]
    if not rows:
        raise SFTDataError("the source has no rows")
    return rows


def openo1(*, path: str | list[str] | None = None, hub_id: str = OPENO1_HUB_ID, revision: str | None = None,
           split: str = "train", data_files: str | list[str] | None = None, max_examples: int | None = None,
           answer_from_output: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """OpenO1-SFT: local files when `path` is set (jsonl, JSON array or parquet), else the hub dataset. With
    `answer_from_output`, each record's <Output> text is its answer (exact match of the fine-tuned model's)."""
    del seed  # the rows are read in file order; the split is seeded later
    rows = _read_files(path, "openo1") if path is not None else _read_hub(
        hub_id, config=None, split=split, revision=revision, data_files=data_files)
    return [openo1_record(row, where, i, answer_from_output=answer_from_output)
            for i, (where, row) in enumerate(_take(rows, max_examples))]


def medical_o1(*, path: str | list[str] | None = None, hub_id: str = MEDICAL_O1_HUB_ID, config: str = "en",
               revision: str | None = None, split: str = "train", data_files: str | list[str] | None = None,
               max_examples: int | None = None, mcq: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """medical-o1-reasoning-SFT: local files when `path` is set, else the hub dataset's `config` (en, zh, en_mix,
    zh_mix). Extra fields (options, Ground-True Answer, ...) are ignored, unless `mcq`: then every row must be a
    multiple-choice question (`question`, `options`, `answer_idx`; medical_mcq_record) and is scored by letter."""
    del seed
    if config not in MEDICAL_O1_CONFIGS:
        raise SFTDataError(f"medical_o1: config {config!r} is not one of {', '.join(MEDICAL_O1_CONFIGS)}")
    rows = _read_files(path, "medical_o1") if path is not None else _read_hub(
        hub_id, config=config, split=split, revision=revision, data_files=data_files)
    record = medical_mcq_record if mcq else medical_o1_record
    return [record(row, where, i) for i, (where, row) in enumerate(_take(rows, max_examples))]


SFT_SOURCES: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "arith": arith,
    "arith_medical": arith_medical,
    "openo1": openo1,
    "medical_o1": medical_o1,
}
"""Source slug -> function(**spec, seed) returning normalised records. A dataset spec in params names one."""


def load_sft_source(spec: Mapping[str, Any], seed: int, where: str = "dataset") -> list[dict[str, Any]]:
    """The records of one dataset spec `{source: <slug>, **kwargs}`; unknown slugs and keys raise SFTDataError."""
    if not isinstance(spec, Mapping):
        raise SFTDataError(f"{where}: expected a mapping with a `source` key, got {spec!r}")
    spec = dict(spec)
    slug = spec.pop("source", None)
    if slug not in SFT_SOURCES:
        raise SFTDataError(f"{where}: source {slug!r} is not one of {', '.join(SFT_SOURCES)}")
    fn = SFT_SOURCES[slug]
    allowed = set(inspect.signature(fn).parameters) - {"seed"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SFTDataError(
            f"{where}: unknown key {unknown[0]!r} for source {slug} (allowed: {', '.join(sorted(allowed))})")
    return fn(**spec, seed=seed)
