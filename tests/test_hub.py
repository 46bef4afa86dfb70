"""Hub provenance: a pinned commit is recorded as it is; an unpinned reference is resolved only when the hub can be
asked, and offline (every test, every default stage) it is None rather than a guess."""

from __future__ import annotations

import pytest

from efficientllm.hub import hub_commit, is_commit

SHA = "d149729398750b98c0af14eb82c78cfe92750796"


def test_a_full_sha_is_a_commit_and_is_returned_without_asking(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_commit(SHA)
    assert not is_commit("main") and not is_commit(SHA[:7]) and not is_commit(None) and not is_commit(SHA.upper())
    assert hub_commit("Qwen/Qwen2.5-7B", SHA) == SHA


@pytest.mark.parametrize("revision", ["main", None, "v1.0"])
def test_a_moving_reference_offline_resolves_to_none(monkeypatch, revision):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_commit("Qwen/Qwen2.5-7B", revision) is None
    assert hub_commit("FreedomIntelligence/medical-o1-reasoning-SFT", revision, repo_type="dataset") is None
