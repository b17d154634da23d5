"""Per-version score distributions, scraped from the scorers' Prometheus /metrics (`relstream model status`)."""

from __future__ import annotations

import math
import urllib.request
from typing import Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

SCORE_HISTOGRAM = "relstream_scorer_score"


def parse_version_histograms(text: str, name: str = SCORE_HISTOGRAM) -> dict[str, dict]:
    """{model_version: {"count", "mean", "buckets": {le: cumulative}}} from Prometheus text."""

    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != name:
            continue
        for s in fam.samples:
            version = s.labels.get("model_version")
            if version is None:
                continue
            entry = out.setdefault(version, {"count": 0.0, "sum": 0.0, "buckets": {}})
            if s.name.endswith("_bucket"):
                le = s.labels["le"]
                entry["buckets"][le] = entry["buckets"].get(le, 0.0) + s.value
            elif s.name.endswith("_count"):
                entry["count"] += s.value
            elif s.name.endswith("_sum"):
                entry["sum"] += s.value
    for entry in out.values():
        entry["mean"] = entry["sum"] / entry["count"] if entry["count"] else None
    return out


def scorer_version_metrics(urls: Sequence[str]) -> dict[str, dict]:
    """Merge the score histograms of several scorer /metrics endpoints (unreachable ones skipped)."""

    merged: dict[str, dict] = {}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for version, h in parse_version_histograms(text).items():
            m = merged.setdefault(version, {"count": 0.0, "sum": 0.0, "buckets": {}})
            m["count"] += h["count"]
            m["sum"] += h["sum"]
            for le, c in h["buckets"].items():
                m["buckets"][le] = m["buckets"].get(le, 0.0) + c
    for m in merged.values():
        m["mean"] = m["sum"] / m["count"] if m["count"] else None
        m["quantiles"] = {q: histogram_quantile(q, m["buckets"]) for q in (0.5, 0.9, 0.99)}
    return merged


def histogram_quantile(q: float, buckets: Mapping[str, float]) -> float | None:
    """Prometheus-style quantile from cumulative buckets (linear within a bucket)."""
    edges = sorted(((math.inf if le == "+Inf" else float(le)), c) for le, c in buckets.items())
    if not edges or edges[-1][1] == 0:
        return None
    rank = q * edges[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in edges:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0.0)
        prev_le, prev_c = le, c
    return prev_le
