"""`relstream score` for ranking plans: session events in, ranked lists out, exactly once.

For every purchase line consumed from the session topic, the catalog top-N
(``score.recommend.catalog_top_n``) is ranked for its household as of just after the line
(anchor = event time + 1 ns, so the line itself is part of the window it reads) and one record of
``schemas/avro/recommendation.avsc`` goes to ``score.recommend.topic``, keyed by household::

    {household_id, event_id, anchor_time, items: [{product_id, score}], model, version, degraded, ...}

This is a :class:`RankingStrategy` plugged into :class:`scorer.kafka_service.KafkaScorer`: the
batch step, the consume loop, the Triton pause-and-retry, revocation handling and the Kafka transaction (records +
dead letters + consumed offsets) are that loop's, so the delivery guarantee is the same as for
``relstream score`` of a scoring plan. Windows: one store round trip per batch; the lines of the
batch itself (the event and earlier lines of the same household) are merged in memory, so the
ranking does not depend on how far ``relstream ingest`` has got (with ``append_scored`` the
scorer also writes them to the windows, idempotently).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from schemas.dead_letter import INVALID_ROW, ROW_ERRORS
from schemas.interactions import interactions_of
from schemas.plan import ServingPlan
from schemas.values import coerce_row

from .batch import Outcome
from .recommend import RankRequest, degraded_flags, find_catalog, load_catalog, shared_columns, top_items
from .settings import RecommendSettings
from .tasks import RankingTask

PATH = "kafka"
RECOMMENDATIONS_SUBJECT = "recommendations-value"


class RankingStrategy:
    """Session events in, recommendation records out (see module doc); the batch itself goes
    through the one step of every path (``scorer.batch``, :class:`scorer.tasks.RankingTask`)."""

    subject = RECOMMENDATIONS_SUBJECT

    def __init__(self, plan: ServingPlan, candidates: np.ndarray, settings: RecommendSettings):
        self.task = RankingTask(plan, settings)
        if not len(candidates):
            raise ValueError("score.recommend: no candidates (empty catalog)")
        self.plan = plan
        self.candidates = np.asarray(candidates)[:min(settings.catalog_top_n, plan.max_candidates)]
        self.settings = settings
        tables = {h.key.target.table for h in plan.hops}
        self.table = plan.fact_table if plan.fact_table in tables else next(iter(tables))

    def items(self, pending: Sequence[Any]) -> list[tuple[Any, RankRequest]]:
        """The valid events of the batch, each with its ranking request; invalid lines are marked
        dead. A request's session is the batch's own lines of its windows, up to the event."""
        plan = self.plan
        events, by_key = [], {}
        for p in pending:
            if p.event is None:
                continue
            try:  # the whole purchase line must fit the interaction table (it joins the windows)
                appends = interactions_of(plan, self.table, p.event.row)
                fact_row = coerce_row(plan, plan.fact_table, p.event.row, columns=shared_columns(plan))
            except ROW_ERRORS as exc:
                p.dead = (INVALID_ROW, str(exc))
                continue
            events.append((p, fact_row))
            for hop_key, entity, it in appends:
                by_key.setdefault((hop_key, entity), []).append((hop_key, entity, it))
        out = []
        for p, fact_row in events:
            ev = p.event
            session = tuple(a for key in ev.keys for a in by_key.get(key, ()))
            out.append((p, RankRequest(fact_row=fact_row, anchor_time=ev.anchor_time + 1, keys=ev.keys,
                                       session=session, candidates=self.candidates, k=self.settings.top_k,
                                       exclude_session_items=self.settings.exclude_session_items,
                                       event_id=ev.event_id, arrived=p.received)))
        return out

    def appends(self, items: Sequence[tuple[Any, RankRequest]]) -> list:
        """The window appends of the batch's lines (``score.append_scored``)."""
        return [a for p, _ in items for a in interactions_of(self.plan, self.table, p.event.row)]

    def record(self, scorer: Any, p: Any, outcome: Outcome, flags: tuple[str, ...], now: int) -> dict:
        prep, out = outcome.prepared, outcome.output
        if out is None:  # every candidate was in the open basket
            items, cold_row, name, version = [], None, scorer.triton.model_name, ""
        else:
            row = outcome.row
            items = [{"product_id": it["product_id"], "score": it["score"]} for it in
                     top_items(prep.candidates, out.scores[row], out.candidate_cold_start[row], prep.request.k)]
            cold_row, name, version = out.cold_start[row], out.model_name, out.version_at(row)
        entity = next(iter(prep.request.fact_row.values()))
        return {"household_id": int(entity), "event_id": p.event.event_id, "anchor_time": int(prep.request.anchor_time),
                "items": items, "model": name, "version": version,
                "degraded": degraded_flags(self.plan, flags + outcome.degraded, cold_row),
                "latency_ms": (time.perf_counter() - p.received) * 1000, "ranked_at": int(now)}

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
