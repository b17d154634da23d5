"""The distilled (shallow) model: small transformers over the real-time interactions, one head per
plan kind -- a scoring head (one score per request: fraud) and a ranking head (one score per
candidate: in-session recommendation).

Inputs are exactly the plan's tensors, stacked into a batch by :func:`schemas.tensors.stack_requests`
(RTI padded with ``PAD_TIME`` in the hop's time column, candidates with ``PAD_CANDIDATE``), plus
the deep model's entity embeddings looked up point-in-time by
:class:`offline.embeddings.EmbeddingTable` (a learned "no embedding" vector and a flag where none is
admissible). No graph traversal happens at inference: the graph reaches the model only through the
embeddings and the 1-hop windows.

:func:`build_model`, :func:`prepare_features` and :func:`serve` pick the head from the plan. Each
head has one feature function (:func:`prepare_batch`, :func:`prepare_ranking_batch`), used by
training, offline scoring and the exported Triton model (this file is vendored into the bundle),
so features cannot drift between them. Both share the encodings of numbers (signed log1p), of
instants (time of day, weekend) and of an interaction's age (log hours + sinusoids).

Scoring head (:class:`ScoringModel`; features derived from the plan alone):

* a "query" token from the fact row: float columns as signed log1p; timestamp columns as
  cyclic time of day, weekend flag and age relative to the anchor; per hop, the window size
  over several horizons and the mean of each float column; each embedding key's vector (or the
  learned "no embedding" vector) and its missing flag;
* one token per RTI interaction: node type (= the hop), time encodings of ``anchor - t``,
  float columns (signed log1p, and the difference to the fact row's column of the same name),
  and for id columns whether the id equals the fact row's (e.g. "this customer has paid at this
  terminal before"); the query token attends over them and a head gives the logit.

Ranking head (:class:`RankingModel`):

* the entity (household/user): its embedding + flag, and request summaries (history length,
  open-session length, time of day);
* history (the one hop's window, oldest first): each line's item embedding, its age, value
  columns (signed log1p), and whether it belongs to the *open session*: the session of the newest
  line, when that line is younger than ``session_gap_hours``;
* candidates: each candidate's item embedding (+ missing flag); pairwise, from the tensors: how
  often the candidate is in the history and the open session, hours since its last occurrence;
  in the model the cosine similarity of its embedding to the history's and the session's lines.

  The history is encoded ONCE per request (entity token + history tokens through a small
  transformer encoder); every candidate attends over it twice (whole history, open session
  only) and a per-candidate MLP gives a logit. Padded candidates score ``-inf``.

Only torch, numpy and :mod:`schemas` are imported (the embedding table is passed in).

Why one file of ~630 lines: it is copied verbatim into every exported Triton bundle (next to
the ``schemas`` modules it imports), and the two heads share the encodings above; one
file keeps the served code and the trained code one artefact that cannot be vendored half-way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from schemas.plan import ServingPlan
from schemas.tensors import PAD_CANDIDATE, PAD_TIME

NS_PER_HOUR = 3_600 * 10**9
NS_PER_DAY = 24 * NS_PER_HOUR
# Window-size horizons (hours) summarised on the query token.
COUNT_HORIZONS_H = (1.0, 24.0, 24.0 * 7)
# Periods (hours) of the sinusoidal encodings of an interaction's age (scoring, ranking).
SCORING_AGE_PERIODS_H = (1.0, 6.0, 24.0, 24.0 * 7)
RANKING_AGE_PERIODS_H = (1.0, 24.0, 24.0 * 7)


@dataclass(frozen=True)
class ScoringConfig:
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


def _age_features(age_h: np.ndarray, periods) -> list[np.ndarray]:
    """Encodings of an interaction's age in hours: log-scaled, "within the hour", sinusoids."""
    feats = [_slog(age_h), (age_h < 1.0).astype(np.float32)]
    for period in periods:
        ang = 2 * np.pi * age_h / period
        feats += [np.sin(ang).astype(np.float32), np.cos(ang).astype(np.float32)]
    return feats


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
    label_inputs: tuple[tuple[str, bool], ...] = ()  # known-label tensors (label feedback): (name, is a rate)

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
        labels = tuple((t.name, t.stat == "rate") for t in plan.tensors if t.kind == "label")
        return cls(tuple(f_float), tuple(f_time), tuple(f_str), plan.hop_keys, h_time, h_float, h_match,
                   tuple(k.column for k in plan.embedding_keys), plan.embedding_entity_types, labels)

    @property
    def n_fact_features(self) -> int:
        per_hop = sum(len(COUNT_HORIZONS_H) + 1 + len(self.hop_float[h]) for h in self.hop_keys)
        return 2 * len(self.fact_float) + 4 * len(self.fact_time) + 3 + per_hop + len(self.label_inputs)

    def n_token_features(self, hop_key: str) -> int:
        return 2 + 2 * len(SCORING_AGE_PERIODS_H) + 3 + 2 * len(self.hop_float[hop_key]) + len(self.hop_match[hop_key])


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
        feats = _age_features(age_h, SCORING_AGE_PERIODS_H)
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

    for name, is_rate in layout.label_inputs:  # counts on a log scale, rates as they are
        x = np.asarray(stacked[name], np.float64).reshape(-1)
        fact_cols.append(x.astype(np.float32) if is_rate else _slog(x))
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


