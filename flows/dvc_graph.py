"""The DVC pipeline as the flow sees it: stage cells, their dependency order, what is stale.

DVC is the one description of the work. This module reads it, never a second list:

- cells and edges come from `dvc.repo.Repo(root).index`, the same index `dvc dag` draws and
  `dvc repro` plans from. Each matrix cell is one stage addressed `stage@cell` (`pretrain@mha`),
  `index.graph` has an edge from every stage to each stage whose outs it depends on, and each
  stage carries its `meta:` mapping from dvc.yaml. The index is read once, in one thread, and
  only read (no DVC lock needed), so the in-process API is safe here and ~0.3 s.
- staleness comes from the `dvc status --json <cells>` command: a separate process that waits
  for DVC's repo lock (`--wait-for-lock`) while another `dvc repro` commits, and never shares a
  `Repo` object between threads. `{}` means up to date.

dvc.yaml metadata the flow honours (DVC stores `meta:` and ignores it):
- `meta: {measured: true}`: the stage's cells are measured; at most one runs per device at a time.
- `meta: {report: <path of a markdown file among its outs>}`: the report stage; the flow re-runs it
  on every flow run and publishes that file as a Prefect artifact.

    python -m flows.dvc_graph          # the cells in dependency order, with their flags and status
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROW_FILE = "row.json"
"""Name of a measured cell's row file among its outs (efficientllm.records: one row per cell)."""


@dataclass(frozen=True)
class Cell:
    """One runnable unit of the pipeline: a plain stage, or one cell of a matrix stage."""

    name: str
    """DVC address, the argument of `dvc repro --single-item`: `prepare`, `pretrain@mha`."""
    stage: str
    """Stage name in dvc.yaml: `pretrain`."""
    item: str | None
    """Matrix cell slug (`mha`); None for a plain stage."""
    upstream: tuple[str, ...]
    """Names of the cells whose outs this cell depends on (direct edges only)."""
    deps: tuple[str, ...]
    """Dependency paths relative to the repo root (params files included)."""
    outs: tuple[str, ...]
    """Output paths relative to the repo root (plots and metrics included)."""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """The stage's `meta:` mapping from dvc.yaml."""

    @property
    def measured(self) -> bool:
        """True when dvc.yaml marks the stage `meta: {measured: true}`: one cell per device at a time."""
        return bool(self.meta.get("measured", False))

    @property
    def report_path(self) -> str | None:
        """For the report stage, the markdown file (`meta: {report: ...}`) to publish; else None."""
        value = self.meta.get("report")
        return str(value) if value else None

    @property
    def row_path(self) -> str | None:
        """The cell's row file (`results/<stage>/<cell>/row.json`) when it declares one."""
        return next((o for o in self.outs if Path(o).name == ROW_FILE), None)

    @property
    def axis(self) -> str:
        """The benchmark axis of the cell's rows (`meta: {axis: ...}`, else the stage name)."""
        return str(self.meta.get("axis", self.stage))


@dataclass(frozen=True)
class Pipeline:
    """Every cell of the DVC pipeline, in dependency order (ties keep dvc.yaml order)."""

    cells: tuple[Cell, ...]

    def __getitem__(self, name: str) -> Cell:
        for cell in self.cells:
            if cell.name == name:
                return cell
        raise KeyError(f"no stage or cell {name!r} in the DVC pipeline (have: {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cells]

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """Every cell the given cells depend on, transitively (the given ones excluded)."""
        seen: set[str] = set()
        todo = [u for n in names for u in self[n].upstream]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self[n].upstream)
        return seen

    def select(self, stages: Sequence[str] | None = None, cells: Sequence[str] | None = None,
               upstream: bool = True, report: bool = True) -> list[Cell]:
        """The cells a flow run covers, in dependency order.

        `stages` (dvc.yaml stage names, i.e. the axes) and `cells` (globs over `stage@cell` names,
        e.g. `pretrain@gqa*`) both narrow the selection; None means no narrowing. With `upstream`,
        the cells the selected ones depend on are added, as `dvc repro <target>` does (they run only
        when stale). With `report`, report stages (meta `report:`) are always added.
        """
        known_stages = {c.stage for c in self.cells}
        for s in stages or ():
            if s not in known_stages:
                raise ValueError(f"unknown stage {s!r} (dvc.yaml has: {', '.join(sorted(known_stages))})")
        for pattern in cells or ():
            if not any(fnmatch.fnmatchcase(c.name, pattern) for c in self.cells):
                raise ValueError(f"cell filter {pattern!r} matches no cell (have: {', '.join(self.names)})")

        def chosen(c: Cell) -> bool:
            in_stages = stages is None or c.stage in stages
            in_cells = cells is None or any(fnmatch.fnmatchcase(c.name, p) for p in cells)
            return in_stages and in_cells

        picked = {c.name for c in self.cells if chosen(c)}
        if upstream:
            picked |= self.ancestors(picked)
        if report:
            picked |= {c.name for c in self.cells if c.report_path}
        return [c for c in self.cells if c.name in picked]


