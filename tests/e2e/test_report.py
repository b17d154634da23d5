"""Unit tests of the demo's pure parts: summary numbers, parity, the report files."""
from __future__ import annotations

import numpy as np
import pytest

from relstream.demo.events import transaction_records
from relstream.demo.tools import DemoError, log_tail
from relstream.demo.report import (StageTiming, StreamMeasurement, format_summary, parity_of, percentiles, summarise,
                              write_report)


def _stream(n=200, seed=0, unscored=0):
    rng = np.random.default_rng(seed)
    produced = 1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 5_000_000
    latency_ns = rng.integers(2_000_000, 40_000_000, n)
    consumed = produced + latency_ns
    labels = (rng.random(n) < 0.2).astype(np.int64)
    scores = np.clip(labels * 0.5 + rng.random(n) * 0.6, 0, 1).astype(np.float32)
    if unscored:
        consumed[:unscored] = -1
        scores[:unscored] = np.nan
    return StreamMeasurement(np.array([str(i) for i in range(n)], dtype=object), produced, consumed, scores, labels,
                             offered_rate=200.0, produce_seconds=1.0, drain_seconds=1.2), latency_ns


def test_summary_numbers_follow_from_the_measurements():
    stream, latency_ns = _stream()
    s = summarise("/run", stream, [StageTiming("stream", 1.5)], {"description": "test"})
    assert s.events == 200 and s.scored == 200 and s.unscored == 0
    assert s.latency_ms["p50"] == pytest.approx(np.percentile(latency_ns / 1e6, 50))
    assert s.latency_ms["max"] == pytest.approx(latency_ns.max() / 1e6)
    assert 0.5 < s.auc_roc <= 1.0 and 0 < s.average_precision <= 1.0
    assert s.achieved_rate == pytest.approx(200 / 1.2)
    text = format_summary(s)
    assert "p99" in text and "AUC" in text


def test_unscored_events_are_counted_and_left_out_of_latency():
    stream, latency_ns = _stream(unscored=7)
    s = summarise("/run", stream, [], {})
    assert s.unscored == 7 and s.scored == 193
    assert s.latency_ms["max"] == pytest.approx(latency_ns[7:].max() / 1e6)


def test_parity_reports_the_worst_event_and_treats_missing_as_infinite():
    ids = ["a", "b", "c"]
    p = parity_of(ids, np.array([0.1, 0.2, 0.3], np.float32), np.array([0.1, 0.2000001, 0.3], np.float32))
    assert p.ok and p.worst_event_id == "b" and p.max_abs_diff < 1e-6
    p = parity_of(ids, np.array([0.1, np.nan, 0.3]), np.array([0.1, 0.2, 0.3]))
    assert not p.ok and p.worst_event_id == "b" and p.max_abs_diff == float("inf")
    assert not parity_of(ids, np.array([0.1, 0.3, 0.3]), np.array([0.1, 0.2, 0.3])).ok
    with pytest.raises(ValueError):
        parity_of(ids, np.zeros(2), np.zeros(3))
    assert percentiles(np.array([]))["p50"] != percentiles(np.array([]))["p50"]  # nan when empty


def test_report_writes_markdown_json_and_three_plots(tmp_path):
    stream, _ = _stream()
    s = summarise(tmp_path, stream, [StageTiming("stream", 1.5, "ok")], {"description": "d", "holdout": "day 9"},
                  parity=parity_of(list(stream.event_ids), stream.scores, stream.scores))
    path = write_report(s, stream, tmp_path / "report")
    text = path.read_text()
    for name in ("latency.png", "roc.png", "pr.png", "summary.json"):
        assert (tmp_path / "report" / name).stat().st_size > 0
        if name.endswith(".png"):
            assert f"({name})" in text
    assert "max abs diff: 0.000e+00" in text and "**OK**" in text


def test_demo_error_names_the_stage_and_shows_the_log_tail(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    err = DemoError("train-deep", "exit code 1", log, log_tail(log, 3))
    text = str(err)
    assert "stage 'train-deep' failed" in text and "line 99" in text and "line 96" not in text
    assert str(log) in text


def test_transaction_records_carry_exactly_the_wire_values():
    import pandas as pd
    frame = pd.DataFrame({"transaction_id": [1], "tx_datetime": [10**18], "customer_id": [2], "terminal_id": [3],
                          "tx_amount": np.array([57.16], np.float32), "tx_fraud": [1]})
    (rec,) = transaction_records(frame)
    assert set(rec) == {"transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"}
    assert rec["tx_amount"] == float(np.float32(57.16))
