"""DVC stage `report`: DuckDB over every row file -> reports/ (index.md, axis pages, figures, CSV / Parquet).

Reads params `report` (title; the user-set price per device-hour and grid intensity behind the cost and CO2
columns) and every row.json under results/ (results/<stage>/<cell>/row.json). A corrupt row file stops the
stage with an error naming it (exit 2) and leaves the previous reports/ in place.

    python -m stages.report
"""

from __future__ import annotations

import time
from pathlib import Path

from stages import run, stage_parser

RESULTS = Path("results")
OUT_DIR = Path("reports")


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("stages.report", __doc__)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    from efficientllm.atomic import atomic_dir
    from efficientllm.config import load_section
    from efficientllm.report.build import build_report
    from efficientllm.report.views import Assumptions

    cfg = load_section(args.params, "report")
    assumptions = Assumptions.from_params(args.params)
    row_files = sorted(RESULTS.rglob("row.json"))  # results/<stage>/<cell>/row.json, or deeper (one folder per trial)
    # Build into a temp dir beside the output, then swap it in: never a half-written reports/.
    with atomic_dir(OUT_DIR) as tmp:
        paths = build_report(row_files, tmp, title=cfg.title, assumptions=assumptions)
    n_figures = sum(name.startswith("figure:") for name in paths)
    print(f"report: {OUT_DIR / 'index.md'} ({len(row_files)} rows, {len(paths) - n_figures} files, "
          f"{n_figures} figures) in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    run(main)
