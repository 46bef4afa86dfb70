"""DVC stage `report`: DuckDB over every row file -> reports/index.md, leaderboards (CSV), all rows.

    python -m stages.report
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from stages import PARAMS_FILE, run

RESULTS = Path("results")
OUT_DIR = Path("reports")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stages.report", description=__doc__)
    ap.add_argument("--params", default=PARAMS_FILE)
    args = ap.parse_args(argv)

    from efficientllm.config import load_section
    from efficientllm.report import build_report

    cfg = load_section(args.params, "report")
    row_files = sorted(RESULTS.glob("*/*/row.json"))
    # Build into a temp dir beside the output, then swap it in: never a half-written reports/.
    tmp = Path(tempfile.mkdtemp(dir=".", prefix=".reports."))
    try:
        paths = build_report(row_files, tmp, title=cfg.title)
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR)
        tmp.rename(OUT_DIR)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"report: {OUT_DIR / 'index.md'} ({len(row_files)} rows; {', '.join(p.name for p in paths.values())})")
    return 0


if __name__ == "__main__":
    run(main)