def _rel(root: Path, fs_path: str) -> str:
    return Path(os.path.relpath(fs_path, root)).as_posix()


def _address(root: Path, stage: Any) -> str:
    """The stage's address for DVC commands run in `root`: `name`, or `sub/dvc.yaml:name` for a nested
    dvc.yaml (`stage.addressing` is relative to the process's working directory, not to `root`)."""
    dvcfile = _rel(root, stage.path)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def read_pipeline(root: str | os.PathLike) -> Pipeline:
    """The pipeline of the DVC project at `root`, from DVC's own index (dvc.yaml + params resolved)."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        index = repo.index
        # .dvc files (`dvc add`-tracked data) are stages too, but have no command to run.
        stages = [s for s in index.stages if isinstance(s, PipelineStage) and s.cmd]
        order = {s: i for i, s in enumerate(stages)}
        graph = index.graph.subgraph(stages)
        # Edges point from a stage to the stages it depends on; reverse them for dependency order.
        topo = list(nx.lexicographical_topological_sort(graph.reverse(copy=True), key=order.__getitem__))
        cells = []
        for s in topo:
            stage_name, _, item = s.name.partition("@")  # dvc.parsing.JOIN joins stage and matrix cell
            cells.append(Cell(
                name=_address(root, s),
                stage=stage_name,
                item=item or None,
                upstream=tuple(_address(root, d) for d in sorted(graph.successors(s), key=order.__getitem__)),
                deps=tuple(_rel(root, d.fs_path) for d in s.deps),
                outs=tuple(_rel(root, o.fs_path) for o in s.outs),
                meta=dict(s.meta or {}),
            ))
    return Pipeline(tuple(cells))


def dvc_command(*args: str) -> list[str]:
    """A `dvc` command line run with this interpreter (`python -m dvc`), waiting for DVC's repo lock."""
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


def dvc_env() -> dict[str, str]:
    """Environment for DVC subprocesses: this interpreter's bin first on PATH (stage commands say
    `python`), analytics off. OpenMP's wait policy is the stages' own (params measure.omp_wait_policy)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class DvcError(RuntimeError):
    """A DVC command (not a stage) failed; the message carries its output."""


def stale(root: str | os.PathLike, names: Sequence[str], timeout_s: float = 600) -> dict[str, Any]:
    """`{cell: why}` for the cells DVC would re-run (`dvc status --json`); up-to-date cells are absent."""
    if not names:
        return {}
    p = subprocess.run(dvc_command("status", "--json", *names), cwd=root, env=dvc_env(),
                       capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise DvcError(f"dvc status failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    out = p.stdout.strip()
    # Warnings may precede the JSON document on stdout; it is the last line.
    return json.loads(out.splitlines()[-1]) if out else {}


def missing_deps(root: str | os.PathLike, cell: Cell) -> list[str]:
    """Dependency paths of `cell` that do not exist in the workspace (DVC would refuse to run it)."""
    return [d for d in cell.deps if not (Path(root) / d).exists()]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="flows.dvc_graph", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=".", help="DVC project root")
    args = ap.parse_args(argv)
    pipeline = read_pipeline(args.repo)
    why = stale(args.repo, pipeline.names)
    for c in pipeline.cells:
        flags = ",".join(f for f, on in (("measured", c.measured), ("report", bool(c.report_path))) if on)
        print(f"{c.name:32s} {'stale' if c.name in why else 'up to date':10s} {flags:16s} "
              f"after: {', '.join(c.upstream) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
