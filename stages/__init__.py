"""DVC stage scripts: one thin `main(cfg)` per stage; `python -m stages.<name>` runs one.

Importing this package sets the process environment every measured stage needs *before* torch is
imported: OpenMP's wait policy from params `measure.omp_wait_policy` (`apply_omp_wait_policy`; libgomp reads it
once, when torch loads it; every row records it) and offline Hugging Face flags (nothing downloads at run time
unless a profile names a hub source and the user unsets them).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

PARAMS_FILE = os.environ.get("EFFICIENTLLM_PARAMS", "params.yaml")
"""The params file stages read (DVC runs them from the repo root)."""


def params_path(argv: list[str]) -> str:
    """The params file a stage command line names (`--params FILE` / `--params=FILE`), else PARAMS_FILE."""
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--params="):
            return arg.split("=", 1)[1]
    return PARAMS_FILE


def apply_omp_wait_policy(argv: list[str]) -> str | None:
    """Set OMP_WAIT_POLICY from the params file's `measure.omp_wait_policy` (passive / active; inherit leaves the
    environment as it is) and return what is now in effect. Runs at import, before torch: a params file that does
    not parse is left to the stage's own reading of it, which fails with the key and file named."""
    from efficientllm.config import ConfigError, load_section

    try:
        policy = load_section(params_path(argv), "measure").omp_wait_policy
    except (ConfigError, OSError):
        policy = "inherit"
    if policy != "inherit":
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
    return os.environ.get("OMP_WAIT_POLICY")


if "torch" not in sys.modules:  # too late once torch (and libgomp) is loaded: tests calling a main in-process
    apply_omp_wait_policy(sys.argv[1:])


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
