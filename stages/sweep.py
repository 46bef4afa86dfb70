"""DVC stages `sweep_attention@<variant>` and `sweep_precision@<precision>`: one scaling map cell, measured.

A cell measures one model over the map's grid of (context length, batch size) points (efficientllm.sweep): TTFT,
TPOT, prefill and decode tokens/s, the KV cache counted from its tensors beside the analytic count, and the largest
batch in `sweep.memory_budget_mib`. `--map attention --line <variant>` builds our decoder with the `variants` recipe
(plus `sweep.variant_overrides`) at `sweep.shape` with random weights; `--map precision --line <precision>` loads
`sweep.precision_model` (or a random-initialised SmolLM2-135M-config Llama) at that precision with the quantization
axis' loaders and its `quantize` settings for 8 / 4 bits. Outputs (declared in dvc.yaml): results/sweep/<map>-<line>/
row.json (one row; the points in `extra.points`, unnested by the report's SQL view `sweep`) and points.jsonl (every
request's TTFT and decode steps, per point).

Bad params exit 2 and write nothing; a precision the device cannot run is a `skipped` row; a cell that fails while
running a `failed` row; both exit 0 (stages.cells.run_cell).

    python -m stages.sweep --map attention --line gqa
    python -m stages.sweep --map precision --line int4
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from stages import run
from stages.cells import cell_args, run_cell

RESULTS_DIR = Path("results/sweep")


def main(argv: list[str] | None = None) -> int:
    ca = cell_args("stages.sweep", __doc__, "sweep", {"--map": "attention | precision",
                                                      "--line": "the cell's variant (attention map) or precision "
                                                                "(precision map) slug"}, argv)
    from efficientllm.config import ConfigError, did_you_mean
    from efficientllm.maps import AXIS, MAPS, attention_recipe
    from efficientllm.measure import resolve_device
    from efficientllm.records import CellId
    from efficientllm.sweep import POINTS_FILE, build_attention, build_precision, sweep_cell
    from efficientllm.techniques.quantization import PRECISIONS, PrecisionUnsupported

    map_name, line, cfg = ca.args.map, ca.args.line, ca.cfg
    if map_name not in MAPS:
        raise ConfigError(f"--map {map_name!r}: unknown map{did_you_mean(map_name, MAPS)} (known: {', '.join(MAPS)})")
    device = resolve_device(cfg.device)
    if map_name == "attention":
        recipe = attention_recipe(line, ca.params.get("variants") or {}, cfg)
        build = functools.partial(build_attention, line, recipe, cfg, device)
    else:
        if line not in PRECISIONS:
            raise ConfigError(f"[matrix] sweep_precision: unknown precision {line!r}{did_you_mean(line, PRECISIONS)} "
                              f"(known: {', '.join(PRECISIONS)})")
        qcfg = ca.load("quantize")  # the 8-bit / 4-bit settings of the quantization axis
        build = functools.partial(build_precision, line, cfg, qcfg, device)
    cell = ca.cell(
        label=f"sweep_{map_name}@{line}",  # the DVC stage name
        identity=CellId(axis=AXIS, stage=f"sweep_{map_name}", cell=f"{map_name}-{line}", technique=line,
                        trial=ca.trial, seed=cfg.seed),
        result_dir=RESULTS_DIR / f"{map_name}-{line}",
        failure_files=lambda status: {POINTS_FILE: ""},
        failed_columns={"extra": {"map": map_name, "line": line, "reference": MAPS[map_name].reference}},
        skip=(PrecisionUnsupported,), summary=_summary)
    return run_cell(cell, lambda dist: sweep_cell(cell=cell.identity, map_name=map_name, line=line, build=build,
                                                  cfg=cfg, device=device))


def _summary(r: dict) -> str:
    points = r["extra"]["points"]
    tpot = " ".join(f"{p['context']}x{p['batch_size']}:{p['tpot_s_p50'] * 1e3:.1f}ms" for p in points
                    if p["status"] == "ok")
    return (f"{r['extra']['points_ok']}/{len(points)} points ok; tpot {tpot}; kv/token "
            f"{json.dumps(r['kv_cache_bytes_per_token'])} B; in {r['duration_s']:.1f}s")


if __name__ == "__main__":
    run(main)
