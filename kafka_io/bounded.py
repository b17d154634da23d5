"""Blocking librdkafka calls with a hard deadline, and the errors that mean "rebuild the clients".

librdkafka's own ``timeout`` arguments are not always honoured (``send_offsets_to_transaction``
waits without limit while its group-coordinator request is stuck: confluentinc/librdkafka#5456,
#5511), so the calls run on a worker thread and the caller waits at most a deadline per call.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable


class FatalConsumerError(RuntimeError):
    """The Kafka clients cannot go on (static membership fenced after a broker restart, producer
    fenced or in a fatal state, a transaction whose outcome is unknown, an abort that cannot finish).

    Nothing of the current batch was committed by this instance, so rebuilding the clients loses
    nothing: the new producer's ``init_transactions`` (same ``transactional.id``) fences the old
    one and completes or aborts its open transaction, and the new consumer resumes from the
    committed offsets (the CLI does exactly that).
    """


class ClientsWedged(FatalConsumerError):
    """A librdkafka call did not return within its hard deadline.

    ``send_offsets_to_transaction`` waits without limit, whatever its timeout, while its
    group-coordinator request is stuck (librdkafka 2.16: confluentinc/librdkafka#5456, #5511).
    The call keeps its worker thread; the clients are abandoned and rebuilt.
    """


class BoundedCalls:
    """Runs blocking librdkafka calls on one worker thread and waits at most a hard deadline.

    librdkafka's own ``timeout`` arguments are not enough (see :class:`ClientsWedged`); a call that
    overruns its deadline marks this runner wedged and raises ``ClientsWedged``: the thread stays
    blocked in the dead client, and the caller rebuilds the clients.
    """

    def __init__(self, name: str = "kafka-calls", clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.wedged: str | None = None
        self.current: BoundedJob | None = None  # the job running on the worker
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, current = job
            self.current = current
            current.started = self.clock()
            try:
                current.box.append((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                current.box.append((False, exc))
            current.done.set()

    def submit(self, what: str, fn: Callable, *args) -> "BoundedJob":
        """Start ``fn(*args)`` on the worker; :meth:`BoundedJob.result` waits for it (bounded)."""
        if self.wedged:
            raise ClientsWedged(f"{what}: the clients are wedged in {self.wedged}")
        job = BoundedJob(self, what)
        self._jobs.put((fn, args, job))
        return job

    def call(self, what: str, deadline_s: float, fn: Callable, *args):
        return self.submit(what, fn, *args).result(deadline_s)

    def stop(self) -> None:
        if not self.wedged:
            self._jobs.put(None)


class BoundedJob:
    def __init__(self, calls: BoundedCalls, what: str):
        self.calls, self.what = calls, what
        self.box: list = []
        self.done = threading.Event()
        self.started = calls.clock()

    def mark(self, what: str) -> None:
        """Called on the worker before each librdkafka call of a multi-call job: the deadline
        applies to each call."""
        self.what, self.started = what, self.calls.clock()

    def result(self, deadline_s: float):
        """The call's value (or its exception), waiting while no single call has been running for
        longer than ``deadline_s``; past that the runner is wedged (:class:`ClientsWedged`)."""
        clock = self.calls.clock
        while not self.done.wait(max(0.0, min(0.5, self.started + deadline_s - clock()))):
            if clock() >= self.started + deadline_s:
                self.calls.wedged = self.what
                raise ClientsWedged(f"{self.what} did not return within {deadline_s:.0f} s (librdkafka ignored "
                                    f"its timeout)")
        ok, value = self.box[0]
        if ok:
            return value
        raise value
