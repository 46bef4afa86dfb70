"""The report's figures are drawn, non-empty and deterministic; the report stage writes reports/ and names a
corrupt row file.

    python -m pytest tests/test_report_plots.py -q
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from efficientllm import records
from efficientllm.report import plots, views
from stages import report as report_stage
from stages import run as run_stage


def _rows(root: Path) -> Path:
    results = root / "results"
    for i, (cell, ppl, al, mem) in enumerate((("mha", 20.0, 0.20, 4e8), ("mqa", 22.0, 0.10, 3e8),
                                               ("gqa", 19.0, 0.30, 5e8))):
        row = {"axis": "pretrain", "stage": "pretrain", "cell": cell, "technique": cell, "status": "ok", "trial": 0,
               "quality_metric": "val_ppl", "quality_value": ppl, "al_s": al, "peak_mem_bytes": mem,
               "amu_bytes": mem, "pcu_ratio": 0.5, "tt_tokens_per_param_s": 1 / al, "tokens_per_s": 1000 / al,
               "aec_w": 5.0 + i, "energy_source": "estimate", "timestamp_utc": "2025-06-01T00:00:00Z",
               "latency_samples_s": [al * (1 + 0.05 * k) for k in range(-3, 4)],
               # the memory anatomy of the cell (the rest: the peak minus the counted parts)
               "mem_weights_bytes": mem / 4, "mem_grads_bytes": mem / 4, "mem_optimizer_bytes": mem / 3,
               "mem_activations_bytes": mem / 10, "mem_kv_cache_bytes": 0, "mem_other_bytes": mem / 12}
        records.write_row(results / "pretrain" / cell / "row.json", row)
        (results / "pretrain" / cell / "loss.csv").write_text(
            "step,loss\n" + "".join(f"{s},{ppl / 3 - 0.1 * s}\n" for s in range(6)))
    return results


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_figures_are_drawn_labelled_and_deterministic(tmp_path):
    pytest.importorskip("matplotlib")
    _rows(tmp_path)
    con = views.connect(str(tmp_path / "results" / "*" / "*" / "row.json"))
    drawn = plots.draw_figures(con, tmp_path / "a")
    assert [(f.kind, f.path.name) for f in drawn] == [
        ("pareto", "pareto_pretrain.png"), ("radar", "radar_pretrain.png"), ("latency", "latency_pretrain.png"),
        ("memory", "memory_pretrain.png"), ("loss", "loss_pretrain.png"),
    ]
    import matplotlib.image

    for f in drawn:
        width, height = _png_size(f.path)
        assert width >= 400 and height >= 300, f.path
        pixels = matplotlib.image.imread(f.path)
        assert pixels.std() > 0.05, f"{f.path} looks blank"  # not a flat image
    again = plots.draw_figures(con, tmp_path / "b")
    for first, second in zip(drawn, again, strict=True):
        assert first.path.read_bytes() == second.path.read_bytes(), first.path.name


def test_pareto_figure_marks_the_front(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _rows(tmp_path)
    con = views.connect(str(tmp_path / "results" / "*" / "*" / "row.json"))
    saved = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.setdefault("fig", fig))
    assert plots.pareto_figure(con, "workspace", "pretrain", "pretrain", "", tmp_path / "x.png")
    memory, latency, energy = saved["fig"].axes
    assert memory.get_xlabel() == "peak memory (MiB) — lower is better"
    assert latency.get_xlabel() == "AL: mean time per training step (ms) — lower is better"
    assert "ESTIMATE" in energy.get_xlabel() and memory.get_ylabel() == "val_ppl (lower is better)"
    # (ppl, memory): gqa (19, 5e8), mha (20, 4e8), mqa (22, 3e8): nobody dominates: the red front has 3 points
    front = [line for line in memory.get_lines() if line.get_label() == "Pareto front"][0]
    assert len(front.get_xdata()) == 3


def test_report_stage_writes_reports_and_names_a_corrupt_row(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    _rows(tmp_path)
    (tmp_path / "params.yaml").write_text("report:\n  title: test report\n  usd_per_device_hour: 2.0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        run_stage(report_stage.main, [])
    assert done.value.code == 0
    index = (tmp_path / "reports" / "index.md").read_text()
    assert index.startswith("# test report\n") and "price per device-hour 2.00 USD" in index
    assert (tmp_path / "reports" / "figures" / "pareto_pretrain.png").stat().st_size > 10_000
    assert "report: reports/index.md (3 rows" in capsys.readouterr().out

    bad = tmp_path / "results" / "pretrain" / "broken" / "row.json"
    bad.parent.mkdir()
    bad.write_text('{"axis": "pretrain", "status": "ok", "al_s": ')
    with pytest.raises(SystemExit) as done:
        run_stage(report_stage.main, [])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "results/pretrain/broken/row.json" in err and err.count("\n") == 1
    assert (tmp_path / "reports" / "index.md").read_text() == index  # the previous report is left in place
