"""`relstream score` for ranking plans: session events in, ranked lists out, exactly once.

For every purchase line consumed from the session topic, the catalog top-N
(``score.recommend.catalog_top_n``) is ranked for its household as of just after the line
(anchor = event time + 1 ns, so the line itself is part of the window it reads) and one record of
``schemas/avro/recommendation.avsc`` goes to ``score.recommend.topic``, keyed by household::

    {household_id, event_id, anchor_time, items: [{product_id, score}], model, version, degraded, ...}

This is a :class:`RankingStrategy` plugged into :class:`scorer.kafka_service.KafkaScorer`: the
consume loop, the Triton pause-and-retry, revocation handling and the Kafka transaction (records +
dead letters + consumed offsets) are that loop's, so the delivery guarantee is the same as for
``relstream score`` of a scoring plan. Windows: one store round trip per batch; the lines of the
batch itself (the event and earlier lines of the same household) are merged in memory, so the
ranking does not depend on how far ``relstream ingest`` has got (with ``append_scored`` the
scorer also writes them to the windows, idempotently).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np

from schemas.dead_letter import INVALID_ROW, MODEL_REJECTED
from schemas.plan import ServingPlan
from schemas.tensors import RowError, coerce_row, interactions_of

from .recommend import (RankRequest, RecommendSettings, degraded_flags, find_catalog, load_catalog, prepare,
                        request_tensors, shared_columns, top_items)

log = logging.getLogger(__name__)
PATH = "kafka"
RECOMMENDATIONS_SUBJECT = "recommendations-value"
APPEND_FAILED = "window_append_failed"


class RankingStrategy:
    """Turns a consumed batch of session events into recommendation records (see module doc)."""

    subject = RECOMMENDATIONS_SUBJECT

    def __init__(self, plan: ServingPlan, candidates: np.ndarray, settings: RecommendSettings):
        if not plan.is_ranking:
            raise ValueError(f"plan {plan.name!r} is not a ranking plan (no ranking.candidate_column)")
        if not len(candidates):
            raise ValueError("score.recommend: no candidates (empty catalog)")
        self.plan = plan
        self.candidates = np.asarray(candidates)[:min(settings.catalog_top_n, plan.max_candidates)]
        self.settings = settings
        tables = {h.key.target.table for h in plan.hops}
        self.table = plan.fact_table if plan.fact_table in tables else next(iter(tables))

    def requests(self, scorer: Any, pending: Sequence[Any]) -> tuple[list, list]:
        """``(events, requests)``: the valid events of the batch and one ranking request each."""
        plan = self.plan
        events, by_key = [], {}
        for p in pending:
            if p.event is None:
                continue
            try:  # the whole purchase line must fit the interaction table (it joins the windows)
                appends = interactions_of(plan, self.table, p.event.row)
                fact_row = coerce_row(plan, plan.fact_table, p.event.row, columns=shared_columns(plan))
            except (RowError, ValueError, TypeError, OverflowError) as exc:
                p.dead = (INVALID_ROW, str(exc))
                continue
            events.append((p, appends, fact_row))
            for hop_key, entity, it in appends:
                by_key.setdefault((hop_key, entity), []).append((hop_key, entity, it))
        reqs = []
        for p, _appends, fact_row in events:
            ev = p.event
            session = tuple(a for key in ev.keys for a in by_key.get(key, ()))
            reqs.append(RankRequest(fact_row=fact_row, anchor_time=ev.anchor_time + 1, keys=ev.keys, session=session,
                                    candidates=self.candidates, k=self.settings.top_k,
                                    exclude_session_items=self.settings.exclude_session_items,
                                    event_id=ev.event_id, arrived=p.received))
        return events, reqs

    def process(self, scorer: Any, msgs: Sequence[Any], stats: Any) -> tuple[list, list]:
        """``(pending, [(pending item, record)])`` for one consumed batch; dead letters are marked
        on the pending items (``p.dead``) and produced by the loop's transaction."""
        m, plan = scorer.metrics, self.plan
        pending = scorer.decode(msgs)
        events, reqs = self.requests(scorer, pending)
        flags: tuple[str, ...] = ()
        if events and scorer.append_scored and scorer.store is not None:
            try:
                scorer.store.append([a for _, appends, _ in events for a in appends])
            except Exception as exc:  # noqa: BLE001 - ranking goes on with the in-memory merge
                log.warning("self-append failed: %s", exc)
                m.errors.labels(PATH, "window_append").inc()
                flags = (APPEND_FAILED,)
        keys = [k for r in reqs for k in r.keys]
        as_of = [r.anchor_time for r in reqs for _ in r.keys]
        with m.stage(PATH, "window_read"):
            read = scorer.fallback.read(keys, as_of)
        if keys:
            m.window_reads.labels(PATH).inc()
        prepared, tensors, slots = [], [], []
        with m.stage(PATH, "tensor_build"):
            pos = 0
            for (p, _, _), req in zip(events, reqs):
                prep = prepare(plan, req, read.windows[pos:pos + len(req.keys)], self.settings)
                pos += len(req.keys)
                prepared.append(prep)
                if prep.candidates is not None:
                    try:
                        tensors.append(request_tensors(plan, prep))
                        slots.append(len(prepared) - 1)
                    except (RowError, ValueError, TypeError, OverflowError) as exc:
                        p.dead = (INVALID_ROW, str(exc))
        outs = scorer._infer_all(tensors, stats) if tensors else []
        answer = dict(zip(slots, outs))
        now = scorer.now_ns()
        records = []
        for j, ((p, _, fact_row), prep) in enumerate(zip(events, prepared)):
            if p.dead is not None:
                continue
            out = answer.get(j)
            if isinstance(out, Exception):
                p.dead = (MODEL_REJECTED, str(out))
                continue
            if out is None:  # every candidate was in the open basket
                items, cold_row, name, version = [], None, scorer.triton.model_name, ""
            else:
                model_out, row = out
                items = [{"product_id": it["product_id"], "score": it["score"]} for it in
                         top_items(prep.candidates, model_out.scores[row], model_out.candidate_cold_start[row],
                                   prep.request.k)]
                cold_row, name, version = model_out.cold_start[row], model_out.model_name, model_out.model_version
            entity = next(iter(fact_row.values()))
            records.append((p, {
                "household_id": int(entity), "event_id": p.event.event_id, "anchor_time": int(prep.request.anchor_time),
                "items": items, "model": name, "version": version,
                "degraded": degraded_flags(plan, flags + read.degraded, cold_row),
                "latency_ms": (time.perf_counter() - p.received) * 1000, "ranked_at": int(now)}))
        return pending, records

    def committed(self, scorer: Any, records: Sequence[tuple[Any, dict]]) -> None:
        m = scorer.metrics
        if not records:
            return
        m.scored.labels(PATH).inc(len(records))
        total = m.stage_seconds.labels(PATH, "total")
        for _, rec in records:
            total.observe(rec["latency_ms"] / 1000)
            for reason in rec["degraded"]:
                m.child(m.degraded, PATH, reason).inc()


def ranking_catalog(cfg: Any, settings: Any, rs: RecommendSettings) -> np.ndarray:
    path = rs.catalog or find_catalog(cfg.model_repository, settings.model_name or cfg.triton.model_name,
                                      settings.model_version)
    if path is None:
        raise ValueError("score.recommend.catalog: not set and the model repository has no catalog.parquet "
                         f"for model {settings.model_name or cfg.triton.model_name!r} under {cfg.model_repository}")
    return load_catalog(path)


__all__ = ["RECOMMENDATIONS_SUBJECT", "RankingStrategy", "ranking_catalog"]
