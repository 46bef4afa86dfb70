"""Bad input to the stages: one clear line on stderr naming the thing, a non-zero exit, no partial output."""

from __future__ import annotations

import sys

import pytest
from conftest import copy_repo, run, write_params


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("bad") / "repo")


def _stage(repo, name, *args):
    return run([sys.executable, "-m", f"stages.{name}", *args], repo, check=False)


def _one_line_error(p, needle):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


def test_unknown_variant_slug(repo):
    p = _stage(repo, "pretrain", "--variant", "nope")
    _one_line_error(p, "[variants] unknown variant 'nope'")
    assert not (repo / "results/pretrain/nope").exists() and not (repo / "models/pretrain/nope").exists()


def test_negative_batch_size(repo, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((repo / "params.yaml").read_text())
    write_params(tmp_path, {"pretrain": {"batch_size": -4}})
    p = _stage(repo, "pretrain", "--variant", "mha", "--params", str(params))
    _one_line_error(p, "[pretrain] batch_size: -4 must be >= 1")
    assert not (repo / "results/pretrain/mha").exists()


def test_vocab_too_small(repo, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((repo / "params.yaml").read_text())
    write_params(tmp_path, {"prepare": {"vocab_size": 100}})
    p = _stage(repo, "prepare", "--params", str(params))
    _one_line_error(p, "[prepare] vocab_size: 100 must be >= 260")
    assert not (repo / "data/prepared").exists()


def test_missing_corpus_file(repo, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((repo / "params.yaml").read_text())
    write_params(tmp_path, {"prepare": {"source": "text_files", "source_paths": ["no/such/corpus.jsonl"]}})
    p = _stage(repo, "prepare", "--params", str(params))
    _one_line_error(p, "no/such/corpus.jsonl")
    assert not (repo / "data/prepared").exists()


def test_pretrain_without_prepared_corpus(repo):
    p = _stage(repo, "pretrain", "--variant", "mha")
    _one_line_error(p, "prepared corpus missing: data/prepared/train.npy")
    assert not (repo / "results/pretrain/mha").exists()


def test_corrupt_row_file_in_report(repo):
    bad = repo / "results/pretrain/broken/row.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"schema_version": 1, "axis": "pretrain", "status": "ok", "n_params": ')
    try:
        p = _stage(repo, "report")
        _one_line_error(p, "corrupt row file results/pretrain/broken/row.json")
        assert not (repo / "reports").exists()
        assert not list(repo.glob(".reports*")), "no temp report folder left behind"
    finally:
        bad.unlink()
