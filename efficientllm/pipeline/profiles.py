"""Profiles: named sets of params.yaml overrides (a scale, a dataset, a device setup) run with one command.

params.yaml is the default small CPU profile. A profile file `profiles/<name>.yaml` changes it without copying it:

    description: one line
    env: {HF_HUB_OFFLINE: "0"}           # environment of the run (e.g. network for a hub dataset)
    params:                               # section -> key -> value, as in params.yaml
      prepare: {source: fineweb_edu, block_len: 8192}
    sizes:                                # optional: named model sizes, each more overrides (any section)
      0.5b: {model: {hidden_size: 896}, pretrain: {parallelism: ddp}}
    default_size: 0.5b

`efficientllm profile <name> [--size S | --size all]` turns the profile (plus the size) into one
`dvc exp run -S '++section.key=value' ...` per size: a DVC experiment of the same pipeline with those params,
recorded next to the default run (`dvc exp show`), its rows queryable like any others. Values are written in
Hydra's override grammar (the one DVC parses `-S` with); `++` sets a key whether or not params.yaml has it.
Before anything runs, the merged params are parsed with efficientllm.config, so a typo in a profile fails here.

    efficientllm profile paper-pretrain --size 1.5b --dry-run   # print the command, run nothing
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from efficientllm.config import FREE_SECTIONS, SECTIONS, ConfigError, parse_section, read_params

PROFILES_DIR = Path("profiles")
"""Where `efficientllm profile NAME` looks for NAME.yaml (relative to the repository root, where DVC runs)."""
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-./]*$")  # Hydra reads these unquoted as the same string
_KEYWORDS = {"true", "false", "null", "nan", "inf", "on", "off", "yes", "no"}
PROFILE_KEYS = ("description", "env", "params", "sizes", "default_size")


@dataclass(frozen=True)
class Profile:
    name: str
    """File stem: profiles/<name>.yaml."""
    description: str
    """One line: what the profile is for."""
    params: dict[str, Any]
    """Overrides of params.yaml: section -> key -> value."""
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Size name -> further overrides (same form as params), applied after `params`."""
    default_size: str | None = None
    """The size a run without --size uses (None: the profile has no sizes)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set for the run."""

    def overrides(self, size: str | None = None) -> dict[str, Any]:
        """`params` deep-merged with the size's overrides (`size=None`: the default size)."""
        size = size or self.default_size
        if size is None:
            return copy.deepcopy(self.params)
        if size not in self.sizes:
            raise ConfigError(f"profile {self.name}: unknown size {size!r} (sizes: {', '.join(self.sizes)})")
        return deep_merge(self.params, self.sizes[size])


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `over` merged in: mappings merge key by key, any other value replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def profile_path(name_or_path: str | os.PathLike[str], root: str | os.PathLike[str] = ".") -> Path:
    """profiles/<name>.yaml under `root`, or the path itself when it names a .yaml file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p
    return Path(root) / PROFILES_DIR / f"{p}.yaml"


def available_profiles(root: str | os.PathLike[str] = ".") -> list[str]:
    return sorted(p.stem for p in (Path(root) / PROFILES_DIR).glob("*.yaml"))


def load_profile(name_or_path: str | os.PathLike[str], root: str | os.PathLike[str] = ".") -> Profile:
    """Read and shape-check a profile file; ConfigError names the file and the bad key."""
    path = profile_path(name_or_path, root)
    if not path.exists():
        known = ", ".join(available_profiles(root)) or "none"
        raise ConfigError(f"profile {name_or_path!r} not found at {path} (profiles: {known})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"profile {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {path}: expected a mapping with keys {', '.join(PROFILE_KEYS)}")
    unknown = sorted(set(raw) - set(PROFILE_KEYS))
    if unknown:
        raise ConfigError(f"profile {path}: unknown key {unknown[0]!r} (allowed: {', '.join(PROFILE_KEYS)})")
    params = raw.get("params") or {}
    sizes = raw.get("sizes") or {}
    env = raw.get("env") or {}
    for where, block in [("params", params), *((f"sizes.{k}", v) for k, v in sizes.items())]:
        _check_sections(path, where, block)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError(f"profile {path}: env must map names to strings (quote numbers: \"0\")")
    default_size = raw.get("default_size")
    if sizes and default_size not in sizes:
        raise ConfigError(f"profile {path}: default_size {default_size!r} is not one of {', '.join(sizes)}")
    if not sizes and default_size is not None:
        raise ConfigError(f"profile {path}: default_size given but no sizes")
    return Profile(name=path.stem, description=str(raw.get("description") or ""), params=params,
                   sizes={str(k): v or {} for k, v in sizes.items()}, default_size=default_size, env=env)


def _check_sections(path: Path, where: str, block: Any) -> None:
    if not isinstance(block, Mapping):
        raise ConfigError(f"profile {path}: {where} must be a mapping of params sections")
    for section, values in block.items():
        if section not in SECTIONS and section not in FREE_SECTIONS:
            known = ", ".join([*SECTIONS, *FREE_SECTIONS])
            raise ConfigError(f"profile {path}: {where}: unknown params section {section!r} (known: {known})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"profile {path}: {where}.{section} must be a mapping of keys")


def merged_params(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The params a run of the profile sees, every dataclass section parsed (ConfigError on a bad key or value)."""
    merged = deep_merge(base, overrides)
    for name, cls in SECTIONS.items():
        if name in merged:
            parse_section(cls, name, merged[name])
    variants = merged.get("variants") or {}
    matrix = merged.get("matrix") or {}
    missing = [slug for slug in matrix.get("pretrain") or () if slug not in variants]
    if missing:
        raise ConfigError(f"[matrix] pretrain: {', '.join(missing)} not defined in [variants]")
    return merged


