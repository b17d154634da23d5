"""Model bundles on disk: the versions of a model, the files of one, its config.pbtxt (parsed, its
tensor signature, the per-version Triton model directory with warm-up)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from google.protobuf import text_format

from schemas.plan import ServingPlan
from schemas.plan_loading import load_plan

PLAN_FILE = "plan.yaml"
MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.parquet"
CONFIG_FILE = "config.pbtxt"
REQUIRED_OUTPUTS = ("score",)


class DeployRefused(RuntimeError):
    """A deploy safety check failed; ``check`` names it."""

    def __init__(self, check: str, message: str):
        self.check = check
        super().__init__(f"deploy refused by check '{check}': {message}")


class ModelOpsError(RuntimeError):
    """An operation that cannot run (missing version, Triton error)."""


# ----- bundles on disk -------------------------------------------------------------------------

def list_versions(repository: Path, model: str) -> list[int]:
    model_dir = Path(repository) / model
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass(frozen=True)
class BundleFiles:
    repository: Path
    model: str
    version: int

    @property
    def dir(self) -> Path:
        return Path(self.repository) / self.model / str(self.version)

    @property
    def config_path(self) -> Path:
        return Path(self.repository) / self.model / CONFIG_FILE

    def require(self) -> "BundleFiles":
        if not self.dir.is_dir():
            have = list_versions(self.repository, self.model)
            raise ModelOpsError(f"version {self.version} of model {self.model!r} not found in "
                                f"{self.repository} (versions there: {have or 'none'})")
        return self

    def plan(self) -> ServingPlan:
        return load_plan(self.dir / PLAN_FILE)

    def manifest(self) -> dict:
        path = self.dir / MANIFEST_FILE
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DeployRefused("contract", f"{path} is not valid JSON ({exc})") from None


# ----- config.pbtxt ------------------------------------------------------------------------------

def parse_model_config(text: str, where: str = CONFIG_FILE):
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise DeployRefused("tensor-schema", f"{where} does not parse: {exc}") from None
    return cfg


def _dtype_name(cfg_enum_value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    name = model_config_pb2.DataType.Name(cfg_enum_value)  # TYPE_INT64
    name = name.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def config_signature(cfg) -> dict[str, dict[str, tuple]]:
    """{"inputs": {name: (datatype, dims)}, "outputs": {...}} from a parsed ModelConfig."""
    return {
        "inputs": {i.name: (_dtype_name(i.data_type), tuple(i.dims)) for i in cfg.input},
        "outputs": {o.name: (_dtype_name(o.data_type), tuple(o.dims)) for o in cfg.output},
    }


def json_config_signature(cfg: Mapping) -> dict[str, dict[str, tuple]]:
    """The same signature from Triton's JSON model config (GET /v2/models/<m>/config)."""
    def dtype(v: str) -> str:
        v = v.removeprefix("TYPE_")
        return "BYTES" if v == "STRING" else v
    return {
        "inputs": {i["name"]: (dtype(i["data_type"]), tuple(int(d) for d in i.get("dims", ())))
                   for i in cfg.get("input", ())},
        "outputs": {o["name"]: (dtype(o["data_type"]), tuple(int(d) for d in o.get("dims", ())))
                    for o in cfg.get("output", ())},
    }


def plan_signature(plan: ServingPlan) -> dict[str, tuple]:
    return {t.name: (t.triton_dtype, tuple(t.dims)) for t in plan.tensors}


def slot_config(text: str, name: str, version: int, warmup_count: int = 0) -> str:
    """The config of the per-version Triton model: ``name``, only ``version``, optional warm-up.

    ``warmup_count > 0`` writes Triton's own ``model_warmup``: the version runs that many
    zero-filled requests (empty, short and full histories) *before* it turns READY, so no live
    request meets a cold instance (cold cache, seed 002). Leading comment lines are kept.
    """

    cfg = parse_model_config(text)
    cfg.name = name
    cfg.version_policy.specific.versions[:] = [int(version)]
    del cfg.model_warmup[:]
    if warmup_count > 0:
        for seq_len in _warmup_lengths(cfg):
            w = cfg.model_warmup.add()
            w.name = f"relstream_warmup_len{seq_len}"
            w.batch_size = 1
            w.count = warmup_count
            for inp in cfg.input:
                dims = [seq_len if d == -1 else d for d in inp.dims]
                w.inputs[inp.name].data_type = inp.data_type
                w.inputs[inp.name].dims.extend(dims)
                w.inputs[inp.name].zero_data = True
    header = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            header.append(line)
        else:
            break
    return "\n".join(header + [text_format.MessageToString(cfg)])


def _warmup_lengths(cfg) -> tuple[int, ...]:
    """History lengths to warm: empty, short and 32 (the ragged inputs' variable dim)."""
    ragged = any(-1 in tuple(i.dims) for i in cfg.input)
    return (0, 4, 32) if ragged else (1,)


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link a version directory (copy where links cannot be made, e.g. across devices)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with open(fd, "w") as fh:
        fh.write(text)
    Path(tmp).replace(path)
