"""The report folder as Prefect markdown artifacts the UI can show: figures embedded, links that open.

reports/index.md and its axis pages are written to be read next to their files, so their images and links are
paths relative to reports/ (`figures/pareto_pretrain.png`, `pretrain.md`). The Prefect UI shows an artifact at
`/artifacts/artifact/<id>` and resolves such paths against that route: published as written, the figures were
broken images and a link opened `/artifacts/artifact/pretrain.md`, no artifact. `publish_report` publishes instead:

- each page the index links to (the axis pages) as its own artifact, key `<key>-<page>` (e.g.
  `efficientllm-report-pretrain`), then the index as `<key>`;
- every figure as a `data:image/png;base64,...` URI. Both Prefect UIs show these: the Vue one at `/` sets the
  markdown image's `src` as given, the React one at `/v2` adds `data` to its sanitiser's img protocols. The PNGs
  are re-encoded with a 256-colour palette (matplotlib plots have few colours: about a third of the bytes) and
  scaled down together when a page would pass MAX_ARTIFACT_BYTES;
- every relative link as an absolute UI URL where there is one: a page -> its artifact, a figure -> the
  artifact of the page that shows it, index.md -> the report key's page (its versions, newest first). Without a
  UI URL (Prefect's ephemeral API leaves PREFECT_UI_URL unset, and its port is gone when the flow ends) or
  without an artifact for the target (a CSV), a link becomes plain text naming the file under reports/.

The library never imports prefect, so this lives with the flows.

    python -m flows.artifacts reports/index.md   # the index's artifact markdown, sizes on stderr (no Prefect)
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import math
import posixpath
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MAX_ARTIFACT_BYTES = 2_000_000
"""Most bytes of one artifact's markdown. Prefect's server sets no limit of its own (artifact data is a JSON
column, the API no body limit), but the UI's artifact lists fetch every artifact's data, so each page stays small."""

MIN_FIGURE_SCALE = 0.25
"""Figures are scaled down no further; a page still over MAX_ARTIFACT_BYTES shows its figures as plain text."""

FIT_TRIES = 6
"""Rounds of scaling the figures down to fit (each aims just under the budget, so one or two usually do)."""

_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
"""`[text](target)` and `![alt](target)`, as the report's builder writes them (no titles, no spaces)."""

