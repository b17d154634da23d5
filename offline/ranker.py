"""The distilled ranker of ranking plans (in-session recommendation): one request, many candidates.

Inputs are exactly the plan's tensors, stacked by :func:`schemas.tensors.stack_requests` (batch B,
candidates padded with ``PAD_CANDIDATE`` to N, history padded with ``PAD_TIME`` to L), plus the
deep model's entity embeddings looked up point-in-time by :class:`offline.embeddings.EmbeddingTable`
(a learned "no embedding" vector and a flag where none is admissible, as in the fraud model).

:func:`prepare_ranking_batch` is the one feature function (training, offline scoring, and the
Triton model, which vendors this file), so features cannot drift between them:

* household: its embedding (or the learned missing vector) + flag, and a few request summaries
  (history length, open-session length, time of day);
* history (the hop's window, oldest first): each line's product embedding looked up in the same
  table, its age relative to the anchor (log hours + sinusoids), quantity and sales value (signed
  log1p), and whether it belongs to the *open session*: the basket of the newest line, when that
  line is younger than ``session_gap_hours`` (Complete Journey gives the lines of a basket
  distinct times ``basket_time + i`` ns, so the revealed part of a basket is that basket);
* candidates: each candidate's product embedding (+ missing flag);
* pairwise, computed here from the tensors: how often the candidate is in the history and in the
  open session, hours since its last purchase, whether it was ever bought; and in the model the
  cosine similarity of its embedding to the history's and the open session's lines (max, mean).

Architecture (:class:`RankerModel`). The history is encoded ONCE per request: a household token
followed by the history tokens go through a small transformer encoder. Every candidate then
attends over the encoded history twice (target attention): over the whole history and over the
open session only, so session lines pull similar candidates up. A per-candidate MLP over
[candidate, both attention readouts, household, their products, pairwise features] gives a logit.
Per-request cost is O(L^2 d) for the history plus O(N L d) for the candidates. Padded candidates
score ``-inf``.

Only torch, numpy and :mod:`schemas` / :mod:`offline.embeddings` are imported (vendored into the
Triton bundle).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from schemas.plan import ServingPlan
from schemas.tensors import PAD_CANDIDATE, PAD_TIME

NS_PER_HOUR = 3_600 * 10**9
NS_PER_DAY = 24 * NS_PER_HOUR
AGE_PERIODS_H = (1.0, 24.0, 24.0 * 7)  # sinusoidal encodings of a history line's age


class RankerError(ValueError):
    """A ranker configuration that does not fit the plan; the message names the field."""


@dataclass(frozen=True)
class RankerConfig:
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
    def from_dict(cls, raw: dict) -> "RankerConfig":
        raw = dict(raw)
        if "value_columns" in raw:
            raw["value_columns"] = tuple(raw["value_columns"])
        return cls(**raw)


@dataclass(frozen=True)
class RankerLayout:
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
    def of(cls, plan: ServingPlan, config: "RankerConfig" = RankerConfig()) -> "RankerLayout":
        if not plan.is_ranking:
            raise RankerError(f"plan {plan.name!r}: the ranker needs a ranking plan (ranking.candidate_column)")
        keys = [k.column for k in plan.embedding_keys]
        types = dict(zip(keys, plan.embedding_entity_types))
        cand = plan.candidate_column
        if cand not in types:
            raise RankerError(f"distillation.embedding_keys: the candidate column {cand!r} needs an embedding key")
        others = [k for k in keys if k != cand]
        if len(others) != 1:
            raise RankerError(f"distillation.embedding_keys: expected exactly one key besides {cand!r} "
                              f"(the household/user), got {others}")
        if len(plan.hops) != 1:
            raise RankerError(f"distillation.real_time_interactions: the ranker reads one history hop, "
                              f"plan has {len(plan.hops)}")
        hop = plan.hops[0]
        table = plan.interaction_table(hop)
        where = f"distillation.real_time_columns.{hop.key.key}"
        for col in (cand, config.session_column, *config.value_columns, table.time_column):
            if col not in hop.columns:
                raise RankerError(f"{where}: the ranker needs column {col!r} (has {list(hop.columns)})")
        for col in config.value_columns:
            if table.columns[col] not in ("int64", "float32", "float64"):
                raise RankerError(f"{where}.{col}: value columns must be numeric, got {table.columns[col]}")
        k = hop.key.key
        return cls(plan.candidate_tensor, f"{plan.fact_table}.{others[0]}", types[others[0]], types[cand], k,
                   f"{k}:{cand}", f"{k}:{table.time_column}", f"{k}:{config.session_column}",
                   tuple(f"{k}:{c}" for c in config.value_columns))

    @property
    def n_token_features(self) -> int:
        return 2 + 2 * len(AGE_PERIODS_H) + 2 * len(self.history_values) + 2  # + session, missing

    n_query_features = 6
    n_pair_features = 6  # computed in prepare_ranking_batch
    n_similarity_features = 5  # computed in the model from the embeddings


def _slog(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)


def _t(x, device, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def prepare_ranking_batch(plan: ServingPlan, stacked: dict, embedding_table, layout: RankerLayout,
                          config: RankerConfig = RankerConfig(), device="cpu") -> dict:
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
    feats = [_slog(age_h), (age_h < 1.0).astype(np.float32)]
    for period in AGE_PERIODS_H:
        ang = 2 * np.pi * age_h / period
        feats += [np.sin(ang).astype(np.float32), np.cos(ang).astype(np.float32)]
    for name in lay.history_values:
        x = np.asarray(stacked[name], np.float64).reshape(B, L)
        feats += [_slog(x), (x == 0).astype(np.float32)]
    feats += [session.astype(np.float32), imiss.astype(np.float32)]
    tokens = np.stack(feats, -1).astype(np.float32) if L else np.zeros((B, 0, lay.n_token_features), np.float32)
    tokens[~valid] = 0.0

    # Request summaries.
    frac = np.mod(anchor, NS_PER_DAY) / NS_PER_DAY
    dow = np.mod(np.floor_divide(anchor, NS_PER_DAY) + 3, 7)
    n_sess = session.sum(1)
    query = np.stack([_slog(n_valid), _slog(n_sess), (n_sess > 0).astype(np.float32),
                      np.sin(2 * np.pi * frac).astype(np.float32), np.cos(2 * np.pi * frac).astype(np.float32),
                      (dow >= 5).astype(np.float32)], 1).astype(np.float32)

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


class RankerModel(nn.Module):
    def __init__(self, plan: ServingPlan, emb_dim: int, config: RankerConfig = RankerConfig()):
        super().__init__()
        self.config = config
        self.layout = RankerLayout.of(plan, config)
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


def build_ranker(plan: ServingPlan, emb_dim: int, config: RankerConfig | dict | None = None,
                 seed: int = 0) -> RankerModel:
    if isinstance(config, dict):
        config = RankerConfig.from_dict(config)
    torch.manual_seed(seed)
    return RankerModel(plan, emb_dim, config or RankerConfig())


@torch.no_grad()
def score_ranking(model: RankerModel, plan: ServingPlan, stacked: dict, embedding_table, device="cpu"):
    """The serving computation on stacked tensors: ``(score float32[B, N], cold_start int8[B, 2],
    candidate_cold_start int8[B, N])``. Scores are logits (higher = more likely next); padded
    candidates score ``-inf`` and have ``candidate_cold_start`` 0. ``cold_start`` follows the
    plan's embedding keys: household key = no household embedding, candidate key = any candidate
    lacked one."""
    model.eval()
    batch = prepare_ranking_batch(plan, stacked, embedding_table, model.layout, model.config, device)
    scores = model(batch).float().cpu().numpy().astype(np.float32)
    cand_cold = batch["candidate_missing"].cpu().numpy().astype(np.int8)
    per_key = {model.layout.household_type: batch["household_missing"].cpu().numpy().astype(np.int8),
               model.layout.product_type: cand_cold.max(1) if cand_cold.shape[1] else np.zeros(len(scores), np.int8)}
    cold = np.stack([per_key[t] for t in plan.embedding_entity_types], 1).astype(np.int8)
    return scores, cold, cand_cold


# ----- entry points for offline callers (lazy: the vendored bundle never calls these) -----------

def load_ranker(path, plan: ServingPlan, device: str = "cpu") -> RankerModel:
    """A trained ranker from its weights file (``RUN/ranker.pt`` or a bundle's ``model.pt``)."""
    from offline.ranker_export import load_ranker as _load

    return _load(path, plan, device)


def score_examples(model: RankerModel, table, examples, candidates, *, tx, plan: ServingPlan, device="cpu",
                   progress: bool = True):
    """Scores [E, N] of ranking examples' candidates; see :func:`offline.ranker_train.score_examples`."""
    from offline.ranker_train import score_examples as _score

    return _score(model, table, examples, candidates, tx=tx, plan=plan, device=device, progress=progress)


__all__ = ["RankerConfig", "RankerError", "RankerLayout", "RankerModel", "build_ranker", "load_ranker", "prepare_ranking_batch",
           "score_examples", "score_ranking"]