# --- Hydra override strings (what `dvc exp run -S` parses) -------------------------------------------------------


def hydra_value(value: Any, where: str = "value") -> str:
    """`value` in Hydra's override grammar: null, true/false, numbers, '...'-quoted strings, [..] lists, {..} maps."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: {value} has no params.yaml form")
        if "e" in repr(value):  # DVC writes it back as e.g. 1e-05, which PyYAML (YAML 1.1) reads as a string
            raise ConfigError(f"{where}: {value!r} would come back from DVC as a string; use a value in "
                              "[1e-4, 1e16) or a scaled unit")
        return repr(value)
    if isinstance(value, str):
        # Backslashes before quotes and ${...} (an OmegaConf interpolation) change meaning in Hydra; no profile
        # value needs them, so they are refused rather than escaped.
        if "\\" in value or "${" in value:
            raise ConfigError(f"{where}: {value!r}: backslashes and '${{' are not supported in profile strings")
        if _PLAIN.match(value) and value.lower() not in _KEYWORDS:
            return value  # a plain word or path needs no quotes (keeps the printed command readable)
        return "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v, where)}" for k, v in value.items()) + "}"
    raise ConfigError(f"{where}: cannot write a {type(value).__name__} as a params value")


def hydra_overrides(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    """`++dotted.key=value` for every leaf of `overrides` (mappings are walked; lists are values), in order."""
    out: list[str] = []
    for key, value in overrides.items():
        key = str(key)
        if not key or "." in key or "=" in key or " " in key:
            raise ConfigError(f"profile key {prefix + key!r}: keys must be non-empty, without '.', '=' or spaces")
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(hydra_overrides(value, dotted + "."))
        else:
            out.append(f"++{dotted}={hydra_value(value, dotted)}")
    return out


def experiment_name(profile: Profile, size: str | None) -> str:
    return f"{profile.name}-{size}" if size else profile.name


def dvc_exp_command(profile: Profile, size: str | None = None, *, queue: bool = False,
                    extra_set: list[str] | None = None, dvc: str = "dvc") -> list[str]:
    """`dvc exp run --name <profile>-<size> -S ... [--queue]` for one size of the profile."""
    cmd = [dvc, "exp", "run", "--name", experiment_name(profile, size or profile.default_size)]
    for override in [*hydra_overrides(profile.overrides(size)), *(extra_set or [])]:
        cmd += ["-S", override]
    if queue:
        cmd.append("--queue")
    return cmd


def _shell_line(cmd: list[str], env: Mapping[str, str]) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (prefix + " " if prefix else "") + shlex.join(cmd)


def profile_command(argv: list[str]) -> int:
    """Run a profile (profiles/NAME.yaml) as DVC experiments: one `dvc exp run -S ...` per size."""
    ap = argparse.ArgumentParser(
        prog="efficientllm profile",
        description="Run the pipeline with a profile's params overrides, as a DVC experiment per model size "
                    "(`dvc exp run -S '++section.key=value' ...`). The default params.yaml stays as it is.",
        epilog="example: efficientllm profile paper-pretrain --size 1.5b --dry-run",
    )
    ap.add_argument("name", nargs="?", help="profile name (profiles/NAME.yaml) or a path to a profile .yaml")
    ap.add_argument("--size", default=None, help="model size of the profile, or 'all' (default: its default_size)")
    ap.add_argument("--queue", action="store_true", help="queue the experiments (run them with `dvc queue start`)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--list", action="store_true", help="list the profiles and their sizes")
    ap.add_argument("-S", "--set-param", dest="extra", action="append", default=[],
                    help="one more Hydra override passed to dvc exp run after the profile's (repeatable)")
    ap.add_argument("--params", default="params.yaml", help="the params file the profile overrides")
    args = ap.parse_args(argv)

    if args.list or not args.name:
        for name in available_profiles():
            p = load_profile(name)
            sizes = f" (sizes: {', '.join(p.sizes)}; default {p.default_size})" if p.sizes else ""
            print(f"{name}: {p.description}{sizes}")
        return 0
    try:
        profile = load_profile(args.name)
        sizes = list(profile.sizes) if args.size == "all" else [args.size or profile.default_size]
        base = read_params(args.params)
        commands = []
        for size in sizes:
            merged_params(base, profile.overrides(size))  # a bad value fails now, not in a stage hours later
            commands.append(dvc_exp_command(profile, size, queue=args.queue, extra_set=args.extra))
    except ConfigError as e:
        print(f"efficientllm profile: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cmd in commands:
            print(_shell_line(cmd, profile.env))
        if args.queue and profile.env:
            print("# queued runs inherit the environment of `dvc queue start`: run it with the same variables")
        return 0
    env = {**os.environ, **profile.env}
    for cmd in commands:
        print(_shell_line(cmd, profile.env), flush=True)
        code = subprocess.run(cmd, env=env).returncode
        if code:
            return code
    return 0
