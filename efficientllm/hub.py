"""Which commit a hub reference stands for: the provenance of anything read from the Hugging Face hub.

A profile pins a model or dataset by commit sha where it can; where it names a branch (`main`) or nothing, the
stage that reads it asks the hub which commit that was at read time and records the answer, so a row says exactly
what it measured even when the params did not pin it. Offline (HF_HUB_OFFLINE=1, the default of every stage) or
when the hub cannot be asked, the answer is None: the row then records the reference as written, never a guess.

    python -c "from efficientllm.hub import hub_commit; print(hub_commit('Qwen/Qwen2.5-7B', 'main'))"
"""

from __future__ import annotations

import re

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
"""A full git commit sha: the only revision that cannot move."""


def is_commit(revision: str | None) -> bool:
    """True for a full 40-hex commit sha (a branch, a tag, a short sha or None can point elsewhere later)."""
    return bool(revision) and bool(COMMIT_RE.match(str(revision)))


def hub_commit(repo_id: str, revision: str | None, repo_type: str = "model") -> str | None:
    """The commit sha `revision` (branch, tag or sha; None: the default branch) of `repo_id` resolves to now.

    A full sha is returned as it is, without asking; otherwise the hub is asked once (`repo_type`: model |
    dataset). None when it cannot answer: offline mode, no network, an unknown or gated repository.
    """
    if is_commit(revision):
        return str(revision)
    try:
        from huggingface_hub import HfApi

        sha = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type).sha
    except Exception:  # offline, unreachable, unknown, gated: nothing to record
        return None
    return sha if is_commit(sha) else None