class ScoringModel(nn.Module):
    """Query token (fact row + embeddings) attending over the RTI tokens of every hop -> logit."""

    def __init__(self, plan: ServingPlan, emb_dim: int, config: ScoringConfig = ScoringConfig()):
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
        x, mask, q = self.sequence(batch)
        enc = self.encoder(x, src_key_padding_mask=mask)
        return self.head(torch.cat([enc[:, 0], q], dim=1)).squeeze(1)

    def sequence(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's input: ``x`` [B, 1 + sum L_h, d] (the query token, then every hop's RTI
        tokens), its padding ``mask`` (True = padded) and the query ``q`` [B, d]."""
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
        return torch.cat(seq, dim=1), torch.cat(pad, dim=1), q

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())



# ----- ranking head ------------------------------------------------------------------------------

class RankingError(ValueError):
    """A ranker configuration that does not fit the plan; the message names the field."""


@dataclass(frozen=True)
class RankingConfig:
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 1  # transformer layers over the history (once per request)
    d_ff: int = 128
    dropout: float = 0.1
    # Columns of the history hop (defaults: the recsys plan). session_column groups lines into
    # sessions (baskets); value_columns are numbers (signed log1p), not ids.
    session_column: str = "basket_id"
    value_columns: tuple[str, ...] = ("quantity", "sales_value")
    # The newest line opens a session only if it is younger than this (else: no open session).
    session_gap_hours: float = 2.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["value_columns"] = list(self.value_columns)
        return d

    @classmethod
    def from_dict(cls, raw: dict) -> "RankingConfig":
        raw = dict(raw)
        if "value_columns" in raw:
            raw["value_columns"] = tuple(raw["value_columns"])
        return cls(**raw)


@dataclass(frozen=True)
class RankingLayout:
    """Which plan tensors feed which inputs; derived from the plan (+ config) and checked."""

    candidate_tensor: str
    household_tensor: str
    household_type: str  # entity table of the household key (embedding lookups)
    product_type: str  # entity table of the candidate key
    hop: str
    history_item: str  # tensor of the history's candidate-column values (product ids)
    history_time: str
    history_session: str
    history_values: tuple[str, ...]

    @classmethod
    def of(cls, plan: ServingPlan, config: "RankingConfig" = RankingConfig()) -> "RankingLayout":
        if not plan.is_ranking:
            raise RankingError(f"plan {plan.name!r}: the ranker needs a ranking plan (ranking.candidate_column)")
        keys = [k.column for k in plan.embedding_keys]
        types = dict(zip(keys, plan.embedding_entity_types))
        cand = plan.candidate_column
        if cand not in types:
            raise RankingError(f"distillation.embedding_keys: the candidate column {cand!r} needs an embedding key")
        others = [k for k in keys if k != cand]
        if len(others) != 1:
            raise RankingError(f"distillation.embedding_keys: expected exactly one key besides {cand!r} "
                              f"(the household/user), got {others}")
        if len(plan.hops) != 1:
            raise RankingError(f"distillation.real_time_interactions: the ranker reads one history hop, "
                              f"plan has {len(plan.hops)}")
        hop = plan.hops[0]
        table = plan.interaction_table(hop)
        where = f"distillation.real_time_columns.{hop.key.key}"
        for col in (cand, config.session_column, *config.value_columns, table.time_column):
            if col not in hop.columns:
                raise RankingError(f"{where}: the ranker needs column {col!r} (has {list(hop.columns)})")
        for col in config.value_columns:
            if table.columns[col] not in ("int64", "float32", "float64"):
                raise RankingError(f"{where}.{col}: value columns must be numeric, got {table.columns[col]}")
        k = hop.key.key
        return cls(plan.candidate_tensor, f"{plan.fact_table}.{others[0]}", types[others[0]], types[cand], k,
                   f"{k}:{cand}", f"{k}:{table.time_column}", f"{k}:{config.session_column}",
                   tuple(f"{k}:{c}" for c in config.value_columns))

    @property
    def n_token_features(self) -> int:
        return 2 + 2 * len(RANKING_AGE_PERIODS_H) + 2 * len(self.history_values) + 2  # + session, missing

    n_query_features = 6
    n_pair_features = 6  # computed in prepare_ranking_batch
    n_similarity_features = 5  # computed in the model from the embeddings


def _t(x, device, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def prepare_ranking_batch(plan: ServingPlan, stacked: dict, embedding_table, layout: RankingLayout,
                          config: RankingConfig = RankingConfig(), device="cpu") -> dict:
    """Stacked numpy tensors (B requests) -> torch features.

    Returns ``household`` [B, D] + ``household_missing`` [B], ``query`` [B, Q], ``candidates``
    [B, N, D] + ``candidate_missing`` [B, N] + ``candidate_valid`` [B, N], ``pairs`` [B, N, P],
    ``history`` [B, L, D] + ``history_missing`` [B, L], ``tokens`` [B, L, F], ``history_valid``
    [B, L] and ``session`` [B, L] (bool).
    """
    lay = layout
    anchor = np.asarray(stacked["anchor_time"], np.int64).reshape(-1)
    B = anchor.shape[0]
    hh = np.asarray(stacked[lay.household_tensor], np.int64).reshape(B)
    cand = np.asarray(stacked[lay.candidate_tensor], np.int64).reshape(B, -1)
    N = cand.shape[1]
    t = np.asarray(stacked[lay.history_time], np.int64).reshape(B, -1)
    L = t.shape[1]
    items = np.asarray(stacked[lay.history_item], np.int64).reshape(B, L)
    basket = np.asarray(stacked[lay.history_session], np.int64).reshape(B, L)

    valid = t != PAD_TIME
    cand_valid = cand != PAD_CANDIDATE
    age_h = np.maximum(np.where(valid, anchor[:, None] - np.where(valid, t, 0), 0) / NS_PER_HOUR, 0.0)
    n_valid = valid.sum(1)
    # The open session: the newest line's basket, if that line is recent enough.
    newest = np.argmax(np.where(valid, t, np.iinfo(np.int64).min), axis=1) if L else np.zeros(B, np.int64)
    rows = np.arange(B)
    if L:
        open_ = (n_valid > 0) & (age_h[rows, newest] < config.session_gap_hours)
        session = valid & open_[:, None] & (basket == basket[rows, newest][:, None])
    else:
        session = np.zeros((B, 0), bool)

    # Embeddings, point-in-time (one lookup per entity type and request group).
    hvec, hmiss = embedding_table.lookup(lay.household_type, hh, anchor)
    cvec, cmiss = embedding_table.lookup(lay.product_type, cand.reshape(-1), np.repeat(anchor, N))
    ivec, imiss = embedding_table.lookup(lay.product_type, items.reshape(-1), np.repeat(anchor, L))
    D = embedding_table.dim
    cvec, cmiss = cvec.reshape(B, N, D), cmiss.reshape(B, N) & cand_valid
    ivec, imiss = ivec.reshape(B, L, D), imiss.reshape(B, L) & valid

    # History tokens.
    feats = _age_features(age_h, RANKING_AGE_PERIODS_H)
    for name in lay.history_values:
        x = np.asarray(stacked[name], np.float64).reshape(B, L)
        feats += [_slog(x), (x == 0).astype(np.float32)]
    feats += [session.astype(np.float32), imiss.astype(np.float32)]
    tokens = np.stack(feats, -1).astype(np.float32) if L else np.zeros((B, 0, lay.n_token_features), np.float32)
    tokens[~valid] = 0.0

    # Request summaries.
    n_sess = session.sum(1)
    query = np.stack([_slog(n_valid), _slog(n_sess), (n_sess > 0).astype(np.float32), *_time_of_day(anchor)],
                     1).astype(np.float32)

    # Pairwise candidate x history features: [B, N, L] comparisons, cheap for N, L <= 1000, 100.
    match = (cand[:, :, None] == items[:, None, :]) & valid[:, None, :] & cand_valid[:, :, None]
    count = match.sum(2)
    in_sess = (match & session[:, None, :]).sum(2)
    ever = count > 0
    last_age = np.where(match, age_h[:, None, :], np.inf).min(2) if L else np.full((B, N), np.inf)
    last_age = np.where(ever, last_age, 0.0)
    pairs = np.stack([_slog(count), _slog(in_sess), (in_sess > 0).astype(np.float32), ever.astype(np.float32),
                      _slog(last_age), (ever & (last_age < 24 * 7)).astype(np.float32)], -1).astype(np.float32)

    return {
        "household": _t(hvec, device), "household_missing": _t(hmiss, device),
        "query": _t(query, device),
        "candidates": _t(cvec, device), "candidate_missing": _t(cmiss, device),
        "candidate_valid": _t(cand_valid, device, torch.bool),
        "pairs": _t(pairs, device),
        "history": _t(ivec, device), "history_missing": _t(imiss, device),
        "tokens": _t(tokens, device), "history_valid": _t(valid, device, torch.bool),
        "session": _t(session, device, torch.bool),
    }


class _TargetAttention(nn.Module):
    """Candidates (queries) attend over encoded history tokens (keys/values) with a mask."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, cand: torch.Tensor, memory: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, N, d = cand.shape
        M = memory.shape[1]
        h, dh = self.heads, d // self.heads
        q = self.q(cand).view(B, N, h, dh).transpose(1, 2)  # [B, h, N, dh]
        k, v = self.kv(memory).view(B, M, 2, h, dh).permute(2, 0, 3, 1, 4)  # [B, h, M, dh] each
        att = (q @ k.transpose(-1, -2)) / dh ** 0.5  # [B, h, N, M]
        att = att.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
        return self.out((att @ v).transpose(1, 2).reshape(B, N, d))


