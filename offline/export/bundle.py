"""Loading and running an exported model version directory (in Triton or in-process), either kind.

Vendored into every bundle next to :mod:`offline.distillation.shallow_model` and
:mod:`offline.embeddings`. The Triton ``model.py``, the export self-check and in-process callers
(the demo's reference scores, the recommend endpoint's tests) all call :func:`split_scores`, so
every path computes scores with the very code Triton runs.

A version directory holds ``model.pt`` (state dict + head configuration), ``embeddings.parquet``,
``plan.yaml``, ``manifest.json`` and, for ranking plans, ``catalog.parquet``: the most frequent
candidates before the export cut (``product_id`` int64, ``rank`` int32 from 1, ``purchases``
int64), the candidate set of "from catalog top-N" requests.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from offline.distillation.shallow_model import ShallowModel, load_model, prepare_features, serve
from offline.embeddings import EmbeddingTable
from schemas.plan import ANCHOR_TIME, ServingPlan
from schemas.plan_loading import load_plan
from schemas.tensors import PAD_TIME, stack_requests

log = logging.getLogger(__name__)
# A traced forward is used only if it matches the eager model this closely on the check batches.
TRACE_TOLERANCE = 1e-6

WEIGHTS_FILE = "model.pt"
EMBEDDINGS_FILE = "embeddings.parquet"
PLAN_FILE = "plan.yaml"
MANIFEST_FILE = "manifest.json"
CATALOG_FILE = "catalog.parquet"
CATALOG_COLUMNS = ("product_id", "rank", "purchases")


@dataclass
class Bundle:
    plan: ServingPlan
    model: ShallowModel
    embeddings: EmbeddingTable
    manifest: dict
    catalog: np.ndarray  # ranking plans: candidate ids, most frequent first (may be empty)
    traced: "TracedModel | None" = None  # same forward as ``model``, as one TorchScript graph

    @property
    def scoring_model(self):
        """What :func:`split_scores` runs: the traced forward when it passed its check."""
        return self.traced if self.traced is not None else self.model

    def top_catalog(self, n: int) -> np.ndarray:
        """The first ``n`` catalog candidates (the "from catalog top-N" candidate set)."""
        return self.catalog[:n]


class TracedModel:
    """The scoring head with its ``forward`` replaced by a ``torch.jit.trace`` of its
    :class:`QueryReadout` (the last layer for the query token only).

    The graph is the same operations (scores within float rounding of the eager model on the check
    batches); what goes is the Python of ~40 module calls per forward, ~0.3 ms per Triton call,
    which dominates small batches, and the last layer's work on every token but the query. It quacks like the model for :func:`offline.distillation.shallow_model.serve`, so the
    serving computation (features, sigmoid, cold-start flags) stays the shared one.

    A stacked batch pads every window to the batch's longest, and the encoder's cost grows with
    the padded length (a 4-interaction row padded to 32 costs as much as a 32-interaction one).
    So rows are grouped by length and each group runs with its padding trimmed: padded tokens are
    masked out of attention, so a row's score does not depend on how much padding it carries
    (checked against the eager model at load like the trace itself)."""

    # cost model of a group: one more graph call + row gathers (~0.5 ms) ~ 250 tokens x rows
    # (~2 us per token and row on this CPU, with the query readout)
    CALL_COST_TOKENS = 250

    def __init__(self, model: ShallowModel, graph):
        self.model = model
        self.graph = graph
        self.layout = model.layout
        self.config = model.config
        self.emb_dim = model.emb_dim

    def eval(self) -> "TracedModel":
        return self

    def __call__(self, batch: dict) -> torch.Tensor:
        hops = self.layout.hop_keys
        if not hops or batch["fact"].shape[0] < 2:
            return self.graph(batch)
        # per row and hop: tokens up to the last valid one (padding may sit anywhere)
        ends = []
        for h in hops:
            valid = batch[f"valid:{h}"].numpy()
            if valid.shape[1] == 0:  # no history in the whole batch (e.g. window store down)
                ends.append(np.zeros(valid.shape[0], np.int64))
                continue
            last = valid.shape[1] - np.argmax(valid[:, ::-1], axis=1)
            ends.append(np.where(valid.any(axis=1), last, 0))
        ends = np.stack(ends, axis=1)  # [B, H]
        groups = length_groups(1 + ends.sum(axis=1), self.CALL_COST_TOKENS)
        if len(groups) == 1 and (ends.max(axis=0) == [batch[f"valid:{h}"].shape[1] for h in hops]).all():
            return self.graph(batch)
        out = torch.empty(batch["fact"].shape[0], dtype=torch.float32)
        for rows in groups:
            idx = torch.from_numpy(rows)
            sub = {k: v.index_select(0, idx) for k, v in batch.items()}
            for j, h in enumerate(hops):
                keep = int(ends[rows, j].max())
                sub[f"tokens:{h}"] = sub[f"tokens:{h}"][:, :keep]
                sub[f"valid:{h}"] = sub[f"valid:{h}"][:, :keep]
            out[idx] = self.graph(sub)
        return out


class QueryReadout(torch.nn.Module):
    """The scoring head's forward as served: the same parameters and operations, with two
    changes that leave the scores equal within float rounding (checked against the eager model at
    load, :data:`TRACE_TOLERANCE`):

    * the last encoder layer runs for the query token only: the head reads only the query token's
      output (``enc[:, 0]``), and in the last layer the other tokens feed it only as attention
      keys/values, so that layer needs every token's keys and values but the queries, attention
      output, residual and feed-forward block of one token per row instead of all ~65;
    * attention is ``scaled_dot_product_attention`` with a boolean key mask instead of the
      encoder layer's fused path, whose masked softmax alone was a quarter of the forward's CPU.
    """

    def __init__(self, model: ShallowModel):
        super().__init__()
        self.model = model
        for layer in model.encoder.layers:
            if not (layer.norm_first and layer.self_attn.batch_first and layer.self_attn._qkv_same_embed_dim):
                raise ValueError("query readout: expects pre-norm, batch-first encoder layers")
        if model.encoder.norm is not None:
            raise ValueError("query readout: expects an encoder without a final norm")
        self.layers = model.encoder.layers

    def forward(self, batch: dict) -> torch.Tensor:
        x, mask, q = self.model.sequence(batch)
        attend = ~mask[:, None, None, :]  # [B, 1, 1, L]: True = a key to attend to
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = encoder_layer(layer, x, attend, query_only=i == last)
        return self.model.head(torch.cat([x[:, 0], q], dim=1)).squeeze(1)


def encoder_layer(layer, x: torch.Tensor, attend: torch.Tensor, query_only: bool = False) -> torch.Tensor:
    """One pre-norm ``nn.TransformerEncoderLayer`` in eval mode ([B, L, d] -> [B, L, d]); with
    ``query_only`` the output of position 0 alone ([B, 1, d]). ``attend`` [B, 1, 1, L]: the keys
    each row may attend to."""
    attn = layer.self_attn
    d, heads = attn.embed_dim, attn.num_heads
    b, n = x.shape[0], x.shape[1]
    h = layer.norm1(x)
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    if query_only:
        m = 1
        query = torch.nn.functional.linear(h[:, :1], w[:d], bias[:d]).view(b, m, heads, d // heads)
        kv = torch.nn.functional.linear(h, w[d:], bias[d:]).view(b, n, 2, heads, d // heads)
        keys, values = kv[:, :, 0], kv[:, :, 1]
        x = x[:, :1]
    else:
        m = n
        qkv = torch.nn.functional.linear(h, w, bias).view(b, n, 3, heads, d // heads)
        query, keys, values = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    att = torch.nn.functional.scaled_dot_product_attention(query.transpose(1, 2), keys.transpose(1, 2),
                                                           values.transpose(1, 2), attn_mask=attend)
    x = x + attn.out_proj(att.transpose(1, 2).reshape(b, m, d))
    return x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))


def length_groups(tokens: np.ndarray, call_cost_tokens: float) -> list[np.ndarray]:
    """Row indices grouped by sequence length: power-of-two buckets of ``tokens`` (per row), and a
    bucket merged into the next longer one while padding it up costs less than a separate call
    (rows x extra tokens < ``call_cost_tokens``)."""
    bucket = np.ceil(np.log2(np.maximum(tokens, 1))).astype(np.int64)
    buckets = [np.flatnonzero(bucket == b) for b in np.unique(bucket)]  # shortest first
    out: list[np.ndarray] = []
    pending = buckets[0]
    for nxt in buckets[1:]:
        extra = (tokens[nxt].max() - tokens[pending].max()) * len(pending)
        if extra < call_cost_tokens:
            pending = np.concatenate([pending, nxt])
        else:
            out.append(pending)
            pending = nxt
    out.append(pending)
    return out


def check_batches(plan: ServingPlan, anchor_time: int = 1_700_000_000 * 10**9) -> list[dict]:
    """Stacked tensors covering the shapes a forward meets: batches without any history (as when
    the window store is down), with one hop empty in every row, and with different, partly empty
    window lengths per hop (zeros/ids/b"x" as values)."""
    out = []
    for lengths in ([(0, 0)], [(3, 7), (1, 0), (5, 2)], [(2, 2), (32, 1)], [(0, 0), (0, 0)],
                    [(0, 3), (0, 5), (0, 1)]):
        b = len(lengths)
        anchors = anchor_time + np.arange(b, dtype=np.int64) * 60 * 10**9
        stacked = {}
        for spec in plan.tensors:
            dtype = np.dtype(spec.numpy_dtype)
            if spec.kind == "rti":
                hop = plan.hop_keys.index(spec.hop_key)
                lens = [row[hop % len(row)] for row in lengths]
                arr = np.zeros((b, max(lens), 1), dtype) if dtype != object else np.full((b, max(lens), 1), b"x", object)
                time_col = plan.interaction_table(plan.hop(spec.hop_key)).time_column
                for i, n in enumerate(lens):
                    if spec.column == time_col:
                        arr[i, :n, 0] = anchors[i] - (np.arange(n, 0, -1) * 7 * 60 * 10**9)
                        arr[i, n:, 0] = PAD_TIME
                    elif dtype != object:
                        arr[i, :n, 0] = np.arange(1, n + 1) * (3 if dtype.kind == "f" else 1) % 11
            elif spec.kind == "anchor" or spec.dtype == "timestamp":
                arr = anchors.reshape(b, 1).astype(dtype)
            elif dtype == object:
                arr = np.full((b, 1), b"x", object)
            else:
                arr = (np.arange(b).reshape(b, 1) * 5 + 2).astype(dtype)
            stacked[spec.name] = arr
        out.append(stacked)
    return out


def trace_model(bundle: Bundle) -> TracedModel | None:
    """The traced forward if it reproduces the eager model (|diff| <= TRACE_TOLERANCE on
    :func:`check_batches`), else None (the eager model serves)."""
    plan, model = bundle.plan, bundle.model
    if plan.is_ranking:
        return None  # the ranking head's cost is its candidates, not Python per module call
    try:
        batches = check_batches(plan)
        feats = [prepare_features(model, plan, st, bundle.embeddings) for st in batches]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(QueryReadout(model).eval(), (feats[1],), strict=False, check_trace=False)
            traced = TracedModel(model, graph)
            for st in batches:
                want = serve(model, plan, st, bundle.embeddings)["score"]
                got = serve(traced, plan, st, bundle.embeddings)["score"]
                diff = float(np.max(np.abs(want - got)))
                if not diff <= TRACE_TOLERANCE:
                    log.warning("traced forward differs from the model by %.2e: serving the eager model", diff)
                    return None
    except Exception as exc:  # noqa: BLE001 - tracing is an optimisation; the eager model always works
        log.warning("could not trace the model (%s: %s): serving the eager model", type(exc).__name__, exc)
        return None
    return traced


def write_catalog(path: str | Path, product_ids, purchases) -> Path:
    """``catalog.parquet``: products in rank order (``purchases`` descending, as given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.asarray(product_ids, np.int64).reshape(-1)
    counts = np.asarray(purchases, np.int64).reshape(-1)
    if ids.shape != counts.shape:
        raise ValueError(f"catalog: {len(ids)} product ids but {len(counts)} purchase counts")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("catalog.product_id: duplicate product ids")
    pq.write_table(pa.table({"product_id": pa.array(ids, pa.int64()),
                             "rank": pa.array(np.arange(1, len(ids) + 1, dtype=np.int32), pa.int32()),
                             "purchases": pa.array(counts, pa.int64())}), path)
    return Path(path)


def read_catalog(path: str | Path) -> np.ndarray:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        return np.zeros(0, np.int64)
    table = pq.read_table(path)
    for col in CATALOG_COLUMNS:
        if col not in table.column_names:
            raise ValueError(f"{path}: missing column {col!r} (has {table.column_names})")
    ids = table.column("product_id").to_numpy().astype(np.int64)
    rank = table.column("rank").to_numpy()
    return ids[np.argsort(rank, kind="stable")]


def load_bundle(version_dir: str | Path, device: str = "cpu", trace: bool = True) -> Bundle:
    """``trace``: also build the TorchScript forward of a scoring head (checked against the eager
    model; CPU only)."""
    version_dir = Path(version_dir)
    plan = load_plan(version_dir / PLAN_FILE)
    model = load_model(version_dir / WEIGHTS_FILE, plan, device)
    table = EmbeddingTable.from_parquet(version_dir / EMBEDDINGS_FILE, plan)
    if table.dim != model.emb_dim:
        raise ValueError(f"{EMBEDDINGS_FILE}: embedding dim {table.dim} != model's {model.emb_dim}")
    manifest_path = version_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    bundle = Bundle(plan, model, table, manifest, read_catalog(version_dir / CATALOG_FILE))
    if trace and device == "cpu":
        bundle.traced = trace_model(bundle)
    return bundle


def request_error(plan: ServingPlan, tensors: dict) -> str | None:
    """Why one request (batch dim b >= 1, RTI and candidates maybe pre-padded) cannot be scored;
    None if fine.

    Triton rejects missing tensors and wrong datatypes itself, naming the tensor; this checks
    what its config cannot express: equal batch dims, equal sequence lengths within a hop, and
    the candidate count bound of a ranking plan.
    """
    batch = None
    seq: dict[str, tuple[str, int]] = {}
    for spec in plan.tensors:
        arr = tensors.get(spec.name)
        if arr is None:
            return f"{spec.name}: missing tensor"
        want_ndim = 3 if spec.ragged else 2
        if arr.ndim != want_ndim or arr.shape[-1] != 1:
            shape = ("[b, n_candidates, 1]" if spec.kind == "candidate" else "[b, seq_len, 1]") if spec.ragged \
                else "[b, 1]"
            return f"{spec.name}: expected shape {shape}, got {list(arr.shape)}"
        if batch is None:
            batch = (spec.name, arr.shape[0])
        elif arr.shape[0] != batch[1]:
            return f"{spec.name}: batch size {arr.shape[0]} differs from {batch[1]} of {batch[0]}"
        if spec.kind == "candidate" and not 1 <= arr.shape[1] <= plan.max_candidates:
            return f"{spec.name}: expected 1 to {plan.max_candidates} candidates, got {arr.shape[1]}"
        if spec.kind == "rti":
            first = seq.setdefault(spec.hop_key, (spec.name, arr.shape[1]))
            if arr.shape[1] != first[1]:
                return f"{spec.name}: seq_len {arr.shape[1]} differs from {first[1]} of {first[0]}"
    return None


def split_scores(bundle: Bundle, requests: list[dict]) -> list[dict[str, np.ndarray]]:
    """Score requests together; per request the plan's outputs by name: ``score`` float32
    ``[b, 1]`` (scoring) or ``[b, n]`` with that request's own candidate count ``n`` (ranking),
    ``cold_start`` int8 ``[b, K]`` when the plan has embedding keys, and ``candidate_cold_start``
    int8 ``[b, n]`` (ranking)."""
    plan = bundle.plan
    # the scorer sends each micro-batch pre-stacked as one request: nothing to stack then
    stacked = requests[0] if len(requests) == 1 else stack_requests(plan, requests)
    outs = serve(bundle.scoring_model, plan, stacked, bundle.embeddings)
    outs["score"] = outs["score"].reshape(len(outs["score"]), -1)  # scoring [B] -> [B, 1]
    result, start = [], 0
    for req in requests:
        b = int(np.asarray(req[ANCHOR_TIME]).shape[0])
        n = int(np.asarray(req[plan.candidate_tensor]).shape[1]) if plan.is_ranking else 1
        one = {}
        for out in plan.outputs:
            arr = outs[out.name][start:start + b]
            if tuple(out.dims) == (-1,):  # one value per candidate
                arr = arr[:, :n]
            one[out.name] = arr.astype(np.float32 if out.triton_dtype == "FP32" else np.int8)
        result.append(one)
        start += b
    return result


__all__ = ["Bundle", "CATALOG_FILE", "EMBEDDINGS_FILE", "MANIFEST_FILE", "PLAN_FILE", "WEIGHTS_FILE", "load_bundle",
           "read_catalog", "request_error", "split_scores", "write_catalog"]
