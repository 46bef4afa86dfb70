"""DVC stage scripts: one thin `main(cfg)` per stage; `python -m stages.<name>` runs one.

Importing this package sets the process environment every measured stage needs *before* torch is
imported: OMP_WAIT_POLICY=PASSIVE (without it, libgomp spin-waiting makes CPU step times swing 1-8x
on small machines) and offline Hugging Face flags (nothing downloads at run time unless a profile
names a hub source and the user unsets them).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

PARAMS_FILE = os.environ.get("EFFICIENTLLM_PARAMS", "params.yaml")
"""The params file stages read (DVC runs them from the repo root)."""


def stage_parser(module: str, description: str | None) -> argparse.ArgumentParser:
    """The command line every stage starts from (`--params`); a stage adds its own flags to it."""
    ap = argparse.ArgumentParser(prog=module, description=description)
    ap.add_argument("--params", default=PARAMS_FILE, help="params file (default: $EFFICIENTLLM_PARAMS or params.yaml)")
    return ap


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a stage's main; a bad-input error becomes one line on stderr and exit code 2."""
    from efficientllm.config import ConfigError
    from efficientllm.records import RowError

    try:
        code = main(argv)
    except (ConfigError, RowError, FileNotFoundError, ValueError) as e:
        if os.environ.get("EFFICIENTLLM_DEBUG"):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code or 0)