_CODE_SPAN = re.compile(r"(`[^`\n]*`)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def png_data_uri(path: Path, scale: float = 1.0) -> str:
    """The PNG at `path` as a data URI: flattened onto white, scaled by `scale` (<= 1), a 256-colour palette."""
    from PIL import Image

    with Image.open(path) as src:
        rgba = src.convert("RGBA")
    image = Image.new("RGBA", rgba.size, "white")
    image.alpha_composite(rgba)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.convert("RGB").quantize(colors=256).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _is_relative(target: str) -> bool:
    return not (_SCHEME.match(target) or target.startswith(("#", "/")))


def _normalise(target: str) -> str:
    return posixpath.normpath(target.split("#", 1)[0])


def link_targets(text: str, images: bool) -> list[str]:
    """The relative targets of the images (`images=True`) or the links in `text`, normalised, in order, once each."""
    found: list[str] = []
    for part in _CODE_SPAN.split(text)[::2]:  # even parts are outside `code spans`
        for m in _LINK.finditer(part):
            if bool(m.group(1)) == images and _is_relative(m.group(3)):
                target = _normalise(m.group(3))
                if target not in found:
                    found.append(target)
    return found


def _rewrite(text: str, folder: str, links: Mapping[str, str], figures: Mapping[str, str] | None) -> str:
    def replace(m: re.Match[str]) -> str:
        bang, label, target = m.groups()
        if not _is_relative(target):
            return m.group(0)
        path = _normalise(target)
        if bang:
            uri = (figures or {}).get(path)
            return f"![{label}]({uri})" if uri else f"*{label}* (`{folder}/{path}`, not embedded)"
        if path in links:
            return f"[{label}]({links[path]})"
        return f"`{folder}/{path}`" if label in (path, target) else f"{label} (`{folder}/{path}`)"

    parts = _CODE_SPAN.split(text)
    return "".join(p if i % 2 else _LINK.sub(replace, p) for i, p in enumerate(parts))


def artifact_markdown(text: str, report_dir: Path, links: Mapping[str, str] | None = None,
                      max_bytes: int = MAX_ARTIFACT_BYTES) -> str:
    """`text` (a page of `report_dir`) with its figures embedded and its relative links made absolute or plain.

    `links` maps targets relative to `report_dir` (`pretrain.md`, `figures/radar_pretrain.png`) to absolute URLs;
    a relative link not in it becomes plain text. Figures are scaled down together until the markdown fits in
    `max_bytes` (at most FIT_TRIES rounds, down to MIN_FIGURE_SCALE), else shown as plain text.
    """
    links = links or {}
    folder = report_dir.name
    targets = [t for t in link_targets(text, images=True) if (report_dir / t).is_file()]
    scale = 1.0
    for _ in range(FIT_TRIES):
        figures = {t: png_data_uri(report_dir / t, scale) for t in targets}
        out = _rewrite(text, folder, links, figures)
        size = len(out.encode("utf-8"))
        if size <= max_bytes or not targets:
            return out
        uses = collections.Counter(_normalise(m.group(3)) for m in _LINK.finditer(text) if m.group(1))
        figure_bytes = sum(len(u) * uses[t] for t, u in figures.items())
        room = max_bytes - (size - figure_bytes)
        scale *= 0.95 * math.sqrt(max(room, 0) / figure_bytes)  # bytes go roughly with the pixel count
        if scale < MIN_FIGURE_SCALE:
            break
    return _rewrite(text, folder, links, None)


def _key_part(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "page"


def publish_report(index: Path, key: str, ui_url: str | None, *, footer: str = "", description: str = "",
                   create: Callable[..., Any] | None = None, max_bytes: int = MAX_ARTIFACT_BYTES) -> dict[str, Any]:
    """Publish `index` and the pages it links to as markdown artifacts; returns their ids by file name.

    `ui_url` is the Prefect UI's root (PREFECT_UI_URL; None under the ephemeral API: links become plain text);
    `create` is `prefect.artifacts.create_markdown_artifact` unless a test passes another. `footer` is appended
    to the index.
    """
    if create is None:
        from prefect.artifacts import create_markdown_artifact as create
    base = ui_url.rstrip("/") if ui_url else None
    report_dir = index.parent
    text = index.read_text(encoding="utf-8") + footer
    links: dict[str, str] = {index.name: f"{base}/artifacts/key/{key}"} if base else {}
    ids: dict[str, Any] = {}
    for page in link_targets(text, images=False):
        if not page.endswith(".md") or page == index.name or not (report_dir / page).is_file():
            continue
        page_text = (report_dir / page).read_text(encoding="utf-8")
        ids[page] = create(markdown=artifact_markdown(page_text, report_dir, links, max_bytes),
                           key=f"{key}-{_key_part(Path(page).stem)}",
                           description=f"{report_dir.name}/{page}, figures embedded (linked from {key})")
        if base:
            links[page] = f"{base}/artifacts/artifact/{ids[page]}"
            for figure in link_targets(page_text, images=True):
                links.setdefault(figure, links[page])  # a figure link opens the page that shows the figure
    ids[index.name] = create(markdown=artifact_markdown(text, report_dir, links, max_bytes), key=key,
                             description=description)
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flows.artifacts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", type=Path, help="a page of the report folder, e.g. reports/index.md")
    ap.add_argument("--max-bytes", type=int, default=MAX_ARTIFACT_BYTES)
    a = ap.parse_args(argv)
    text = a.page.read_text(encoding="utf-8")
    out = artifact_markdown(text, a.page.parent, max_bytes=a.max_bytes)
    sys.stdout.write(out)
    print(f"{a.page}: {len(text.encode())} bytes as written, {len(out.encode())} as an artifact "
          f"({len(link_targets(text, images=True))} figures)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