class RankingModel(nn.Module):
    def __init__(self, plan: ServingPlan, emb_dim: int, config: RankingConfig = RankingConfig()):
        super().__init__()
        self.config = config
        self.layout = RankingLayout.of(plan, config)
        self.emb_dim = int(emb_dim)
        d = config.d_model
        lay = self.layout
        # Learned "no admissible embedding" vectors: household, product.
        self.no_embedding = nn.Parameter(torch.randn(2, emb_dim) * 0.02)
        self.household_proj = nn.Linear(emb_dim + 1 + lay.n_query_features, d)
        self.product_proj = nn.Linear(emb_dim + 1, d)  # shared by candidates and history lines
        self.token_proj = nn.Linear(lay.n_token_features, d)
        self.token_type = nn.Embedding(2, d)  # 0 = household token, 1 = history line
        layer = nn.TransformerEncoderLayer(d, config.n_heads, config.d_ff, config.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.attend_history = _TargetAttention(d, config.n_heads)
        self.attend_session = _TargetAttention(d, config.n_heads)
        self.pair_proj = nn.Linear(lay.n_pair_features + lay.n_similarity_features, d)
        # A linear path from the pairwise features straight to the logit ("wide" part): simple
        # relations (bought before, like the session) are learnt from few examples.
        self.pair_linear = nn.Linear(lay.n_pair_features + lay.n_similarity_features, 1)
        self.head = nn.Sequential(nn.LayerNorm(6 * d), nn.Linear(6 * d, 2 * d), nn.GELU(), nn.Linear(2 * d, d),
                                  nn.GELU(), nn.Linear(d, 1))

    def _product(self, vec: torch.Tensor, miss: torch.Tensor) -> torch.Tensor:
        m = miss.unsqueeze(-1)
        vec = vec * (1 - m) + self.no_embedding[1] * m
        return self.product_proj(torch.cat([vec, m], -1))

    def encode_history(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Once per request: (household [B, d], memory [B, 1 + L, d], session-or-household mask)."""
        m = batch["household_missing"].unsqueeze(-1)
        hvec = batch["household"] * (1 - m) + self.no_embedding[0] * m
        user = self.household_proj(torch.cat([hvec, m, batch["query"]], -1))
        lines = self._product(batch["history"], batch["history_missing"]) + self.token_proj(batch["tokens"])
        seq = torch.cat([(user + self.token_type.weight[0])[:, None], lines + self.token_type.weight[1]], 1)
        B = seq.shape[0]
        always = torch.ones(B, 1, dtype=torch.bool, device=seq.device)  # the household token: never empty
        keep = torch.cat([always, batch["history_valid"]], 1)
        memory = self.encoder(seq, src_key_padding_mask=~keep)
        keep_session = torch.cat([always, batch["session"]], 1)
        return user, memory, torch.stack([keep, keep_session])

    @staticmethod
    def similarity_features(batch: dict) -> torch.Tensor:
        """[B, N, 5] cosine similarity of each candidate's embedding to the history lines' and the
        open session's: max and mean over the history, max and mean over the session, and a flag
        "the session has an embedded line". Zero for candidates without an embedding."""
        c = nn.functional.normalize(batch["candidates"], dim=-1, eps=1e-6)
        h = nn.functional.normalize(batch["history"], dim=-1, eps=1e-6)
        sim = c @ h.transpose(1, 2)  # [B, N, L]
        known = batch["history_missing"] < 0.5
        out = []
        for keep in (batch["history_valid"] & known, batch["session"] & known):
            k = keep[:, None, :].expand_as(sim)
            top = sim.masked_fill(~k, -2.0).amax(-1) if sim.shape[-1] else sim.new_zeros(sim.shape[:2])
            has = k.any(-1)
            out += [torch.where(has, top, torch.zeros_like(top)), (sim * k).sum(-1) / k.sum(-1).clamp(min=1)]
        out.append((batch["session"] & known).any(-1, keepdim=True).float().expand(-1, sim.shape[1]))
        feats = torch.stack(out, -1)
        return feats * (1 - batch["candidate_missing"]).unsqueeze(-1)

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits [B, N]; padded candidates are ``-inf``."""
        user, memory, keeps = self.encode_history(batch)
        cand = self._product(batch["candidates"], batch["candidate_missing"])
        a_hist = self.attend_history(cand, memory, keeps[0])
        a_sess = self.attend_session(cand, memory, keeps[1])
        u = user[:, None].expand_as(cand)
        pairs = torch.cat([batch["pairs"], self.similarity_features(batch)], -1)
        x = torch.cat([cand, a_hist, a_sess, u * cand, a_sess * cand, self.pair_proj(pairs)], -1)
        logits = (self.head(x) + self.pair_linear(pairs)).squeeze(-1)
        return logits.masked_fill(~batch["candidate_valid"], float("-inf"))

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ----- one entry point per job, for both heads ----------------------------------------------------

ShallowModel = ScoringModel | RankingModel


def config_of(plan: ServingPlan, config: ScoringConfig | RankingConfig | dict | None) -> ScoringConfig | RankingConfig:
    """The head's configuration for the plan's kind (from a saved dict, or the default)."""
    cls = RankingConfig if plan.is_ranking else ScoringConfig
    if config is None:
        return cls()
    if isinstance(config, dict):
        return RankingConfig.from_dict(config) if plan.is_ranking else ScoringConfig(**config)
    if not isinstance(config, cls):
        raise TypeError(f"plan {plan.name!r} needs a {cls.__name__}, got {type(config).__name__}")
    return config


def build_model(plan: ServingPlan, emb_dim: int, config: ScoringConfig | RankingConfig | dict | None = None,
                seed: int = 0) -> ShallowModel:
    """The shallow model of the plan's kind: scoring head (one score per request) or ranking head
    (one score per candidate)."""
    config = config_of(plan, config)
    torch.manual_seed(seed)
    return RankingModel(plan, emb_dim, config) if plan.is_ranking else ScoringModel(plan, emb_dim, config)


def prepare_features(model, plan: ServingPlan, stacked: dict, embedding_table, device="cpu") -> dict:
    """Stacked numpy tensors -> the model's torch features (the one feature function of each head)."""
    if isinstance(model.layout, RankingLayout):
        return prepare_ranking_batch(plan, stacked, embedding_table, model.layout, model.config, device)
    return prepare_batch(plan, stacked, embedding_table, device, model.layout, model.config.hash_buckets)


@torch.no_grad()
def serve(model, plan: ServingPlan, stacked: dict, embedding_table, device="cpu") -> dict[str, np.ndarray]:
    """The serving computation on stacked tensors (batch B): the plan's outputs by name.

    Scoring: ``score`` float32 [B] (probability) and ``cold_start`` int8 [B, K] (1 = that key had
    no admissible embedding). Ranking: ``score`` float32 [B, N] (logits, higher = more likely
    next; padded candidates ``-inf``), ``cold_start`` [B, K] (the candidate key's flag: any
    candidate lacked one) and ``candidate_cold_start`` [B, N] (0 on padding).
    """
    model.eval()
    batch = prepare_features(model, plan, stacked, embedding_table, device)
    if not isinstance(model.layout, RankingLayout):
        scores = torch.sigmoid(model(batch)).float().cpu().numpy()
        return {"score": scores.astype(np.float32), "cold_start": batch["missing"].cpu().numpy().astype(np.int8)}
    scores = model(batch).float().cpu().numpy().astype(np.float32)
    cand_cold = batch["candidate_missing"].cpu().numpy().astype(np.int8)
    per_key = {model.layout.household_type: batch["household_missing"].cpu().numpy().astype(np.int8),
               model.layout.product_type: cand_cold.max(1) if cand_cold.shape[1] else np.zeros(len(scores), np.int8)}
    cold = np.stack([per_key[t] for t in plan.embedding_entity_types], 1).astype(np.int8)
    return {"score": scores, "cold_start": cold, "candidate_cold_start": cand_cold}


# ----- weights files ---------------------------------------------------------------------------

def save_model(path: str | Path, model: ShallowModel, plan: ServingPlan, extra: dict | None = None) -> Path:
    """The weights file of a run (``RUN/shallow_model.pt``) and of a bundle (``model.pt``):
    state dict, head configuration and the plan's fingerprint; loadable with ``weights_only``."""
    state = {"kind": "ranking" if plan.is_ranking else "scoring",
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "config": model.config.to_dict(), "emb_dim": int(model.emb_dim),
             "plan_fingerprint": plan.fingerprint(), **(extra or {})}
    torch.save(state, path)
    return Path(path)


def load_model(path: str | Path, plan: ServingPlan, device: str = "cpu") -> ShallowModel:
    """A trained shallow model from its weights file, checked against the plan."""
    state = torch.load(path, map_location=device, weights_only=True)
    want = "ranking" if plan.is_ranking else "scoring"
    kind = {"ranker": "ranking"}.get(state.get("kind", want), state.get("kind"))  # files of older runs
    if kind != want:
        raise ValueError(f"{path}: a {kind} model, but plan {plan.name!r} needs a {want} model")
    fp = state.get("plan_fingerprint")
    if fp and fp != plan.fingerprint():
        raise ValueError(f"{path}: trained for plan fingerprint {fp}, not {plan.fingerprint()} ({plan.name})")
    model = build_model(plan, int(state["emb_dim"]), config_of(plan, dict(state["config"])))
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval()


__all__ = ["FeatureLayout", "RankingConfig", "RankingError", "RankingLayout", "RankingModel", "ScoringConfig",
           "ScoringModel", "ShallowModel", "build_model", "config_of", "prepare_batch", "prepare_features",
           "prepare_ranking_batch", "save_model", "load_model", "serve"]
