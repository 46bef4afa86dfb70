"""Provenance of a measured row: code revision, library versions, host and time.

Every row carries what produced it, so numbers from different commits, library versions or
machines are never silently compared. Cheap by design: versions come from installed package
metadata (importing peft alone takes seconds), git is asked read-only, and nothing imports torch.

    python -c "from efficientllm.provenance import provenance; print(provenance())"
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

_PACKAGES = {"torch_version": "torch", "transformers_version": "transformers", "peft_version": "peft"}


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution, from its metadata (no import); None when not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: str | os.PathLike | None) -> str | None:
    # --no-optional-locks: `git status` would otherwise refresh (write) the index of the repo it reads
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """git_sha of HEAD and git_dirty (tracked or untracked, non-ignored changes); None outside a repo."""
    sha = _git(["rev-parse", "HEAD"], cwd)
    if sha is None:
        return {"git_sha": None, "git_dirty": None}
    status = _git(["status", "--porcelain"], cwd)
    return {"git_sha": sha.strip(), "git_dirty": None if status is None else bool(status.strip())}


def provenance(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """git_sha, git_dirty, python/torch/transformers/peft versions, hostname, omp_wait_policy (the process's
    OMP_WAIT_POLICY, lower case; None when unset), timestamp_utc (ISO 8601)."""
    row: dict[str, Any] = git_state(cwd)
    row["python_version"] = platform.python_version()
    for column, distribution in _PACKAGES.items():
        row[column] = package_version(distribution)
    row["hostname"] = socket.gethostname()
    row["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() or None
    row["timestamp_utc"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return row
