"""The report as Prefect artifacts: every figure embedded as a PNG data URI, every link an absolute UI URL or
plain text, each artifact under its byte budget. Built from a real small report (build_report over hand-made
rows, figures drawn); `create` records the artifacts instead of a Prefect API (tests/test_flows.py publishes
to a real server).

    python -m pytest tests/test_flow_artifacts.py -q
"""

from __future__ import annotations

import base64
import io
import re
import uuid
from pathlib import Path

import pytest

from efficientllm import records
from efficientllm.report import build
from flows import artifacts

UI = "http://127.0.0.1:4200"
KEY = "efficientllm-report"
MARKDOWN_TARGET = re.compile(r"(!?)\[[^\]\n]*\]\(([^)\s]*)\)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reports/ built from three pretraining cells (all four figure kinds) and two fine-tuning cells."""
    pytest.importorskip("matplotlib")
    root = tmp_path_factory.mktemp("report")
    for i, (cell, ppl, al, mem) in enumerate((("mha", 20.0, 0.20, 4e8), ("mqa", 22.0, 0.10, 3e8),
                                               ("gqa", 19.0, 0.30, 5e8))):
        row = {"axis": "pretrain", "stage": "pretrain", "cell": cell, "technique": cell, "status": "ok", "trial": 0,
               "quality_metric": "val_ppl", "quality_value": ppl, "al_s": al, "peak_mem_bytes": mem,
               "amu_bytes": mem, "tt_tokens_per_param_s": 1 / al, "tokens_per_s": 1000 / al, "aec_w": 5.0 + i,
               "energy_source": "estimate", "timestamp_utc": "2025-06-01T00:00:00Z",
               "latency_samples_s": [al * (1 + 0.05 * k) for k in range(-3, 4)]}
        records.write_row(root / "results" / "pretrain" / cell / "row.json", row)
        (root / "results" / "pretrain" / cell / "loss.csv").write_text(
            "step,loss\n" + "".join(f"{s},{ppl / 3 - 0.1 * s}\n" for s in range(6)))
    for cell, loss, al in (("full-arith", 1.0, 0.4), ("lora-arith", 1.2, 0.2)):
        row = {"axis": "finetune", "stage": "finetune", "cell": cell, "technique": cell.split("-")[0],
               "status": "ok", "trial": 0, "quality_metric": "eval_loss", "quality_value": loss, "al_s": al,
               "peak_mem_bytes": 1e9 * al, "energy_source": "estimate", "timestamp_utc": "2025-06-01T00:00:00Z"}
        records.write_row(root / "results" / "finetune" / cell / "row.json", row)
    build.build_report(str(root / "results" / "*" / "*" / "row.json"), root / "reports")
    return root / "reports"


def _published(report_dir: Path, ui_url: str | None, **kw) -> list[dict]:
    made: list[dict] = []

    def create(**artifact) -> uuid.UUID:
        made.append({**artifact, "id": uuid.uuid4()})
        return made[-1]["id"]

    ids = artifacts.publish_report(report_dir / "index.md", KEY, ui_url, footer="\n---\nFlow run: 5 cells\n",
                                   create=create, **kw)
    assert ids == {a["key"].removeprefix(f"{KEY}-") + ".md" if a["key"] != KEY else "index.md": a["id"]
                   for a in made}
    return made


def _png(uri: str) -> tuple[int, int]:
    """Width and height of the PNG in a data URI (asserts it is one, and that Pillow decodes it)."""
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:60]
    data = base64.b64decode(uri[len(prefix):], validate=True)
    assert data[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def _figure_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def test_every_figure_is_embedded_and_every_link_opens_an_artifact(report_dir):
    made = _published(report_dir, UI)
    assert [a["key"] for a in made] == [f"{KEY}-pretrain", f"{KEY}-finetune", KEY]  # pages first, index last
    urls = {f"{UI}/artifacts/artifact/{a['id']}" for a in made} | {f"{UI}/artifacts/key/{KEY}"}
    embedded: dict[str, int] = {}
    for a in made:
        text = a["markdown"]
        assert len(text.encode()) <= artifacts.MAX_ARTIFACT_BYTES
        targets = MARKDOWN_TARGET.findall(text)
        assert targets, a["key"]
        for bang, target in targets:
            if bang:
                size = _png(target)
                embedded[a["key"]] = embedded.get(a["key"], 0) + 1
                assert min(size) >= 300, size  # full size: these pages are well under budget
            else:
                assert target in urls, (a["key"], target)  # no relative link is left
    # index: one Pareto plot per board; axis pages: every figure of their boards
    figures = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    assert embedded[KEY] == sum(name.startswith("pareto_") for name in figures) == 2
    assert embedded[f"{KEY}-pretrain"] + embedded.get(f"{KEY}-finetune", 0) == len(figures)

    index, pages = made[-1]["markdown"], {a["key"]: a for a in made[:-1]}
    assert index.startswith((report_dir / "index.md").read_text()[:40]) and index.endswith("Flow run: 5 cells\n")
    pretrain_url = f"{UI}/artifacts/artifact/{pages[f'{KEY}-pretrain']['id']}"
    assert f"[pretrain]({pretrain_url})" in index  # the axis-page link opens that page's artifact ...
    assert f"[normalised scores per technique]({pretrain_url})" in index  # ... as do its figures' links
    assert f"[← report]({UI}/artifacts/key/{KEY})" in pages[f"{KEY}-pretrain"]["markdown"]


def test_without_a_ui_url_links_become_plain_text(report_dir):
    made = _published(report_dir, None)
    for a in made:
        assert all(bang for bang, _ in MARKDOWN_TARGET.findall(a["markdown"])), "a link is left"
    index = made[-1]["markdown"]
    assert "Axis pages: pretrain (`reports/pretrain.md`) · finetune (`reports/finetune.md`)." in index
    assert "normalised scores per technique (`reports/figures/radar_pretrain.png`)" in index
    assert "← report (`reports/index.md`)" in made[0]["markdown"]


def test_figures_are_scaled_down_to_fit_the_budget_then_dropped(report_dir):
    page = (report_dir / "pretrain.md").read_text()
    full = artifacts.artifact_markdown(page, report_dir)
    budget = len(full.encode()) // 2
    fitted = artifacts.artifact_markdown(page, report_dir, max_bytes=budget)
    assert len(fitted.encode()) <= budget
    fitted_images = [target for bang, target in MARKDOWN_TARGET.findall(fitted) if bang]
    page_images = [target for bang, target in MARKDOWN_TARGET.findall(page) if bang]
    assert len(page_images) == 4
    for target, original in zip(fitted_images, page_images, strict=True):
        assert _png(target)[0] < _figure_size(report_dir / original)[0]

    bare = artifacts.artifact_markdown(page, report_dir, max_bytes=len(page))  # no room for any figure
    assert "![" not in bare and "*training loss curves* (`reports/figures/loss_pretrain.png`, not embedded)" in bare


def test_code_spans_and_absolute_targets_are_left_alone(tmp_path):
    text = ("See [the page](a.md#top), [b.md](b.md), [docs](https://prefect.io), [here](#x), "
            "`[not](a link.md)` and ![gone](figures/missing.png).\n")
    out = artifacts.artifact_markdown(text, tmp_path / "reports", {"a.md": f"{UI}/artifacts/artifact/1"})
    assert out == (f"See [the page]({UI}/artifacts/artifact/1), `reports/b.md`, [docs](https://prefect.io), "
                   "[here](#x), `[not](a link.md)` and *gone* (`reports/figures/missing.png`, not embedded).\n")
