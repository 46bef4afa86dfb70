"""DVC stage `report`: DuckDB over every row file -> reports/index.md, leaderboards (CSV), all rows.

    python -m stages.report
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stages import PARAMS_FILE, run

RESULTS = Path("results")
OUT_DIR = Path("reports")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stages.report", description=__doc__)
    ap.add_argument("--params", default=PARAMS_FILE)
    args = ap.parse_args(argv)

    from efficientllm.atomic import atomic_dir
    from efficientllm.config import load_section
    from efficientllm.report.build import build_report

    cfg = load_section(args.params, "report")
    row_files = sorted(RESULTS.glob("*/*/row.json"))
    # Build into a temp dir beside the output, then swap it in: never a half-written reports/.
    with atomic_dir(OUT_DIR) as tmp:
        paths = build_report(row_files, tmp, title=cfg.title)
    print(f"report: {OUT_DIR / 'index.md'} ({len(row_files)} rows; {', '.join(p.name for p in paths.values())})")
    return 0


if __name__ == "__main__":
    run(main)
