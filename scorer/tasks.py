"""A serving task per plan kind: how its items become window requests and model requests.

``ScoringTask`` (a score per fact: the Kafka facts topic, ``/v1/score`` and ``/v1/infer``) and
``RankingTask`` (a ranked list per session event or ``/v1/recommend`` request) are what
:func:`scorer.batch.score_batch` needs of a plan kind; everything else of a batch - one window
read, chunked model calls, the poisoned-batch split - is that step's, for both.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from schemas.interactions import Window, WindowKey
from schemas.plan import ServingPlan
from schemas.tensors import stack_requests

from .pipeline import PreparedEvent, event_tensors
from .recommend import Prepared, RankRequest, prepare, request_tensors
from .settings import RecommendSettings


class ScoringTask:
    """Items: a :class:`PreparedEvent` (a fact to score with its windows) or ready tensors
    (``/v1/infer``: built by the client, no windows); prepared form: the item itself."""

    def __init__(self, plan: ServingPlan):
        self.plan = plan

    def window_requests(self, item: PreparedEvent | Mapping[str, np.ndarray]) -> tuple[Sequence[WindowKey], list[int]]:
        if isinstance(item, PreparedEvent):
            return item.keys, [item.anchor_time] * len(item.keys)
        return (), []

    def build(self, item, windows: Sequence[Window]):
        if isinstance(item, PreparedEvent):
            return item, event_tensors(self.plan, item, windows)
        return item, item

    def stack(self, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return stack_requests(self.plan, requests)


class RankingTask:
    """Items: :class:`RankRequest`; prepared form: :class:`Prepared` (windows merged with the
    session's own lines, session items excluded); no model call when no candidate is left."""

    def __init__(self, plan: ServingPlan, settings: RecommendSettings):
        if not plan.is_ranking:
            raise ValueError(f"plan {plan.name!r} is not a ranking plan (no ranking.candidate_column)")
        self.plan, self.settings = plan, settings

    def window_requests(self, item: RankRequest) -> tuple[Sequence[WindowKey], list[int]]:
        return item.keys, [item.anchor_time] * len(item.keys)

    def build(self, item: RankRequest, windows: Sequence[Window]) -> tuple[Prepared, Any]:
        prepared = prepare(self.plan, item, windows, self.settings)
        return prepared, None if prepared.candidates is None else request_tensors(self.plan, prepared)

    def stack(self, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return stack_requests(self.plan, requests)
