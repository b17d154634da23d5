"""The one scoring step of a batch, shared by every path (Kafka, HTTP) and plan kind (scoring, ranking).

    items --(task.window_requests)--> ONE window read --(task.build)--> ONE model call per chunk
          --(a rejected chunk: each request alone)--> an :class:`Outcome` per item

The step is written without I/O (a generator: it *yields* what it needs done -
:class:`ReadWindows`, then :class:`Infer` per chunk - and is sent the answers), so the Kafka path
drives it with blocking clients (:func:`run_sync`), the HTTP path with asyncio (:func:`run_async`),
and a unit test with plain functions. What differs between plan kinds is a
:class:`ServingTask` (``scorer.tasks``); what differs between paths is the driver's two callables
(how windows are read and what a model call does when Triton is down: the Kafka path pauses and
retries, the HTTP path answers 503).

Poisoned batches: a model call that Triton refuses (``TritonRequestError``: a request it cannot
take) is repeated request by request, so one bad request costs only its own answer; a single
refused request becomes that item's :class:`Outcome` error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator, Mapping, Protocol, Sequence

import numpy as np

from schemas.dead_letter import ROW_ERRORS
from schemas.interactions import Window, WindowKey
from schemas.plan import ServingPlan

from .triton import TritonRequestError


@dataclass(frozen=True)
class ReadWindows:
    """Read these windows, each as of its time, in one store round trip; answer a WindowRead."""

    keys: list[WindowKey]
    as_of: list[int]


@dataclass(frozen=True)
class Infer:
    """Call the model once with these stacked tensors; answer its output, or the
    ``TritonRequestError`` it raised (any other exception propagates from the driver)."""

    tensors: Mapping[str, np.ndarray]
    size: int


@dataclass
class Outcome:
    """What the step made of one item: the task's prepared form of it (``prepared``), and either
    the model output and its row in it, no model call at all (``output`` None: nothing to score,
    e.g. every candidate excluded), or an ``error`` (a RowError-like build error, or the
    TritonRequestError of a refused request)."""

    prepared: Any = None
    output: Any = None
    row: int = 0
    error: Exception | None = None
    degraded: tuple[str, ...] = ()


class ServingTask(Protocol):
    """How one plan kind turns an item into window requests and tensors (``scorer.tasks``)."""

    plan: ServingPlan

    def window_requests(self, item: Any) -> tuple[Sequence[WindowKey], Sequence[int]]: ...

    def build(self, item: Any, windows: Sequence[Window]) -> tuple[Any, Mapping[str, np.ndarray] | None]:
        """``(prepared, tensors)``: the item made ready with its windows, and its request's
        tensors (None: nothing to score); raises one of ROW_ERRORS for a bad item."""

    def stack(self, requests: Sequence[Mapping[str, np.ndarray]]) -> Mapping[str, np.ndarray]: ...


Step = Generator[Any, Any, list[Outcome]]


def score_batch(task: ServingTask, items: Sequence[Any], max_batch: int | None = None) -> Step:
    """The step (see module doc): yields ReadWindows once (if any item reads windows) and Infer per
    model call; returns one Outcome per item, in order. ``max_batch``: most requests per call."""
    spans, keys, as_of = [], [], []
    for item in items:
        k, t = task.window_requests(item)
        spans.append((len(keys), len(keys) + len(k)))
        keys.extend(k)
        as_of.extend(t)
    windows: Sequence[Window] = ()
    degraded: tuple[str, ...] = ()
    if keys:
        read = yield ReadWindows(keys, as_of)
        windows, degraded = read.windows, tuple(read.degraded)
    outcomes: list[Outcome] = []
    requests, slots = [], []
    for i, (item, (lo, hi)) in enumerate(zip(items, spans)):
        outcome = Outcome(degraded=degraded if hi > lo else ())
        outcomes.append(outcome)
        try:
            outcome.prepared, tensors = task.build(item, windows[lo:hi])
        except ROW_ERRORS as exc:
            outcome.error = exc
            continue
        if tensors is not None:
            requests.append(tensors)
            slots.append(i)
    step = max_batch or len(requests) or 1
    for start in range(0, len(requests), step):
        chunk = slice(start, start + step)
        answers = yield from infer_splitting(task, requests[chunk])
        for i, answer in zip(slots[chunk], answers):
            if isinstance(answer, Exception):
                outcomes[i].error = answer
            else:
                outcomes[i].output, outcomes[i].row = answer
    return outcomes


def infer_splitting(task: ServingTask, requests: Sequence[Mapping[str, np.ndarray]]) -> Generator[Infer, Any, list]:
    """One model call for ``requests``; refused: one call per request. Returns per request
    ``(output, row)`` or the TritonRequestError that refused it alone."""
    out = yield Infer(task.stack(requests), len(requests))
    if not isinstance(out, TritonRequestError):
        return [(out, i) for i in range(len(requests))]
    if len(requests) == 1:
        return [out]
    answers = []
    for request in requests:  # one request poisoned the call: each on its own
        one = yield Infer(task.stack([request]), 1)
        answers.append(one if isinstance(one, TritonRequestError) else (one, 0))
    return answers


def run_sync(step: Step, read: Callable[[list, list], Any], infer: Callable[[Mapping, int], Any]) -> list[Outcome]:
    """Drive ``step`` with blocking I/O: ``read(keys, as_of)`` and ``infer(tensors, size)``."""
    try:
        op = next(step)
        while True:
            op = step.send(_answer_sync(op, read, infer))
    except StopIteration as done:
        return done.value


def _answer_sync(op, read, infer):
    if isinstance(op, ReadWindows):
        return read(op.keys, op.as_of)
    try:
        return infer(op.tensors, op.size)
    except TritonRequestError as exc:
        return exc


async def run_async(step: Step, read: Callable[[list, list], Awaitable[Any]],
                    infer: Callable[[Mapping, int], Awaitable[Any]]) -> list[Outcome]:
    """Drive ``step`` with asyncio I/O (the same callables, awaited)."""
    try:
        op = next(step)
        while True:
            if isinstance(op, ReadWindows):
                answer = await read(op.keys, op.as_of)
            else:
                try:
                    answer = await infer(op.tensors, op.size)
                except TritonRequestError as exc:
                    answer = exc
            op = step.send(answer)
    except StopIteration as done:
        return done.value
