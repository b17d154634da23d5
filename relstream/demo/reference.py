"""The offline side of the parity check: the same events scored by the exported model on tensors
built offline (one unit, so the offline replay can replace it as a whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def offline_reference_scores(version_dir: str | Path, window_records: Sequence[Mapping[str, Any]],
                             events: Sequence[Mapping[str, Any]], chunk: int = 256,
                             plan=None) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``events`` by the exported model run in-process, on tensors built offline.

    The windows come from an in-memory window store (``rti_store.MemoryWindowStore``) holding the
    interactions of ``window_records`` (appended through ``schemas.tensors.interactions_of``, the
    one row -> window path); each event's windows are read as of its own time and its tensors are
    built by ``schemas.tensors.build_tensors`` -- the functions the distillation uses. Scoring is
    the bundle's own code (``offline.bundle.split_scores``). Returns (scores float32 [N],
    cold_start int8 [N, K]).
    """
    from offline.bundle import load_bundle, split_scores
    from rti_store import MemoryWindowStore
    from schemas.tensors import anchor_time_of, build_tensors, interactions_of, window_keys

    bundle = load_bundle(version_dir)
    plan = plan or bundle.plan
    store = MemoryWindowStore(plan)
    items = []
    for rec in window_records:
        items.extend(interactions_of(plan, plan.fact_table, rec))
        if len(items) >= 20_000:
            store.append(items)
            items = []
    if items:
        store.append(items)
    scores = np.zeros(len(events), np.float32)
    cold = np.zeros((len(events), len(plan.embedding_keys)), np.int8)
    for lo in range(0, len(events), chunk):
        part = events[lo:lo + chunk]
        keys, as_of = [], []
        for ev in part:
            ks = window_keys(plan, ev)
            keys.extend(ks)
            as_of.extend([anchor_time_of(plan, ev)] * len(ks))
        windows = store.read_many(keys, as_of)
        n = len(plan.hops)
        requests = []
        for k, ev in enumerate(part):
            wins = {hk: w for (hk, _), w in zip(keys[k * n:(k + 1) * n], windows[k * n:(k + 1) * n])}
            requests.append(build_tensors(plan, ev, wins))
        for j, (s, c) in enumerate(split_scores(bundle, requests)):
            scores[lo + j] = float(np.asarray(s).reshape(-1)[0])
            if c is not None:
                cold[lo + j] = np.asarray(c).reshape(-1)
    return scores, cold


def event_time_reference_scores(version_dir: str | Path, transactions, score_mask: np.ndarray,
                                chunk: int = 256) -> np.ndarray:
    """Scores of the masked events on the distillation's own rows (``offline.distill.replay_rows``:
    every event's windows as of its time while the events are replayed in event-time order, i.e.
    what the model was trained on), scored in-process by the bundle. Row order = frame order."""
    from offline.bundle import load_bundle, split_scores
    from offline.distill import replay_rows

    bundle = load_bundle(version_dir)
    rows = replay_rows(bundle.plan, transactions, score_mask, progress=False)
    out = np.zeros(len(rows), np.float32)
    for lo in range(0, len(rows), chunk):
        reqs = [rows.request(i) for i in range(lo, min(len(rows), lo + chunk))]
        for j, (s, _c) in enumerate(split_scores(bundle, reqs)):
            out[lo + j] = float(np.asarray(s).reshape(-1)[0])
    return out


