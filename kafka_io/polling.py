"""Taking what a Kafka consumer has, without librdkafka's fill-the-batch wait.

``Consumer.consume(n, timeout)`` returns when it holds ``n`` messages *or* the timeout has passed:
asked for a big batch at a modest rate it always waits the whole timeout, which then adds to the
latency of every message. Latency-sensitive readers wait only for the first message.
"""
from __future__ import annotations

from typing import Any


def consume_ready(consumer: Any, max_messages: int, timeout_s: float) -> list:
    """Up to ``max_messages``: waits at most ``timeout_s`` for the first, then takes what else has
    already arrived without waiting."""
    msgs = consumer.consume(num_messages=1, timeout=timeout_s)
    if msgs and max_messages > 1:
        msgs += consumer.consume(num_messages=max_messages - 1, timeout=0)
    return msgs
