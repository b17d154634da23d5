"""Shared by the /v1/recommend and Kafka ranking tests: an untrained ranker of the recsys plan
(random weights, real architecture, catalog = products 1..500 in order) loaded in the session
Triton, and the in-process reference ranking of the same bundle."""
from __future__ import annotations

from pathlib import Path

import numpy as np

T0 = 1_700_000_000_000_000_000  # anchor times of the tests are around here
DAY = 86_400 * 10**9
RANKER = "relstream_ranker_test"
HOUSEHOLDS = range(1, 41)
PRODUCTS = range(1, 501)


def load_ranker(plan, stack, name: str = RANKER) -> Path:
    """Export (once per repository) and load the untrained ranker; returns its version dir."""
    import tritonclient.http as httpclient

    from offline.export import export_untrained
    model_dir = Path(stack.model_repository) / name
    existing = sorted(p for p in model_dir.glob("[0-9]*") if p.is_dir()) if model_dir.exists() else []
    version_dir = existing[-1] if existing else export_untrained(
        plan, stack.model_repository, model_name=name, households=HOUSEHOLDS, products=PRODUCTS,
        # snapshots usable for anchors in [T0 - 5 d, T0 + 6 d]; households > 40 and products > 500 have none
        snapshot_times=[T0 - 6 * DAY, T0], seed=3)
    client = httpclient.InferenceServerClient(stack.triton_http_url.split("://")[1])
    client.load_model(name)
    assert client.is_model_ready(name)
    client.close()
    return Path(version_dir)


def reference_ranking(version_dir: Path, plan, fact_row, windows, anchor_time, candidates):
    """(scores, cold_start, candidate_cold_start) of the bundle in-process for one request."""
    from offline.export.bundle import load_bundle, split_scores
    from schemas.tensors import build_tensors
    bundle = _bundle(version_dir)
    tensors = build_tensors(plan, fact_row, windows, anchor_time=anchor_time, candidates=candidates)
    out = split_scores(bundle, [tensors])[0]
    scores, cold, cand_cold = out["score"], out["cold_start"], out["candidate_cold_start"]
    return scores[0], cold[0], cand_cold[0]


_BUNDLES: dict = {}


def _bundle(version_dir: Path):
    from offline.export.bundle import load_bundle
    if version_dir not in _BUNDLES:
        _BUNDLES[version_dir] = load_bundle(version_dir)
    return _BUNDLES[version_dir]


def expected_top(scores: np.ndarray, candidates, k: int) -> list[int]:
    order = np.argsort(-scores[:len(candidates)], kind="stable")[:k]
    return [int(np.asarray(candidates)[j]) for j in order]
