"""The walls of the code base, as tests: dvc.yaml deps that cannot drift, and imports that cannot cross.

- Every stage of dvc.yaml (`python -m stages.<name>`) lists as `deps:` every project file it imports, however
  indirectly: the transitive closure of `import` / `from ... import` statements over stages/, efficientllm/ and
  flows/ (imports inside functions included: they run too), each module with the `__init__.py` of every package
  above it. A file missing from the deps is a change DVC would not re-run the stage for.
- efficientllm/ (the library) imports neither dvc, prefect, stages nor flows, except its one DVC-aware package
  efficientllm/pipeline/ (profiles run as `dvc exp run`, rows read at other revisions).
- stages/ never imports flows/ (flows run stages, not the other way round).

Pure `ast` over the source files: nothing of the project is imported, so the checks take well under a second.
Each checker takes a repository root, and the last tests plant a drift in a small fake tree to show it is caught.

    python -m pytest tests/test_architecture.py -q
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

PROJECT_PACKAGES = ("stages", "efficientllm", "flows")
"""Top-level packages whose files are the project's code (what a stage's deps must cover)."""
LIBRARY = "efficientllm"
DVC_AWARE_PACKAGE = "efficientllm/pipeline"
"""The one part of the library allowed to import DVC (and the other outside layers)."""
LIBRARY_MUST_NOT_IMPORT = ("dvc", "prefect", "stages", "flows")
STAGE_CMD = re.compile(r"^\s*python\s+-m\s+(stages(?:\.\w+)+)(?:\s|$)")


# --- imports, statically ------------------------------------------------------------------------------------------


def module_name(root: Path, path: Path) -> str:
    """`efficientllm/data/sft.py` -> `efficientllm.data.sft`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every module named by an import statement anywhere in `path` (top level, functions, classes, branches).

    `from a.b import c` names `a.b` and `a.b.c` (the latter counts only if it is a module); relative imports are
    resolved against the file's package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(root, path) if path.name == "__init__.py" else module_name(root, path.parent)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    names.discard("")
    return names


def module_files(root: Path, name: str) -> list[str]:
    """The project files that importing module `name` executes (root-relative, posix): the `__init__.py` of each
    package on the way, then the module itself. Empty for a module outside the project or that does not exist
    (e.g. `from efficientllm.config import ConfigError` names `efficientllm.config.ConfigError`, not a module)."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return []
    files = []
    for i in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:i])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif i == len(parts) and base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
        else:
            return []
    return [f.relative_to(root).as_posix() for f in files]


def import_closure(root: Path, module: str) -> set[str]:
    """Every project file (root-relative, posix) that running `python -m <module>` imports, transitively."""
    seen: set[str] = set()
    todo = list(module_files(root, module))
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        for name in imported_modules(root, root / rel):
            todo.extend(module_files(root, name))
    return seen


# --- dvc.yaml deps cover the closure ------------------------------------------------------------------------------


def _covered(file: str, deps: list[str]) -> bool:
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


def stage_deps_problems(root: Path) -> dict[str, list[str]]:
    """Stage name -> the project files its command imports that its `deps:` do not cover (a dep equal to the file,
    or a folder above it), sorted; plus a note for a command that is not `python -m stages.<name> ...`.
    Deps with `${...}` (data and model folders chosen by params) are ignored. Stages with nothing missing are
    left out."""
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    problems: dict[str, list[str]] = {}
    for stage, spec in (dvc_yaml.get("stages") or {}).items():
        cmd = spec.get("cmd", "")
        cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
        match = STAGE_CMD.match(cmd)
        if not match:
            problems[stage] = [f"(cmd is not `python -m stages.<name> ...`: {cmd!r})"]
            continue
        deps = [str(d) for d in spec.get("deps") or () if "${" not in str(d)]
        closure = import_closure(root, match.group(1))
        if not closure:
            problems[stage] = [f"(module {match.group(1)} not found under {root})"]
            continue
        missing = sorted(f for f in closure if not _covered(f, deps))
        if missing:
            problems[stage] = missing
    return problems


# --- import walls -------------------------------------------------------------------------------------------------


def _top_level_imports(root: Path, path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(root, path)}


def library_wall_violations(root: Path) -> dict[str, list[str]]:
    """efficientllm file -> the forbidden top-level packages (dvc, prefect, stages, flows) it imports, for every
    file outside the DVC-aware package."""
    bad: dict[str, list[str]] = {}
    for path in sorted((root / LIBRARY).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(DVC_AWARE_PACKAGE + "/"):
            continue
        hits = sorted(_top_level_imports(root, path) & set(LIBRARY_MUST_NOT_IMPORT))
        if hits:
            bad[rel] = hits
    return bad


def stages_importing_flows(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "stages").rglob("*.py")
                  if "flows" in _top_level_imports(root, p))


def _report(problems: dict[str, list[str]]) -> str:
    return "\n".join(f"  {key}: {', '.join(values)}" for key, values in sorted(problems.items()))


# --- the real repository ------------------------------------------------------------------------------------------


def test_every_stage_depends_on_every_project_file_it_imports():
    problems = stage_deps_problems(REPO)
    assert not problems, ("dvc.yaml deps miss project files the stage's command imports (add them to `deps:`, "
                          "stage -> missing files):\n" + _report(problems))


def test_the_library_imports_no_pipeline_layer_outside_its_dvc_aware_package():
    assert (REPO / DVC_AWARE_PACKAGE / "__init__.py").is_file()
    bad = library_wall_violations(REPO)
    assert not bad, (f"efficientllm/ must not import {', '.join(LIBRARY_MUST_NOT_IMPORT)} outside "
                     f"{DVC_AWARE_PACKAGE}/ (file -> imports):\n" + _report(bad))


def test_stages_do_not_import_flows():
    assert stages_importing_flows(REPO) == []


def test_stages_are_found_and_their_closure_is_not_trivial():
    """Guards the checker itself against passing vacuously (a parse that finds no stage or no imports)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert "pretrain" in stages and "report" in stages
    closure = import_closure(REPO, "stages.pretrain")
    assert {"stages/__init__.py", "stages/pretrain.py", "efficientllm/__init__.py", "efficientllm/records.py"} \
        <= closure


