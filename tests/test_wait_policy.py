"""OpenMP's wait policy is a params choice (`measure.omp_wait_policy`), applied before torch loads and recorded in
every row (issue 18.4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from efficientllm.config import ConfigError, load_section
from efficientllm.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
PROBE = "import stages, os, sys; print(os.environ.get('OMP_WAIT_POLICY')); print('torch' in sys.modules)"


def _policy_seen_by_a_stage(params: Path, env_policy: str | None, *flags: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", PROBE, *flags], cwd=params.parent, env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.split()


@pytest.mark.parametrize(("value", "env_policy", "seen"), [
    ("active", "PASSIVE", "ACTIVE"),    # the params file wins over the environment ...
    ("passive", None, "PASSIVE"),
    ("inherit", "ACTIVE", "ACTIVE"),    # ... unless it says inherit
    ("inherit", None, "None"),
])
def test_the_params_policy_is_set_before_torch_loads(tmp_path, value, env_policy, seen):
    params = tmp_path / "params.yaml"
    params.write_text(f"measure:\n  omp_wait_policy: {value}\n")
    assert _policy_seen_by_a_stage(params, env_policy) == [seen, "False"]


def test_a_stage_reads_the_policy_from_its_own_params_flag(tmp_path):
    (tmp_path / "params.yaml").write_text("measure:\n  omp_wait_policy: passive\n")
    other = tmp_path / "other.yaml"
    other.write_text("measure:\n  omp_wait_policy: active\n")
    assert _policy_seen_by_a_stage(tmp_path / "params.yaml", None, "--params", str(other))[0] == "ACTIVE"
    assert _policy_seen_by_a_stage(tmp_path / "params.yaml", None, f"--params={other}")[0] == "ACTIVE"


def test_an_unknown_policy_names_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("measure:\n  omp_wait_policy: spin\n")
    with pytest.raises(ConfigError, match="omp_wait_policy"):
        load_section(params, "measure")
    # the import leaves a bad file to the stage's own reading of it (which fails as above): nothing set
    assert _policy_seen_by_a_stage(params, None)[0] == "None"


def test_every_row_records_the_policy_in_effect(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert provenance()["omp_wait_policy"] == "passive"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert provenance()["omp_wait_policy"] is None
