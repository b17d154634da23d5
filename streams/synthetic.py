"""Synthetic transaction events and a bulk producer (tests, benchmarks, demos).

The events follow ``schemas/avro/transaction.avsc`` (subject ``transactions-value``); amounts
are rounded to float32 so a record decodes to exactly the values that were generated.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

TRANSACTIONS_SUBJECT = "transactions-value"
NS_PER_S = 1_000_000_000


def synthetic_transactions(n: int, seed: int = 0, n_customers: int = 500, n_terminals: int = 800,
                           start_ns: int = 1_700_000_000 * NS_PER_S, span_s: float = 10 * 86_400,
                           first_id: int = 1) -> list[dict[str, Any]]:
    """``n`` transactions with increasing ids and random event times over ``span_s`` seconds
    (not sorted by time: late events are part of the test)."""
    rng = np.random.default_rng(seed)
    times = start_ns + (rng.random(n) * span_s * NS_PER_S).astype(np.int64)
    customers = rng.integers(0, n_customers, n)
    terminals = rng.integers(0, n_terminals, n)
    amounts = np.round(rng.gamma(2.0, 30.0, n), 2).astype(np.float32)
    return [{"transaction_id": first_id + i, "tx_datetime": int(times[i]), "customer_id": int(customers[i]),
             "terminal_id": int(terminals[i]), "tx_amount": float(amounts[i])} for i in range(n)]


def produce_values(producer: Any, topic: str, values: Sequence[bytes | None],
                   keys: Iterable[bytes | None] | None = None, partition: int | None = None,
                   flush_timeout: float = 60.0) -> int:
    """Produce raw values (keys optional), wait for every acknowledgement; returns the count.

    Raises ``RuntimeError`` if any delivery failed.
    """
    errors: list[str] = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(str(err))

    keys = list(keys) if keys is not None else [None] * len(values)
    extra = {} if partition is None else {"partition": partition}
    for key, value in zip(keys, values):
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(flush_timeout)
    if left or errors:
        raise RuntimeError(f"produce to {topic}: {left} undelivered, {len(errors)} failed "
                           f"({errors[:1]})")
    return len(values)
