"""Scaling maps (efficientllm/maps.py, efficientllm/sweep.py, stages/sweep.py, views `sweep` / `sweep_crossovers`).

Fast: tiny decoders (width 32, one layer) measured in-process at a handful of points; the KV cache counted from the
tensors against the analytic count, the budget and position limits, the precision map's model folder, the SQL views
on planted rows, the report section and the stage. Slow: `dvc repro` of a tiny map in a copy of the repository.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import BIN, REPO, run

from efficientllm import records
from efficientllm.config import ConfigError, MatrixConfig, SweepConfig, parse_section, read_params
from efficientllm.maps import MAPS, attention_recipe, check_sweep, grid
from efficientllm.records import CellId
from efficientllm.sweep import POINTS_FILE, PointContext, build_attention, build_precision, measure_point, sweep_cell
from efficientllm.techniques.quantization import PRECISIONS

CPU = torch.device("cpu")
TINY_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2}
TINY = {"contexts": [8, 16], "batch_sizes": [1, 2], "grid": "lines", "max_new_tokens": 3, "min_runs": 1,
        "vocab_size": 64, "shape": TINY_SHAPE, "memory_budget_mib": 64.0,
        "variant_overrides": {"gqa": {"num_key_value_heads": 1}, "mla": {"kv_lora_rank": 16, "qk_rope_head_dim": 8},
                              "nsa": {"nsa_compress_block_size": 4, "nsa_compress_stride": 2,
                                      "nsa_selection_block_size": 4, "nsa_num_selected_blocks": 2,
                                      "nsa_window_size": 4}}}
VARIANTS = read_params(REPO / "params.yaml")["variants"]


def tiny_cfg(**over) -> SweepConfig:
    return parse_section(SweepConfig, "sweep", {**TINY, **over})


def attention_cell(slug: str, cfg: SweepConfig) -> dict:
    recipe = attention_recipe(slug, VARIANTS, cfg)
    outcome = sweep_cell(cell=CellId(axis="sweep", stage="sweep_attention", cell=f"attention-{slug}", technique=slug),
                         map_name="attention", line=slug, cfg=cfg, device=CPU,
                         build=lambda: build_attention(slug, recipe, cfg, CPU))
    return outcome


# --- the grid and the params ---------------------------------------------------------------------------------------


def test_grid_lines_is_two_lines_and_cross_every_pair():
    cfg = tiny_cfg(contexts=[8, 16, 32], batch_sizes=[1, 2, 4])
    assert grid(cfg) == [(8, 1), (8, 2), (8, 4), (16, 1), (32, 1)]
    assert grid(dataclasses.replace(cfg, grid="cross")) == [(c, b) for c in (8, 16, 32) for b in (1, 2, 4)]


@pytest.mark.parametrize("over, message", [
    ({"contexts": [16, 8]}, "contexts: expected ascending"),
    ({"batch_sizes": [1, 1]}, "batch_sizes: expected ascending"),
    ({"contexts": []}, "contexts: expected ascending"),
    ({"shape": {"num_layers": 2}}, "did you mean 'num_hidden_layers'"),
    ({"min_runs": 5, "max_runs": 2}, "min_runs=5 must be <= max_runs=2"),
    ({"variant_overrides": {"gqa": 3}}, "variant_overrides.gqa: expected a mapping"),
    ({"grid": "diagonal"}, "grid: 'diagonal' is not one of cross, lines"),
])
def test_sweep_params_are_checked_with_the_key_named(over, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(**over)


def test_check_sweep_names_the_bad_slug_and_the_shape_that_refuses_a_recipe():
    params = read_params(REPO / "params.yaml")
    matrix = parse_section(MatrixConfig, "matrix", {**params["matrix"], "sweep_attention": ["mqa"],
                                                    "sweep_precision": ["int4"]})
    parsed = {"matrix": matrix, "sweep": tiny_cfg()}
    assert check_sweep(params, parsed, PRECISIONS) == 1
    bad = {"matrix": dataclasses.replace(matrix, sweep_attention=("mqq",)), "sweep": tiny_cfg()}
    with pytest.raises(ConfigError, match="'mqq' is not defined in \\[variants\\] \\(did you mean 'mqa'\\?\\)"):
        check_sweep(params, bad, PRECISIONS)
    bad = {"matrix": dataclasses.replace(matrix, sweep_precision=("int3",)), "sweep": tiny_cfg()}
    with pytest.raises(ConfigError, match="unknown precision 'int3'"):
        check_sweep(params, bad, PRECISIONS)
    # gqa's own recipe (2 KV heads) cannot group SmolLM2's 9 query heads: the override in params.yaml is needed
    smol = {"matrix": dataclasses.replace(matrix, sweep_attention=("gqa",)),
            "sweep": parse_section(SweepConfig, "sweep", {"shape": {"num_hidden_layers": 1}})}
    with pytest.raises(ConfigError, match="\\[sweep\\] variant gqa at sweep.shape"):
        check_sweep(params, smol, PRECISIONS)


def test_the_default_maps_build_at_their_shape():
    params = read_params(REPO / "params.yaml")
    parsed = {"matrix": parse_section(MatrixConfig, "matrix", params["matrix"]),
              "sweep": parse_section(SweepConfig, "sweep", params["sweep"])}
    assert check_sweep(params, parsed, PRECISIONS) == len(parsed["matrix"].sweep_attention) >= 5
    assert set(parsed["matrix"].sweep_precision) >= {MAPS["precision"].reference, "int4"}


# --- measuring ----------------------------------------------------------------------------------------------------


# golden analytic KV bytes per token: one layer, fp32 (4 B), head_dim 32 / 2 = 16
KV_PER_TOKEN = {"mha": 2 * 2 * 16 * 4, "mqa": 2 * 1 * 16 * 4, "gqa": 2 * 1 * 16 * 4, "mla": (16 + 8) * 4,
                "nsa": 2 * 2 * 16 * 4}


@pytest.mark.parametrize("slug", sorted(KV_PER_TOKEN))
def test_attention_cell_counts_the_kv_cache_from_its_tensors_as_the_analytic_count(slug):
    outcome = attention_cell(slug, tiny_cfg())
    row = records.make_row(**outcome.row)
    points = row["extra"]["points"]
    assert [(p["context"], p["batch_size"], p["status"]) for p in points] == [(8, 1, "ok"), (8, 2, "ok"), (16, 1, "ok")]
    assert row["kv_cache_bytes_per_token"] == KV_PER_TOKEN[slug]
    for p in points:
        cached = p["batch_size"] * (p["context"] + 3 - 1)  # the last token's K/V are never computed
        assert p["kv_cache_bytes"] == p["kv_cache_bytes_analytic"] == KV_PER_TOKEN[slug] * cached
        assert p["kv_cache_measured_vs_analytic"] == 1.0
        assert p["ttft_s_p50"] > 0 and p["tpot_s_p50"] > 0 and p["requests"] >= 1 and p["decode_steps"] == 2
        assert p["decode_tokens_per_s"] == pytest.approx(p["batch_size"] / p["tpot_s_p50"])
        assert p["prefill_tokens_per_s"] == pytest.approx(p["batch_size"] * p["context"] / p["ttft_s_p50"])
        expected = int((64 * 2**20 - row["model_size_bytes"]) // (KV_PER_TOKEN[slug] * (p["context"] + 3)))
        assert p["max_batch_in_budget"] == expected
    # the row's own columns: its headline point, the longest context at the smallest batch
    assert (row["seq_len"], row["batch_size"]) == (16, 1) == tuple(row["extra"]["headline_point"].values())
    assert row["tpot_s_p50"] == points[-1]["tpot_s_p50"] and row["mem_kv_cache_bytes"] == points[-1]["kv_cache_bytes"]
    assert row["axis"] == "sweep" and row["extra"]["reference"] == "mha" and row["technique"] == slug
    samples = [json.loads(line) for line in outcome.files[POINTS_FILE].splitlines()]
    assert [len(s["requests"][0]["decode_s"]) for s in samples] == [2, 2, 2]


def test_points_over_the_budget_or_the_positions_are_recorded_not_run():
    cfg = tiny_cfg(memory_budget_mib=0.1)
    model = build_attention("mha", attention_recipe("mha", VARIANTS, cfg), cfg, CPU).model
    # planted weight bytes leaving room for exactly one sequence of 8 + 3 tokens at mha's 256 B per token
    ctx = PointContext(model, cfg, CPU, 0.1 * 2**20 - 256 * 11, 256.0, 64, 20, torch.Generator().manual_seed(0))
    over, latency = measure_point(ctx, 8, 2)
    assert (over["status"], over["max_batch_in_budget"], latency) == ("over_budget", 1, None)
    assert "batch 2 > 1" in over["error"]
    ok, latency = measure_point(ctx, 8, 1)
    assert ok["status"] == "ok" and latency is not None
    too_long, _ = measure_point(ctx, 18, 1)
    assert too_long["status"] == "too_long" and "exceeds the model's max_position_embeddings=20" in too_long["error"]


def _tiny_llama(path: Path, layers: int = 3, positions: int = 16) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=positions,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_precision_map_loads_a_model_folder_cut_to_its_first_blocks_with_room_for_the_context(tmp_path):
    from efficientllm.config import QuantizeConfig

    source = _tiny_llama(tmp_path / "llama")
    cfg = tiny_cfg(precision_model=str(source), precision_num_hidden_layers=2)
    built = build_precision("fp32", cfg, QuantizeConfig(), CPU)
    assert built.model.config.num_hidden_layers == 2 and built.model.config.max_position_embeddings == 16 + 3
    assert built.facts["changed"] == {"num_hidden_layers": 2, "max_position_embeddings": 19}
    assert built.name.endswith("(first 2 layers)") and built.dtype == "float32"
    cell = CellId(axis="sweep", stage="sweep_precision", cell="precision-fp32", technique="fp32")
    outcome = sweep_cell(cell=cell, map_name="precision", line="fp32", cfg=cfg, device=CPU, build=lambda: built)
    row = records.make_row(**outcome.row)
    assert row["extra"]["points_ok"] == 3 and row["extra"]["reference"] == "bf16"
    assert {p["kv_cache_measured_vs_analytic"] for p in row["extra"]["points"]} == {1.0}
    unchanged = build_precision("bf16", tiny_cfg(precision_model=str(source), contexts=[4, 8]), QuantizeConfig(), CPU)
    assert unchanged.facts["changed"] == {} and unchanged.model.config.num_hidden_layers == 3
    with pytest.raises(FileNotFoundError, match="no model folder at"):
        build_precision("fp32", tiny_cfg(precision_model=str(tmp_path / "missing")), QuantizeConfig(), CPU)


# --- SQL and the report -------------------------------------------------------------------------------------------


def _point(context: int, batch: int, tpot: float, status: str = "ok") -> dict:
    if status != "ok":
        return {"context": context, "batch_size": batch, "status": status, "error": "planted"}
    return {"context": context, "batch_size": batch, "status": "ok", "error": None, "ttft_s_p50": context * 1e-4,
            "tpot_s_p50": tpot, "prefill_tokens_per_s": batch * context / (context * 1e-4),
            "decode_tokens_per_s": batch / tpot, "kv_cache_bytes": 100.0 * batch * context,
            "kv_cache_bytes_analytic": 100.0 * batch * context, "kv_cache_measured_vs_analytic": 1.0,
            "kv_cache_bytes_per_token": 100.0, "max_batch_in_budget": 4096 // context, "requests": 2}


# planted TPOTs: the attention map along context at batch 1, the precision map along batch at context 64
CONTEXTS, BATCHES = (64, 128, 256, 512), (1, 4, 16)
PLANTED = {
    ("attention", "mha"): [1.0, 1.0, 1.0, 1.0],
    ("attention", "mqa"): [1.2, 1.1, 0.9, 0.8],   # crosses: slower to 128, faster from 256 on
    ("attention", "gqa"): [0.9, 1.1, 0.95, 0.9],  # faster, slower at 128, faster again: the crossover is 256
    ("attention", "mla"): [0.9, 0.9, 0.9, 0.9],   # faster everywhere measured
    ("attention", "nsa"): [0.9, 0.9, 1.1, 1.2],   # faster up to 128, slower beyond: the crossing runs backwards
    ("attention", "pe-none"): [1.1, 0.9, 0.9, 1.1],  # faster only in the middle
    ("precision", "bf16"): [1.0, 1.0, 1.0],
    ("precision", "int4"): [2.0, 1.5, 0.5],       # int4 beats bf16 from batch 16 on
    ("precision", "fp32"): [1.5, 1.5, 1.5],       # never faster
}


def planted_rows(folder: Path) -> list[Path]:
    files = []
    for (map_name, line), tpots in PLANTED.items():
        if map_name == "attention":
            points = [_point(c, 1, t) for c, t in zip(CONTEXTS, tpots, strict=True)] + [_point(64, 4, 2.0, "oom")]
        else:
            points = [_point(64, b, t) for b, t in zip(BATCHES, tpots, strict=True)]
        row = CellId(axis="sweep", stage=f"sweep_{map_name}", cell=f"{map_name}-{line}", technique=line).ok_row(
            model="tiny", kv_cache_bytes_per_token=100.0, model_size_bytes=1e6,
            extra={"map": map_name, "line": line, "reference": MAPS[map_name].reference, "max_new_tokens": 8,
                   "memory_budget_bytes": 2**20, "points": points})
        files.append(records.write_row(folder / f"{map_name}-{line}" / "row.json", row))
    return files


def test_sweep_view_unnests_every_point_with_its_status(tmp_path):
    from efficientllm.report import views

    con = views.connect(planted_rows(tmp_path))
    n, oom = con.execute("SELECT count(*), count(*) FILTER (WHERE point_status = 'oom') FROM sweep").fetchone()
    assert (n, oom) == (6 * 5 + 3 * 3, 6)
    row = con.execute("SELECT tpot_s_p50, decode_tokens_per_s, kv_cache_bytes, is_reference, weight_bytes FROM sweep "
                      "WHERE line = 'mqa' AND context = 256").fetchone()
    assert row == (0.9, pytest.approx(1 / 0.9), 25600.0, False, 1e6)
    assert con.execute("SELECT tpot_s_p50 FROM sweep WHERE point_status = 'oom' LIMIT 1").fetchone() == (None,)


def test_crossovers_are_found_on_planted_maps(tmp_path):
    from efficientllm.report import views

    con = views.connect(planted_rows(tmp_path))
    got = {r[0]: r[1:] for r in con.execute(
        "SELECT line, crossover_x, last_slower_x, verdict, n_points, round(tpot_ratio_at_x_max, 3) "
        "FROM sweep_crossovers WHERE x_axis = 'context' AND fixed_value = 1").fetchall()}
    assert got == {"mqa": (256, 128, "crosses", 4, 0.8), "gqa": (256, 128, "crosses", 4, 0.9),
                   "mla": (64, None, "faster everywhere measured", 4, 0.9),
                   "nsa": (None, 512, "crosses back", 4, 1.2), "pe-none": (None, 512, "mixed", 4, 1.1)}
    nsa = con.execute("SELECT faster_until_x, n_faster FROM sweep_crossovers WHERE line = 'nsa'").fetchone()
    assert nsa == (128, 2)
    precision = con.execute("SELECT line, reference, fixed_axis, fixed_value, crossover_x, last_slower_x, verdict "
                            "FROM sweep_crossovers WHERE x_axis = 'batch_size' ORDER BY line").fetchall()
    assert precision == [("fp32", "bf16", "context", 64, None, 16, "slower everywhere measured"),
                         ("int4", "bf16", "context", 64, 16, 4, "crosses")]
    # a line measured at one x of an axis has no crossover row there (the attention map's batch line)
    assert con.execute("SELECT count(*) FROM sweep_crossovers WHERE map = 'attention' AND x_axis = 'batch_size'"
                       ).fetchone() == (0,)


def test_report_shows_the_maps_the_crossover_lines_and_the_figures(tmp_path):
    pytest.importorskip("matplotlib")
    from efficientllm.report.build import build_report

    paths = build_report(planted_rows(tmp_path / "rows"), tmp_path / "out")
    index = (tmp_path / "out" / "index.md").read_text()
    assert "## Scaling maps" in index
    assert "- **attention · mqa** (batch 1): decodes faster than mha beyond context 128: from 256 on" in index
    assert "- **precision · int4** (context 64): decodes faster than bf16 beyond batch 4: from 16 on" in index
    assert "- **attention · nsa** (batch 1): decodes faster than mha up to context 128, not at 512" in index
    assert "- **precision · fp32** (context 64): decodes no faster than bf16 at any measured batch (1–16)" in index
    assert "- **attention · pe-none** (batch 1): no consistent crossover with mha" in index
    figures = sorted(name for name in paths if name.startswith("figure:sweep_"))
    assert figures == ["figure:sweep_attention-by-context-at-batch-size-1.png",
                       "figure:sweep_precision-by-batch-size-at-context-64.png"]
    for name in figures:
        assert f"figures/{name.removeprefix('figure:')}" in index
    assert (tmp_path / "out" / "sweep.csv").read_text().count("\n") == 1 + 39
    assert "crossover_x" in (tmp_path / "out" / "sweep_crossovers.csv").read_text().splitlines()[0]


# --- the stage ------------------------------------------------------------------------------------------------------


def _tiny_params(repo: Path) -> Path:
    import yaml

    params = read_params(REPO / "params.yaml")
    params["sweep"] = {**params["sweep"], **TINY, "precision_num_hidden_layers": 1}
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_stage_writes_the_row_and_the_points_and_refuses_a_bad_map(tmp_path, monkeypatch):
    from stages import sweep as stage

    monkeypatch.chdir(tmp_path)
    params = _tiny_params(tmp_path)
    assert stage.main(["--params", str(params), "--map", "attention", "--line", "mqa"]) == 0
    row = records.read_row(tmp_path / "results/sweep/attention-mqa/row.json")
    assert (row["stage"], row["cell"], row["status"], row["extra"]["points_ok"]) == ("sweep_attention", "attention-mqa",
                                                                                   "ok", 3)
    assert len((tmp_path / "results/sweep/attention-mqa" / POINTS_FILE).read_text().splitlines()) == 3
    assert json.loads((tmp_path / "results/sweep/attention-mqa/trials/index.json").read_text())["trials"] == 1
    with pytest.raises(ConfigError, match="unknown map \\(did you mean 'attention'\\?\\)"):
        stage.main(["--params", str(params), "--map", "attentoin", "--line", "mqa"])
    with pytest.raises(ConfigError, match="unknown precision 'int3'"):
        stage.main(["--params", str(params), "--map", "precision", "--line", "int3"])


@pytest.mark.slow
def test_dvc_repro_of_a_tiny_map_then_noop(tiny_repo):
    repo = tiny_repo
    targets = ["sweep_attention", "sweep_precision"]
    run([str(BIN / "dvc"), "repro", *targets], repo)
    matrix = read_params(repo / "params.yaml")["matrix"]
    for map_name, lines in (("attention", matrix["sweep_attention"]), ("precision", matrix["sweep_precision"])):
        for line in lines:
            row = records.read_row(repo / f"results/sweep/{map_name}-{line}/row.json")
            assert row["status"] == "ok" and row["extra"]["points_ok"] >= 2, row["error"]
    p = run([str(BIN / "dvc"), "repro", *targets], repo)
    assert "up to date" in p.stdout, p.stdout
    p = run([str(BIN / "efficientllm"), "sql", "--format", "json",
             "SELECT map, count(*) AS n FROM sweep GROUP BY map ORDER BY map"], repo)
    assert [r["map"] for r in json.loads(p.stdout)] == ["attention", "precision"]
