"""Loading and running an exported model version directory (in Triton or in-process).

Vendored into every bundle next to :mod:`offline.shallow_model` and :mod:`offline.embeddings`;
the Triton ``model.py`` and the export self-check both call :func:`split_scores`, so the score
the check compares against is computed by the very code Triton runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from offline.embeddings import EmbeddingTable
from offline.shallow_model import ShallowModel, build_model, score_stacked
from schemas.plan import ServingPlan, load_plan
from schemas.tensors import stack_requests

WEIGHTS_FILE = "model.pt"
EMBEDDINGS_FILE = "embeddings.parquet"
PLAN_FILE = "plan.yaml"
MANIFEST_FILE = "manifest.json"


@dataclass
class Bundle:
    plan: ServingPlan
    model: ShallowModel
    embeddings: EmbeddingTable
    manifest: dict


def load_bundle(version_dir: str | Path, device: str = "cpu") -> Bundle:
    version_dir = Path(version_dir)
    plan = load_plan(version_dir / PLAN_FILE)
    state = torch.load(version_dir / WEIGHTS_FILE, map_location=device, weights_only=True)
    model = build_model(plan, int(state["emb_dim"]), dict(state["config"]))
    model.load_state_dict(state["state_dict"])
    model.to(device).eval()
    table = EmbeddingTable.from_parquet(version_dir / EMBEDDINGS_FILE, plan)
    if table.dim != model.emb_dim:
        raise ValueError(f"{EMBEDDINGS_FILE}: embedding dim {table.dim} != model's {model.emb_dim}")
    manifest_path = version_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return Bundle(plan, model, table, manifest)


def request_error(plan: ServingPlan, tensors: dict) -> str | None:
    """Why one request (batch dim b >= 1, RTI maybe pre-padded) cannot be scored; None if fine.

    Triton itself rejects missing tensors and wrong datatypes with messages naming the tensor;
    this checks what its config cannot express: equal batch dims and equal sequence lengths of
    the columns of one hop.
    """
    batch = None
    seq: dict[str, tuple[str, int]] = {}
    for spec in plan.tensors:
        arr = tensors.get(spec.name)
        if arr is None:
            return f"{spec.name}: missing tensor"
        want_ndim = 3 if spec.kind == "rti" else 2
        if arr.ndim != want_ndim or arr.shape[-1] != 1:
            shape = "[b, seq_len, 1]" if spec.kind == "rti" else "[b, 1]"
            return f"{spec.name}: expected shape {shape}, got {list(arr.shape)}"
        if batch is None:
            batch = (spec.name, arr.shape[0])
        elif arr.shape[0] != batch[1]:
            return f"{spec.name}: batch size {arr.shape[0]} differs from {batch[1]} of {batch[0]}"
        if spec.kind == "rti":
            first = seq.setdefault(spec.hop_key, (spec.name, arr.shape[1]))
            if arr.shape[1] != first[1]:
                return f"{spec.name}: seq_len {arr.shape[1]} differs from {first[1]} of {first[0]}"
    return None


def split_scores(bundle: Bundle, requests: list[dict]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Score requests together; per request ``(score float32[b, 1], cold_start int8[b, K] or None)``."""
    stacked = stack_requests(bundle.plan, requests)
    scores, cold = score_stacked(bundle.model, bundle.plan, stacked, bundle.embeddings)
    out, start = [], 0
    for req in requests:
        b = int(np.asarray(req["anchor_time"]).shape[0])
        s = scores[start:start + b].reshape(b, 1).astype(np.float32)
        c = cold[start:start + b].astype(np.int8) if cold.shape[1] else None
        out.append((s, c))
        start += b
    return out
