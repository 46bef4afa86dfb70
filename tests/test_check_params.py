"""The `check_params` stage: a bad params edit fails before anything runs, naming the key and the nearest valid
name, and (slow, real `dvc repro`) leaves every existing output in place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, run, write_params


@pytest.fixture
def params_dir(tmp_path, monkeypatch) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check(capsys) -> tuple[int, str]:
    import stages
    from stages import check_params

    with pytest.raises(SystemExit) as e:
        stages.run(check_params.main, [])
    return e.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("overrides, message", [
    ({"matrix": {"pretrian": ["mha"]}}, "error: [matrix] unknown key 'pretrian' (did you mean 'pretrain'?)"),
    ({"matrix": {"pretrain": ["mha", "gqa2"]}},
     "error: [matrix] pretrain: 'gqa2' is not defined in [variants] (did you mean 'gqa'?)"),
    ({"matrix": {"finetune_methods": ["lora", "dorra"]}},
     "error: [matrix] finetune_methods: unknown slug 'dorra' (did you mean 'dora'?)"),
    ({"matrix": {"quantize": ["in4"]}}, "error: [matrix] quantize: unknown slug 'in4' (did you mean 'int4'?)"),
    ({"matrix": {"finetune_datasets": ["arithm"]}},
     "error: [matrix] finetune_datasets: 'arithm' is not defined in [sft] datasets (did you mean 'arith'?)"),
    ({"pretrain": {"batch_sizee": 4}}, "error: [pretrain] unknown key 'batch_sizee' (did you mean 'batch_size'?)"),
    ({"pretrian": {"steps": 4}}, "unknown section 'pretrian' (did you mean 'pretrain'?)"),
    ({"variants": {"mha": {"attention": "gqa", "num_key_value_heads": 3}}}, "error: [variants] mha:"),
])
def test_a_bad_edit_fails_with_the_key_and_the_nearest_name(params_dir, capsys, overrides, message):
    write_params(params_dir, overrides)
    code, err = _check(capsys)
    assert code == 2 and message in err, err
    assert len(err.splitlines()) == 1
    assert not (params_dir / "data/params_checked.json").exists()


def test_good_params_write_a_value_free_marker(params_dir, capsys):
    import stages
    from stages import check_params

    with pytest.raises(SystemExit) as e:
        stages.run(check_params.main, [])
    assert e.value.code == 0
    first = (params_dir / "data/params_checked.json").read_text()
    assert "pretrain" in json.loads(first)["checked"]
    write_params(params_dir, {"pretrain": {"steps": 7}})  # a value change: the marker (a DVC dep) does not change
    with pytest.raises(SystemExit):
        stages.run(check_params.main, [])
    assert (params_dir / "data/params_checked.json").read_text() == first


@pytest.mark.slow
def test_dvc_repro_stops_a_bad_edit_before_any_output_is_removed(tiny_repo):
    repo = tiny_repo
    dvc = str(BIN / "dvc")
    run([dvc, "repro", "pretrain"], repo)
    outputs = [repo / "models/pretrain/mha/model.safetensors", repo / "results/pretrain/mha/row.json"]
    before = {p: p.read_bytes() for p in outputs}
    for bad, needle in (({"pretrain": {"batch_sizee": 4}}, "did you mean 'batch_size'"),
                        ({"matrix": {"pretrian": ["mha"]}}, "did you mean 'pretrain'")):
        good = (repo / "params.yaml").read_text()
        params = yaml.safe_load(good)
        for section, values in bad.items():
            params[section].update(values)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = run([dvc, "repro"], repo, check=False)
        assert p.returncode != 0 and needle in p.stdout + p.stderr, p.stdout + p.stderr
        assert "Running stage 'pretrain@mha'" not in p.stdout
        for path, data in before.items():
            assert path.read_bytes() == data, f"{path} was removed or changed by a refused edit"
        (repo / "params.yaml").write_text(good)
    again = run([dvc, "repro", "pretrain"], repo).stdout  # the good params back: nothing of the pipeline re-runs
    assert "Running stage 'pretrain@mha'" not in again and "Running stage 'prepare'" not in again, again
