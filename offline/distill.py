"""Point-in-time distillation rows and the training of the shallow model.

Rows. Every transaction to score is replayed in event-time order through the in-memory window
store of :mod:`rti_store` (appends via :func:`schemas.tensors.interactions_of`). For each scored
event the windows are read as of its anchor time (:func:`schemas.tensors.window_keys` +
``read_many``) and the tensors are built by :func:`schemas.tensors.build_tensors` — the same
calls the online scorer makes. Events are processed in groups of equal timestamp: all reads of
a group happen before its appends, so events at the same instant never see each other (the
store's half-open bounds ``[T - real_time_offset, T)`` would hide them anyway; reading first
also keeps the store's count cap from evicting an older row that is still visible at T).

Batches are :func:`schemas.tensors.stack_requests` of the per-event requests, exactly what the
Triton model does with the requests of one ``execute()``.

Training. Labels follow the evaluation protocol of :mod:`offline.evaluate` (train period, 7-day
label delay, test period); the model trains on the train period's transactions, whose labels are
all known at the test start. Optionally the loss adds the deep request-time model's soft
predictions (distillation targets) with weight ``soft_weight``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from offline.embeddings import EmbeddingTable
from offline.shallow_model import ShallowConfig, ShallowModel, build_model, prepare_batch
from schemas.plan import ServingPlan
from schemas.tensors import build_tensors, interactions_of, stack_requests, window_keys

DISTILL_ROWS_FILE = "distill_rows.npz"


@dataclass
class DistillRows:
    """Per-event model inputs, as built by ``build_tensors``, kept padded to ``max_len``.

    ``request(i)`` gives back event i's tensors in the seed's shapes (actual ``seq_len``), equal
    to what ``build_tensors`` returned; ``batch(idx)`` stacks them with ``stack_requests``.
    """

    plan: ServingPlan
    row_index: np.ndarray  # index of the event in the transactions frame
    scalars: dict[str, np.ndarray]  # anchor + fact tensors, [N]
    sequences: dict[str, np.ndarray]  # RTI tensors, [N, max_len] (left-aligned, oldest first)
    lengths: dict[str, np.ndarray]  # hop key -> [N] actual seq_len

    def __len__(self) -> int:
        return len(self.row_index)

    @classmethod
    def allocate(cls, plan: ServingPlan, n: int) -> "DistillRows":
        scalars, sequences = {}, {}
        for spec in plan.tensors:
            if spec.kind == "rti":
                shape = (n, plan.hop(spec.hop_key).max_len)
                sequences[spec.name] = (np.full(shape, b"", dtype=object) if spec.numpy_dtype == "object"
                                        else np.zeros(shape, dtype=spec.numpy_dtype))
            else:
                scalars[spec.name] = (np.empty(n, dtype=object) if spec.numpy_dtype == "object"
                                      else np.zeros(n, dtype=spec.numpy_dtype))
        lengths = {h: np.zeros(n, np.int32) for h in plan.hop_keys}
        return cls(plan, np.zeros(n, np.int64), scalars, sequences, lengths)

    def put(self, i: int, row_index: int, tensors: dict[str, np.ndarray]) -> None:
        self.row_index[i] = row_index
        for spec in self.plan.tensors:
            arr = tensors[spec.name]
            if spec.kind == "rti":
                seq = arr.reshape(-1)
                self.sequences[spec.name][i, :len(seq)] = seq
                self.lengths[spec.hop_key][i] = len(seq)
            else:
                self.scalars[spec.name][i] = arr.reshape(-1)[0]

    def request(self, i: int) -> dict[str, np.ndarray]:
        out = {}
        for spec in self.plan.tensors:
            if spec.kind == "rti":
                n = int(self.lengths[spec.hop_key][i])
                out[spec.name] = self.sequences[spec.name][i, :n].reshape(1, n, 1)
            else:
                out[spec.name] = self.scalars[spec.name][i:i + 1].reshape(1, 1)
        return out

    def batch(self, idx: Sequence[int]) -> dict[str, np.ndarray]:
        return stack_requests(self.plan, [self.request(int(i)) for i in idx])

    def take(self, idx: np.ndarray) -> "DistillRows":
        idx = np.asarray(idx)
        return DistillRows(self.plan, self.row_index[idx], {k: v[idx] for k, v in self.scalars.items()},
                           {k: v[idx] for k, v in self.sequences.items()}, {k: v[idx] for k, v in self.lengths.items()})

    def save(self, path: str | Path) -> None:
        def plain(v):  # strings as fixed-width bytes: loadable without pickle
            return v.astype("S") if v.dtype == object else v

        arrays = {"row_index": self.row_index}
        arrays.update({f"s|{k}": plain(v) for k, v in self.scalars.items()})
        arrays.update({f"q|{k}": plain(v) for k, v in self.sequences.items()})
        arrays.update({f"l|{k}": v for k, v in self.lengths.items()})
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path, plan: ServingPlan) -> "DistillRows":
        z = np.load(path, allow_pickle=False)

        def back(v):
            return v.astype(object) if v.dtype.kind == "S" else v

        scalars = {k[2:]: back(z[k]) for k in z.files if k.startswith("s|")}
        sequences = {k[2:]: back(z[k]) for k in z.files if k.startswith("q|")}
        lengths = {k[2:]: z[k] for k in z.files if k.startswith("l|")}
        missing = [t for t in plan.tensor_names if t not in scalars and t not in sequences]
        if missing:
            raise ValueError(f"{path}: rows lack tensor {missing[0]!r} of plan {plan.name!r} (built for another plan?)")
        return cls(plan, z["row_index"], scalars, sequences, lengths)


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict]:
    cols = {c: frame[c].to_numpy().tolist() for c in columns}
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def replay_rows(plan: ServingPlan, transactions: pd.DataFrame, score_mask: np.ndarray | None = None,
                progress: bool = True, store_factory: Callable | None = None) -> DistillRows:
    """Distillation rows of the scored events (``score_mask``; default all), point-in-time.

    ``transactions`` is the plan's fact table (which is also the interaction table of the
    fraud plan's hops). Only events that can be visible to a scored event (event time >=
    first anchor - real_time_offset) are replayed.
    """
    from rti_store import MemoryWindowStore

    table = plan.fact_table
    for hop in plan.hops:
        if hop.key.target.table != table:
            raise ValueError(f"{hop.key.key}: replay supports hops whose interactions are rows of {table!r}")
    tcol = plan.fact.time_column
    times = transactions[tcol].to_numpy(np.int64)
    order = np.lexsort((transactions[plan.fact.primary_key].to_numpy(), times)) if plan.fact.primary_key \
        else np.argsort(times, kind="stable")
    score_mask = np.ones(len(transactions), bool) if score_mask is None else np.asarray(score_mask, bool)
    if not score_mask.any():
        raise ValueError("score_mask: no event to score")
    first_anchor = times[score_mask].min()
    last_anchor = times[score_mask].max()
    lo_visible, _ = plan.rti_bounds(int(first_anchor))
    order = order[(times[order] >= lo_visible) & (times[order] <= last_anchor)]
    columns = list(dict.fromkeys([*plan.fact.columns]))
    records = _records(transactions.iloc[order], columns)
    sorted_times = times[order]
    scored = score_mask[order]

    store = (store_factory or MemoryWindowStore)(plan)
    rows = DistillRows.allocate(plan, int(score_mask.sum()))
    # Group boundaries: runs of equal timestamps.
    bounds = np.flatnonzero(np.diff(sorted_times)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(sorted_times)]])
    out_i = 0
    bar = tqdm(total=len(records), desc="replay", unit="event", disable=not progress, mininterval=1.0)
    for s, e in zip(starts.tolist(), ends.tolist()):
        group = range(s, e)
        to_score = [j for j in group if scored[j]]
        if to_score:
            keys, anchors = [], []
            for j in to_score:
                ks = window_keys(plan, records[j])
                keys.extend(ks)
                anchors.extend([int(sorted_times[j])] * len(ks))
            windows = store.read_many(keys, anchors)
            n_hops = len(plan.hops)
            for k, j in enumerate(to_score):
                wins = {hk: w for (hk, _), w in zip(keys[k * n_hops:(k + 1) * n_hops], windows[k * n_hops:(k + 1) * n_hops])}
                rows.put(out_i, int(order[j]), build_tensors(plan, records[j], wins))
                out_i += 1
        items = []
        for j in group:
            items.extend(interactions_of(plan, table, records[j]))
        store.append(items)
        bar.update(e - s)
    bar.close()
    assert out_i == len(rows), (out_i, len(rows))
    # Rows in the order of the transactions frame (stable, independent of the replay order).
    return rows.take(np.argsort(rows.row_index, kind="stable"))


# ----- training ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 6
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pos_weight: float = 1.0
    soft_weight: float = 0.0  # weight of the deep model's soft predictions in the loss
    max_train_rows: int | None = None  # seeded uniform subsample of the training rows (None: all)
    seed: int = 0
    device: str = "cpu"
    model: ShallowConfig = field(default_factory=ShallowConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def batches(n: int, batch_size: int, rng: np.random.Generator | None = None):
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    for lo in range(0, n, batch_size):
        yield idx[lo:lo + batch_size]


def subsample_indices(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded uniform subsample of ``range(n)`` of size ``max_rows`` (all
    rows when ``max_rows`` is None or >= n). Uniform, not stratified, so the training fraud
    rate stays the period's own."""
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_train_rows: must be >= 1 (got {max_rows})")
    if max_rows is None or max_rows >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