# --- planted drifts -----------------------------------------------------------------------------------------------


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _fake_project(root: Path) -> None:
    _write(root, "dvc.yaml", yaml.safe_dump({"stages": {
        "x": {"matrix": {"v": ["a", "b"]}, "cmd": "python -m stages.x --v ${item.v}",
              "deps": ["data/${item.v}", "stages/__init__.py", "stages/x.py", "efficientllm/__init__.py",
                       "efficientllm/a.py", "efficientllm/sub"]},
    }}))
    _write(root, "stages/__init__.py", "")
    _write(root, "stages/x.py", "import json\n\nfrom efficientllm import a\n")
    _write(root, "efficientllm/__init__.py", "")
    _write(root, "efficientllm/a.py", "def f():\n    from efficientllm.sub import c\n    from . import b\n")
    _write(root, "efficientllm/b.py", "import torch\n")
    _write(root, "efficientllm/sub/__init__.py", "")
    _write(root, "efficientllm/sub/c.py", "from efficientllm.data import sft\n")
    _write(root, "efficientllm/data/__init__.py", "")
    _write(root, "efficientllm/data/sft.py", "X = 1\n")


def test_a_planted_missing_dep_is_reported_with_all_its_files(tmp_path):
    _fake_project(tmp_path)
    assert stage_deps_problems(tmp_path) == {
        # b.py: a relative import inside a function; data/: a package import pulls in its __init__.py, and
        # `from efficientllm.data import sft` its submodule; sub/ is covered by the folder dep.
        "x": ["efficientllm/b.py", "efficientllm/data/__init__.py", "efficientllm/data/sft.py"],
    }
    text = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    text["stages"]["x"]["deps"] += ["efficientllm/b.py", "efficientllm/data"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(text))
    assert stage_deps_problems(tmp_path) == {}


def test_a_stage_command_the_checker_cannot_follow_is_reported(tmp_path):
    _fake_project(tmp_path)
    _write(tmp_path, "dvc.yaml", yaml.safe_dump({"stages": {"y": {"cmd": "bash run.sh", "deps": []}}}))
    assert list(stage_deps_problems(tmp_path)) == ["y"]


def test_a_planted_wall_breach_is_reported(tmp_path):
    _fake_project(tmp_path)
    _write(tmp_path, "efficientllm/b.py", "def load():\n    import dvc.api\n    return dvc.api\n")
    _write(tmp_path, "efficientllm/sub/c.py", "from prefect import flow\nfrom stages import x\n")
    _write(tmp_path, "efficientllm/pipeline/__init__.py", "")
    _write(tmp_path, "efficientllm/pipeline/revisions.py", "from dvc.api import DVCFileSystem\n")  # allowed here
    _write(tmp_path, "stages/y.py", "if True:\n    import flows.benchmark\n")
    assert library_wall_violations(tmp_path) == {"efficientllm/b.py": ["dvc"],
                                                 "efficientllm/sub/c.py": ["prefect", "stages"]}
    assert stages_importing_flows(tmp_path) == ["stages/y.py"]
