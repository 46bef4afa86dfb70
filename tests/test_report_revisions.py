"""Rows at git revisions and DVC experiments, read without touching the work tree, and `efficientllm compare`.

A throwaway git + DVC repository with a one-stage pipeline that writes two row files (DVC outs, listed in
dvc.lock) from params.yaml: v1 (mha 0.20 s, mqa 0.10 s) -> v2 (mha 0.30 s) -> a commit with a corrupt,
git-tracked row file (tag `bad`) -> its removal -> a DVC experiment `slow-exp` (mha 0.40 s), applied to the
workspace as `dvc exp run` does.

    python -m pytest tests/test_report_revisions.py -q
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import BIN, run

from efficientllm import cli, records
from efficientllm.pipeline import revisions
from efficientllm.report import views

MAKE_ROWS = """\
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
for cell in ("mha", "mqa"):
    out = pathlib.Path("results/pretrain") / cell / "row.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"axis": "pretrain", "stage": "pretrain", "cell": cell, "technique": cell,
                               "status": "ok", "quality_metric": "val_ppl", "quality_value": 20.0,
                               "al_s": p["al_" + cell], "timestamp_utc": "2025-06-01T00:00:00Z"}))
"""

DVC_YAML = """\
stages:
  rows:
    cmd: python make_rows.py
    deps: [make_rows.py]
    params: [al_mha, al_mqa]
    outs: [results/pretrain/mha/row.json, results/pretrain/mqa/row.json]
"""


def _git(repo: Path, *args: str) -> str:
    return run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], repo).stdout


def _commit(repo: Path, message: str, tag: str | None = None) -> None:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", message)
    if tag:
        _git(repo, "tag", tag)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("revs")
    dvc = str(BIN / "dvc")
    _git(repo, "init", "-q")
    run([dvc, "init", "-q"], repo)
    (repo / "make_rows.py").write_text(MAKE_ROWS)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("al_mha: 0.20\nal_mqa: 0.10\n")
    run([dvc, "repro", "-q"], repo)
    _commit(repo, "v1", "v1")
    (repo / "params.yaml").write_text("al_mha: 0.30\nal_mqa: 0.10\n")
    run([dvc, "repro", "-q"], repo)
    _commit(repo, "v2: mha slower", "v2")
    bad = repo / "results" / "pretrain" / "bad" / "row.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"axis": "pretrain", "status": "ok", "al_s": "fast"}')
    _commit(repo, "a corrupt git-tracked row", "bad")
    _git(repo, "rm", "-q", "-r", "results/pretrain/bad")
    _commit(repo, "remove it")
    run([dvc, "exp", "run", "-q", "-S", "al_mha=0.40", "-n", "slow-exp"], repo)
    return repo


def _snapshot(repo: Path) -> dict[str, tuple[str, int]]:
    """Every work-tree file (outside .git and DVC's own .dvc/) -> (content hash, mtime)."""
    out = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo)
        if path.is_file() and rel.parts[0] not in (".git", ".dvc"):
            out[rel.as_posix()] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


def test_rows_at_revisions_experiments_and_workspace(repo):
    before = (_snapshot(repo), _git(repo, "status", "--porcelain"), _git(repo, "rev-parse", "HEAD"))
    con = revisions.connect_revisions(["v1", "v2", "slow-exp", "workspace"], repo=repo)
    got = con.execute("SELECT rev, cell, al_s, row_file FROM rows ORDER BY rev, cell").fetchall()
    assert got == [
        ("slow-exp", "mha", 0.40, "slow-exp:results/pretrain/mha/row.json"),
        ("slow-exp", "mqa", 0.10, "slow-exp:results/pretrain/mqa/row.json"),
        ("v1", "mha", 0.20, "v1:results/pretrain/mha/row.json"),
        ("v1", "mqa", 0.10, "v1:results/pretrain/mqa/row.json"),
        ("v2", "mha", 0.30, "v2:results/pretrain/mha/row.json"),
        ("v2", "mqa", 0.10, "v2:results/pretrain/mqa/row.json"),
        ("workspace", "mha", 0.40, str(repo / "results/pretrain/mha/row.json")),
        ("workspace", "mqa", 0.10, str(repo / "results/pretrain/mqa/row.json")),
    ]
    revs = con.execute("SELECT rev, rev_order, length(commit), n_rows FROM revisions ORDER BY rev_order").fetchall()
    assert revs == [("v1", 0, 40, 2), ("v2", 1, 40, 2), ("slow-exp", 2, 40, 2), ("workspace", 3, None, 2)]
    # nothing in the work tree moved: same files, same bytes, same times, same HEAD
    assert (_snapshot(repo), _git(repo, "status", "--porcelain"), _git(repo, "rev-parse", "HEAD")) == before


def test_revision_diff_relative_change_per_metric(repo):
    con = revisions.connect_revisions(["v1", "v2"], repo=repo)
    got = con.execute("SELECT rev_a, rev, cell, mean_a, mean_b, relative_change, verdict FROM revision_diff "
                      "WHERE metric = 'al_s' ORDER BY cell").fetchall()
    # mha: 0.20 -> 0.30 s is +50% time per step (worse); mqa unchanged
    assert got == [("v1", "v2", "mha", 0.20, 0.30, pytest.approx(0.5), "worse"),
                   ("v1", "v2", "mqa", 0.10, 0.10, 0.0, "same")]


def test_sql_and_compare_commands_across_revisions(repo, capsys):
    code = cli.main(["sql", "--repo", str(repo), "--rev", "v1", "--rev", "slow-exp", "--format", "csv",
                     "SELECT rev, cell, relative_change, verdict FROM revision_diff WHERE metric = 'al_s' "
                     "AND verdict = 'worse'"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines() == ["rev,cell,relative_change,verdict", "slow-exp,mha,1.0,worse"]  # 0.20 -> 0.40 s

    code = cli.main(["compare", "v1", "v2", "--repo", str(repo), "--min-change", "0.01"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("# v1 → v2\n\n- **A** = `v1` (commit ")
    assert "Changes of B against A: 1 worse." in out
    assert "| mha | AL (ms) | 200 | 300 | +50.0% | worse |" in out
    assert "| mqa |" not in out  # unchanged: below --min-change


def test_bad_revisions_are_one_line_errors(repo, capsys):
    with pytest.raises(records.RowError, match=r"corrupt row file bad:results/pretrain/bad/row.json: .*al_s"):
        revisions.load_revision("bad", repo)
    with pytest.raises(revisions.RevisionError, match="revision given more than once: v1"):
        revisions.load_revisions(["v1", "v1"], repo)
    assert cli.main(["sql", "--repo", str(repo), "--rev", "no-such-rev", "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-rev" in err and "Traceback" not in err
    assert cli.main(["compare", "bad", "--repo", str(repo)]) == 2
    assert "bad:results/pretrain/bad/row.json" in capsys.readouterr().err


def test_a_dvc_out_missing_from_every_cache_is_named(repo, tmp_path):
    # a clone has the git history but an empty DVC cache (and no remote): the row files cannot be read
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    with pytest.raises(revisions.RevisionError, match="v1:results/pretrain/mha/row.json is tracked by DVC but "
                                                      "neither the local cache nor a DVC remote has it"):
        revisions.load_revision("v1", clone)


def test_workspace_revision_reads_the_files_on_disk(repo):
    got = revisions.load_revision(views.WORKSPACE, repo)
    assert got.commit is None and sorted(r["cell"] for r in got.rows) == ["mha", "mqa"]