@torch.no_grad()
def predict_rows(model: ShallowModel, rows: DistillRows, table: EmbeddingTable, batch_size: int = 1024,
                 device="cpu", progress: bool = False) -> np.ndarray:
    model.eval()
    out = np.zeros(len(rows), np.float32)
    for idx in tqdm(list(batches(len(rows), batch_size)), desc="score", disable=not progress, unit="batch"):
        feats = prepare_batch(rows.plan, rows.batch(idx), table, device, model.layout, model.config.hash_buckets)
        out[idx] = torch.sigmoid(model(feats)).float().cpu().numpy()
    return out


def train_shallow(rows: DistillRows, labels: np.ndarray, table: EmbeddingTable, cfg: DistillConfig = DistillConfig(),
                  soft_labels: np.ndarray | None = None, progress: bool = True, log=print,
                  eval_fn: Callable[[ShallowModel], dict] | None = None) -> tuple[ShallowModel, dict]:
    """Fit the shallow model on rows with 0/1 labels (and optional soft targets).

    With ``cfg.max_train_rows`` only a seeded uniform subsample of the rows is used (for
    machines where an epoch over every training row is too slow); evaluation is not affected."""
    available = len(rows)
    keep = subsample_indices(available, cfg.max_train_rows, cfg.seed)
    if len(keep) < available:
        rows, labels = rows.take(keep), np.asarray(labels)[keep]
        soft_labels = np.asarray(soft_labels)[keep] if soft_labels is not None else None
        log(f"distill: training on {len(keep)} of {available} rows (max_train_rows, seed {cfg.seed})")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    model = build_model(rows.plan, table.dim, cfg.model, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(rows) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    y_all = torch.from_numpy(np.asarray(labels, np.float32))
    soft_all = torch.from_numpy(np.asarray(soft_labels, np.float32)) if soft_labels is not None else None
    pos_weight = torch.tensor(cfg.pos_weight, device=device)
    history = []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(list(batches(len(rows), cfg.batch_size, rng)), desc=f"distill epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, unit="batch", mininterval=2.0)
        for idx in bar:
            feats = prepare_batch(rows.plan, rows.batch(idx), table, device, model.layout, model.config.hash_buckets)
            logits = model(feats)
            y = y_all[idx].to(device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            if soft_all is not None and cfg.soft_weight > 0:
                soft = soft_all[idx].to(device)
                loss = (1 - cfg.soft_weight) * loss + cfg.soft_weight * \
                    torch.nn.functional.binary_cross_entropy_with_logits(logits, soft)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        entry = {"epoch": epoch + 1, "train_loss": total / max(seen, 1)}
        if eval_fn is not None:
            entry["eval"] = eval_fn(model)
        history.append(entry)
        log(f"distill epoch {epoch + 1}: {entry}")
    return model, {"history": history, "seconds_train": time.perf_counter() - t0, "rows": len(rows),
                   "rows_available": available,
                   "positives": int(np.asarray(labels).sum()), "parameters": model.count_parameters()}


__all__ = ["DistillConfig", "DistillRows", "predict_rows", "replay_rows", "subsample_indices", "train_shallow"]
