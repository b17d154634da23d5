"""Per-entity model routing for the scorers: one Triton call per model version in a batch.

:class:`RoutedTritonScorer` (Kafka path) and :class:`AsyncRoutedTritonScorer` (HTTP path) wrap
the scorer's Triton client. For every batch they read the routing state (a
:class:`relstream.lifecycle.RoutingWatcher`: one ``stat`` per second), route each row by its
entity id - the first embedding key, a fact tensor of every request - with
:func:`relstream.lifecycle.route`, send each version its rows (as the per-version Triton model
``<model>__v<N>``) and put the answers back in row order, with the version that made each row.
Without a routing file they pass the batch to the wrapped client unchanged, so a plain
single-model setup behaves exactly as before.

A version that is routed but not loaded raises the client's own ``TritonUnavailable``: the Kafka
path pauses and retries, the HTTP path answers 503 - a row is never scored silently by another
version than the routing state says.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from scorer.triton import AsyncTritonScorer

from . import lifecycle as lc


@dataclass(frozen=True)
class RoutedOutput:
    """The answer for a batch scored by one or more versions: the fields of the versions' own
    outputs (``scores``, ``cold_start``; ranking models also ``candidate_cold_start``), rows in
    batch order, and the version that made each row."""

    scores: np.ndarray  # float32 [B] (ranking: [B, n])
    cold_start: np.ndarray  # int8 [B, K]
    model_name: str  # the model (not the per-version Triton name)
    model_version: str  # the version when every row had the same one, else "mixed"
    row_versions: tuple[str, ...]
    candidate_cold_start: np.ndarray | None = None  # int8 [B, n], ranking models only

    def version_at(self, i: int) -> str:
        return self.row_versions[i]

    def name_at(self, i: int) -> str:
        return self.model_name


def entity_tensor(plan) -> str:
    """The fact tensor rows are routed by (the first embedding key, as in lifecycle.routing_entity)."""
    col = plan.embedding_keys[0].column if plan.embedding_keys else plan.hops[0].key.source.column
    return next(t.name for t in plan.tensors if t.kind == "fact" and t.column == col)


def route_rows(tensors: Mapping[str, np.ndarray], column: str, state: lc.RoutingState) -> np.ndarray:
    ids = np.asarray(tensors[column]).reshape(-1)
    return np.fromiter((lc.route(e.decode() if isinstance(e, bytes) else e, state) for e in ids.tolist()),
                       np.int64, len(ids))


def _rows(tensors: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[idx] for k, v in tensors.items()}


ROW_ARRAYS = ("scores", "cold_start", "candidate_cold_start")


def _merge(state: lc.RoutingState, versions: np.ndarray, parts: list[tuple[np.ndarray, Any]]) -> RoutedOutput:
    b = len(versions)
    merged: dict[str, np.ndarray] = {}
    for idx, out in parts:
        for name in ROW_ARRAYS:
            part = getattr(out, name, None)
            if part is None:
                continue
            part = np.asarray(part)
            if name not in merged:
                merged[name] = np.zeros((b, *part.shape[1:]), part.dtype)
            merged[name][idx] = part
    row_versions = tuple(str(v) for v in versions.tolist())
    single = row_versions[0] if len(set(row_versions)) == 1 else "mixed"
    return RoutedOutput(scores=merged.get("scores", np.empty(b, np.float32)),
                        cold_start=merged.get("cold_start", np.zeros((b, 0), np.int8)),
                        candidate_cold_start=merged.get("candidate_cold_start"),
                        model_name=state.model, model_version=single, row_versions=row_versions)


class _RoutedBase:
    def __init__(self, base, plan, routing_path: str | Path, make_client: Callable[[str, str], Any],
                 interval_s: float = 1.0):
        self.base = base
        self.plan = plan
        self.watcher = lc.RoutingWatcher(routing_path, interval=interval_s)
        self._make = make_client
        self._clients: dict[int, Any] = {}
        self._column = entity_tensor(plan)

    def __getattr__(self, name):  # url, model_name, timeout_s ... of the wrapped client
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def version_client(self, state: lc.RoutingState, version: int):
        c = self._clients.get(version)
        if c is None:
            c = self._clients[version] = self._make(lc.triton_model_name(state.model, version), str(version))
        return c

    def plan_batch(self, tensors):
        """(state, versions per row, groups [(version, row indices)]) or None to pass through."""
        state = self.watcher.current()
        if state is None or state.primary is None:
            return None
        versions = route_rows(tensors, self._column, state)
        groups = [(int(v), np.flatnonzero(versions == v)) for v in np.unique(versions)]
        return state, versions, groups

    def _close_clients(self):
        clients, self._clients = list(self._clients.values()), {}
        return clients


class RoutedTritonScorer(_RoutedBase):
    """Blocking wrapper of ``scorer.triton.TritonScorer`` (Kafka path)."""

    def infer(self, tensors: Mapping[str, np.ndarray]):
        planned = self.plan_batch(tensors)
        if planned is None:
            return self.base.infer(tensors)
        state, versions, groups = planned
        parts = []
        for version, idx in groups:
            sub = tensors if len(groups) == 1 else _rows(tensors, idx)
            parts.append((idx, self.version_client(state, version).infer(sub)))
        return _merge(state, versions, parts)

    def ready(self) -> tuple[bool, str]:
        state = self.watcher.current()
        if state is None or state.primary is None:
            return self.base.ready()
        for version in state.serving_versions:
            ok, reason = self.version_client(state, version).ready()
            if not ok:
                return False, f"version {version}: {reason}"
        return True, "ok"

    def max_batch_size(self) -> int:
        state = self.watcher.current()
        if state is None or state.primary is None:
            return self.base.max_batch_size()
        return min(self.version_client(state, v).max_batch_size() for v in state.serving_versions)

    def close(self) -> None:
        for c in self._close_clients():
            c.close()
        self.base.close()


class AsyncRoutedTritonScorer(_RoutedBase):
    """asyncio wrapper of ``scorer.triton.AsyncTritonScorer`` (HTTP path)."""

    async def infer(self, tensors: Mapping[str, np.ndarray]):
        planned = self.plan_batch(tensors)
        if planned is None:
            return await self.base.infer(tensors)
        state, versions, groups = planned
        outs = await asyncio.gather(*(
            self.version_client(state, version).infer(tensors if len(groups) == 1 else _rows(tensors, idx))
            for version, idx in groups))
        return _merge(state, versions, [(idx, out) for (_, idx), out in zip(groups, outs)])

    async def ready(self) -> tuple[bool, str]:
        state = self.watcher.current()
        if state is None or state.primary is None:
            return await self.base.ready()
        for version in state.serving_versions:
            ok, reason = await self.version_client(state, version).ready()
            if not ok:
                return False, f"version {version}: {reason}"
        return True, "ok"

    async def close(self) -> None:
        for c in self._close_clients():
            await c.close()
        await self.base.close()


def routing_path_for(cfg, model_name: str) -> Path:
    """Where the scorers look for the routing state of ``model_name`` (the control plane writes it)."""
    return lc.default_routing_path(cfg.model_repository, model_name)


def routed(base, plan, cfg, *, interval_s: float = 1.0):
    """Wrap a scorer Triton client (sync or async, scoring or ranking) so each row is scored by its
    routed version: each version gets a client of the same class, for ``<model>__v<N>``."""
    path = routing_path_for(cfg, base.model_name)
    client = type(base)

    def make(name, version):
        return client(plan, base.url, name, version, timeout_s=base.timeout_s)
    wrapper = AsyncRoutedTritonScorer if isinstance(base, AsyncTritonScorer) else RoutedTritonScorer
    return wrapper(base, plan, path, make, interval_s)
