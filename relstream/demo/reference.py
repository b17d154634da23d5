"""The offline side of the parity check: the same events scored by the exported model on tensors
built offline (one unit, so the offline replay can replace it as a whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from offline.distillation.replay import replay_requests, replay_rows
from offline.export.bundle import load_bundle, split_scores


def offline_reference_scores(version_dir: str | Path, window_records: Sequence[Mapping[str, Any]],
                             events: Sequence[Mapping[str, Any]], chunk: int = 256,
                             plan=None) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``events`` by the exported model run in-process, on tensors built offline.

    The tensors come from the distillation's own replay (``offline.distillation.replay``), with
    every interaction of ``window_records`` in the store before the first read (``prefill``):
    the live pass re-scores events after all of them were ingested. Scoring is the bundle's own
    code (``offline.export.bundle.split_scores``). Returns (scores float32 [N], cold_start int8
    [N, K]).
    """
    bundle = load_bundle(version_dir)
    plan = plan or bundle.plan
    requests = replay_requests(plan, window_records, events, prefill=True, progress=False)
    scores = np.zeros(len(events), np.float32)
    cold = np.zeros((len(events), len(plan.embedding_keys)), np.int8)
    for lo in range(0, len(events), chunk):
        for j, out in enumerate(split_scores(bundle, requests[lo:lo + chunk])):
            scores[lo + j] = float(out["score"].reshape(-1)[0])
            if "cold_start" in out:
                cold[lo + j] = out["cold_start"].reshape(-1)
    return scores, cold


def event_time_reference_scores(version_dir: str | Path, transactions, score_mask: np.ndarray,
                                chunk: int = 256) -> np.ndarray:
    """Scores of the masked events on the distillation's own rows (``replay_rows``: every event's
    windows as of its time while the events are replayed in event-time order, i.e. what the model
    was trained on), scored in-process by the bundle. Row order = frame order."""
    bundle = load_bundle(version_dir)
    rows = replay_rows(bundle.plan, transactions, score_mask, progress=False)
    out = np.zeros(len(rows), np.float32)
    for lo in range(0, len(rows), chunk):
        reqs = [rows.request(i) for i in range(lo, min(len(rows), lo + chunk))]
        for j, scored in enumerate(split_scores(bundle, reqs)):
            out[lo + j] = float(scored["score"].reshape(-1)[0])
    return out
