"""The distilled (shallow) model: a small transformer over the real-time interactions.

Inputs are exactly the plan's tensors, stacked into a batch by :func:`schemas.tensors.stack_requests`
(RTI padded with ``PAD_TIME`` in the hop's time column), plus the deep model's entity embeddings
looked up point-in-time by :class:`offline.embeddings.EmbeddingTable`. No graph traversal happens
at inference: the graph reaches the model only through the embeddings and the 1-hop windows.

:func:`prepare_batch` turns stacked numpy tensors into model features. It is the one feature
function, used by training, offline scoring and the exported Triton model (vendored into the
bundle), so features cannot drift between them.

Features (all derived from the plan, nothing fraud-specific):

* a "query" token from the fact row: float columns as signed log1p; timestamp columns as
  cyclic time of day, weekend flag and age relative to the anchor; per hop, the window size
  over several horizons and the mean of each float column; each embedding key's vector (or the
  learned "no embedding" vector) and its missing flag;
* one token per RTI interaction: node type (= the hop), time encodings of ``anchor - t``
  (log-scaled age plus sinusoids), float columns (signed log1p, and the difference to the fact
  row's column of the same name), and for id columns whether the id equals the fact row's
  (e.g. "this customer has paid at this terminal before").

Only torch, numpy and :mod:`schemas` / :mod:`offline.embeddings` are imported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from schemas.plan import ServingPlan
from schemas.tensors import PAD_TIME

NS_PER_HOUR = 3_600 * 10**9
NS_PER_DAY = 24 * NS_PER_HOUR
# Window-size horizons (hours) summarised on the query token.
COUNT_HORIZONS_H = (1.0, 24.0, 24.0 * 7)
# Periods (hours) of the sinusoidal encodings of an interaction's age.
AGE_PERIODS_H = (1.0, 6.0, 24.0, 24.0 * 7)


@dataclass(frozen=True)
class ShallowConfig:
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    hash_buckets: int = 1024  # string columns of the fact row are hashed into this many buckets

    def to_dict(self) -> dict:
        return asdict(self)


def _slog(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)


def _time_of_day(t: np.ndarray) -> list[np.ndarray]:
    frac = (np.mod(t, NS_PER_DAY) / NS_PER_DAY).astype(np.float64)
    dow = np.mod(np.floor_divide(t, NS_PER_DAY) + 3, 7)  # 1970-01-01 was a Thursday; Monday = 0
    return [np.sin(2 * np.pi * frac).astype(np.float32), np.cos(2 * np.pi * frac).astype(np.float32),
            (dow >= 5).astype(np.float32)]


def _hash_bucket(values: np.ndarray, buckets: int) -> np.ndarray:
    import zlib

    flat = [zlib.crc32(v if isinstance(v, bytes) else str(v).encode()) % buckets for v in values.reshape(-1)]
    return np.asarray(flat, np.int64).reshape(values.shape)


@dataclass(frozen=True)
class FeatureLayout:
    """Which plan columns feed which features; derived from the plan alone."""

    fact_float: tuple[str, ...]
    fact_time: tuple[str, ...]
    fact_string: tuple[str, ...]
    hop_keys: tuple[str, ...]
    hop_time: dict = field(default_factory=dict)  # hop -> time column
    hop_float: dict = field(default_factory=dict)  # hop -> float columns
    hop_match: dict = field(default_factory=dict)  # hop -> columns compared for equality with the fact row
    embedding_keys: tuple[str, ...] = ()  # fact columns holding entity ids
    embedding_types: tuple[str, ...] = ()

    @classmethod
    def of(cls, plan: ServingPlan) -> "FeatureLayout":
        fact = plan.fact
        f_float, f_time, f_str = [], [], []
        for col in plan.fact_columns:
            dtype = fact.columns[col]
            if dtype in ("float32", "float64"):
                f_float.append(col)
            elif dtype == "timestamp":
                f_time.append(col)
            elif dtype == "string":
                f_str.append(col)
            # int64 columns are ids: used as embedding keys / equality matches, never as numbers.
        h_time, h_float, h_match = {}, {}, {}
        for hop in plan.hops:
            table = plan.interaction_table(hop)
            h_time[hop.key.key] = table.time_column
            h_float[hop.key.key] = tuple(c for c in hop.columns if table.columns[c] in ("float32", "float64"))
            h_match[hop.key.key] = tuple(c for c in hop.columns if table.columns[c] in ("int64", "string")
                                         and c in plan.fact_columns and hop.key.target.table == plan.fact_table)
        return cls(tuple(f_float), tuple(f_time), tuple(f_str), plan.hop_keys, h_time, h_float, h_match,
                   tuple(k.column for k in plan.embedding_keys), plan.embedding_entity_types)

    @property
    def n_fact_features(self) -> int:
        per_hop = sum(len(COUNT_HORIZONS_H) + 1 + len(self.hop_float[h]) for h in self.hop_keys)
        return 2 * len(self.fact_float) + 4 * len(self.fact_time) + 3 + per_hop

    def n_token_features(self, hop_key: str) -> int:
        return 2 + 2 * len(AGE_PERIODS_H) + 3 + 2 * len(self.hop_float[hop_key]) + len(self.hop_match[hop_key])


def prepare_batch(plan: ServingPlan, stacked: dict, embedding_table, device="cpu", layout: FeatureLayout | None = None,
                  hash_buckets: int = 1024) -> dict:
    """Stacked numpy tensors (``stack_requests`` output, batch B) -> torch features on ``device``.

    Returns ``fact`` [B, F], ``strings`` [B, S] (hash buckets), ``emb`` [B, K, dim],
    ``missing`` [B, K] (float 0/1), and per hop ``tokens:{hop}`` [B, L, F_h] and ``valid:{hop}`` [B, L].
    """
    layout = layout or FeatureLayout.of(plan)
    ft = plan.fact_table
    anchor = np.asarray(stacked["anchor_time"], np.int64).reshape(-1)
    B = anchor.shape[0]
    fact_cols: list[np.ndarray] = []
    for col in layout.fact_float:
        x = np.asarray(stacked[f"{ft}.{col}"], np.float64).reshape(-1)
        fact_cols += [_slog(x), (x == 0).astype(np.float32)]
    for col in layout.fact_time:
        t = np.asarray(stacked[f"{ft}.{col}"], np.int64).reshape(-1)
        fact_cols += _time_of_day(t) + [_slog((anchor - t) / NS_PER_HOUR)]
    fact_cols += _time_of_day(anchor)

    out: dict[str, torch.Tensor] = {}
    for h in layout.hop_keys:
        tcol = layout.hop_time[h]
        t = np.asarray(stacked[f"{h}:{tcol}"], np.int64)[..., 0]  # [B, L]
        valid = t != PAD_TIME
        age_h = np.where(valid, anchor[:, None] - np.where(valid, t, 0), 0) / NS_PER_HOUR
        age_h = np.maximum(age_h, 0.0)  # the store never returns t >= anchor; guard anyway
        feats = [_slog(age_h), (age_h < 1.0).astype(np.float32)]
        for period in AGE_PERIODS_H:
            ang = 2 * np.pi * age_h / period
            feats += [np.sin(ang).astype(np.float32), np.cos(ang).astype(np.float32)]
        feats += _time_of_day(np.where(valid, t, 0))
        n_valid = valid.sum(1)
        for horizon in COUNT_HORIZONS_H:
            fact_cols.append(_slog((valid & (age_h < horizon)).sum(1)))
        fact_cols.append(_slog(n_valid))
        for col in layout.hop_float[h]:
            x = np.asarray(stacked[f"{h}:{col}"], np.float64)[..., 0]
            xs = _slog(x)
            feats.append(xs)
            fact_name = f"{ft}.{col}"
            ref = _slog(np.asarray(stacked[fact_name], np.float64).reshape(-1)) if col in plan.fact_columns else 0.0
            feats.append((xs - (ref[:, None] if isinstance(ref, np.ndarray) else ref)).astype(np.float32))
            mean = np.where(valid, xs, 0).sum(1) / np.maximum(n_valid, 1)
            fact_cols.append(mean.astype(np.float32))
        for col in layout.hop_match[h]:
            x = np.asarray(stacked[f"{h}:{col}"])[..., 0]
            ref = np.asarray(stacked[f"{ft}.{col}"]).reshape(-1)
            feats.append(((x == ref[:, None]) & valid).astype(np.float32))
        tokens = np.stack(feats, axis=-1) if feats else np.zeros((B, t.shape[1], 0), np.float32)
        tokens[~valid] = 0.0
        out[f"tokens:{h}"] = torch.from_numpy(np.ascontiguousarray(tokens, np.float32)).to(device)
        out[f"valid:{h}"] = torch.from_numpy(valid).to(device)

    out["fact"] = torch.from_numpy(np.stack(fact_cols, axis=1).astype(np.float32)).to(device)
    strings = [_hash_bucket(np.asarray(stacked[f"{ft}.{c}"]).reshape(-1), hash_buckets) for c in layout.fact_string]
    out["strings"] = torch.from_numpy(np.stack(strings, axis=1) if strings else np.zeros((B, 0), np.int64)).to(device)

    embs, missing = [], []
    for col, etype in zip(layout.embedding_keys, layout.embedding_types):
        ids = np.asarray(stacked[f"{ft}.{col}"], np.int64).reshape(-1)
        vec, miss = embedding_table.lookup(etype, ids, anchor)
        embs.append(vec)
        missing.append(miss)
    dim = embedding_table.dim
    out["emb"] = torch.from_numpy(np.stack(embs, 1) if embs else np.zeros((B, 0, dim), np.float32)).to(device)
    out["missing"] = torch.from_numpy(np.stack(missing, 1).astype(np.float32) if missing
                                      else np.zeros((B, 0), np.float32)).to(device)
    return out


class ShallowModel(nn.Module):
    """Query token (fact row + embeddings) attending over the RTI tokens of every hop -> logit."""

    def __init__(self, plan: ServingPlan, emb_dim: int, config: ShallowConfig = ShallowConfig()):
        super().__init__()
        self.layout = FeatureLayout.of(plan)
        self.config = config
        self.emb_dim = emb_dim
        d = config.d_model
        lay = self.layout
        k = len(lay.embedding_keys)
        # A learned "no admissible embedding" vector per key; the flag also enters the query.
        self.no_embedding = nn.Parameter(torch.randn(k, emb_dim) * 0.02)
        self.emb_proj = nn.ModuleList([nn.Linear(emb_dim, d) for _ in range(k)])
        self.string_emb = nn.ModuleList([nn.Embedding(config.hash_buckets, d) for _ in lay.fact_string])
        self.fact_norm = nn.LayerNorm(lay.n_fact_features)
        self.query = nn.Sequential(nn.Linear(lay.n_fact_features + k, d), nn.GELU(), nn.Linear(d, d))
        self.token_proj = nn.ModuleDict({str(i): nn.Linear(lay.n_token_features(h), d)
                                         for i, h in enumerate(lay.hop_keys)})
        self.node_type = nn.Embedding(max(1, len(lay.hop_keys)) + 1, d)  # 0 = query, i + 1 = hop i
        layer = nn.TransformerEncoderLayer(d, config.n_heads, config.d_ff, config.dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))

    def forward(self, batch: dict) -> torch.Tensor:
        lay = self.layout
        fact = self.fact_norm(batch["fact"])
        missing = batch["missing"]
        q = self.query(torch.cat([fact, missing], dim=1))
        for i, proj in enumerate(self.emb_proj):
            miss = missing[:, i:i + 1]
            vec = batch["emb"][:, i] * (1 - miss) + self.no_embedding[i] * miss
            q = q + proj(vec)
        for i, table in enumerate(self.string_emb):
            q = q + table(batch["strings"][:, i])
        q = q + self.node_type.weight[0]
        seq, pad = [q[:, None, :]], [torch.zeros(q.shape[0], 1, dtype=torch.bool, device=q.device)]
        for i, h in enumerate(lay.hop_keys):
            tok = self.token_proj[str(i)](batch[f"tokens:{h}"]) + self.node_type.weight[i + 1]
            seq.append(tok)
            pad.append(~batch[f"valid:{h}"])
        x = torch.cat(seq, dim=1)
        mask = torch.cat(pad, dim=1)
        enc = self.encoder(x, src_key_padding_mask=mask)
        return self.head(torch.cat([enc[:, 0], q], dim=1)).squeeze(1)

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(plan: ServingPlan, emb_dim: int, config: ShallowConfig | dict | None = None, seed: int = 0) -> ShallowModel:
    if isinstance(config, dict):
        config = ShallowConfig(**config)
    torch.manual_seed(seed)
    return ShallowModel(plan, emb_dim, config or ShallowConfig())


@torch.no_grad()
def score_stacked(model: ShallowModel, plan: ServingPlan, stacked: dict, embedding_table, device="cpu"):
    """``(scores float32[B], cold_start int8[B, K])`` for stacked tensors: the serving computation."""
    model.eval()
    batch = prepare_batch(plan, stacked, embedding_table, device, model.layout, model.config.hash_buckets)
    scores = torch.sigmoid(model(batch)).float().cpu().numpy()
    cold = batch["missing"].cpu().numpy().astype(np.int8)
    return scores.astype(np.float32), cold


__all__ = ["FeatureLayout", "ShallowConfig", "ShallowModel", "build_model", "prepare_batch", "score_stacked"]
