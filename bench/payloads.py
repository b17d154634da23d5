"""Benchmark payloads following the seed's protocol: 128 pre-generated requests, each for an entity
with N in {4, 8, 16, 32} recent 1-hop interactions (per ragged table), so the client never replays
byte-identical requests and every window length is exercised.

* ``/v1/score`` payloads are fact rows; the windows they need are pre-loaded into the window store
  (:func:`history_items`), so the server does the Redis read + tensor build per request.
* ``/v1/infer`` payloads are the seed's Triton-shaped JSON with the windows inlined
  (~1.5-6 KB for the fraud plan), built with ``schemas.tensors.build_tensors`` + ``to_triton_json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from schemas.interactions import Interaction, Window, interactions_of
from schemas.plan import ServingPlan
from schemas.tensors import build_tensors, to_triton_json

LENGTHS = (4, 8, 16, 32)
T0 = 1_700_000_000 * 10**9  # anchor time of every payload (ns)
MINUTE = 60 * 10**9


@dataclass(frozen=True)
class Payloads:
    rows: list[dict]  # fact rows for /v1/score (and the Kafka facts)
    history: list[dict]  # past facts that fill the windows the rows need
    lengths: list[int]  # N of each payload

    def append_items(self, plan: ServingPlan) -> list[tuple[str, object, Interaction]]:
        items = []
        for r in self.history:
            items.extend(interactions_of(plan, plan.fact_table, r))
        return items


def make_payloads(n: int = 128, lengths: Sequence[int] = LENGTHS, seed: int = 0, t0: int = T0,
                  first_customer: int = 10_000, first_terminal: int = 50_000) -> Payloads:
    """``n`` fraud-plan fact rows; row i's customer and terminal each have ``lengths[i % 4]``
    interactions in the last hours before ``t0`` (inside the plan's 7-day look-back)."""
    rng = np.random.default_rng(seed)
    rows, history, ns = [], [], []
    tx = 1
    for i in range(n):
        length = int(lengths[i % len(lengths)])
        customer, terminal = first_customer + i, first_terminal + i
        for k in range(length):
            # customer window: this customer at other terminals; terminal window: other customers here
            history.append({"transaction_id": 10**9 + tx, "tx_datetime": t0 - (k + 1) * 7 * MINUTE,
                            "customer_id": customer, "terminal_id": first_terminal + 10_000 + tx % 997,
                            "tx_amount": float(np.round(rng.gamma(2.0, 30.0), 2))})
            tx += 1
            history.append({"transaction_id": 10**9 + tx, "tx_datetime": t0 - (k + 1) * 5 * MINUTE,
                            "customer_id": first_customer + 10_000 + tx % 991, "terminal_id": terminal,
                            "tx_amount": float(np.round(rng.gamma(2.0, 30.0), 2))})
            tx += 1
        rows.append({"transaction_id": i + 1, "tx_datetime": t0, "customer_id": customer, "terminal_id": terminal,
                     "tx_amount": float(np.round(rng.gamma(2.0, 30.0), 2))})
        ns.append(length)
    return Payloads(rows=rows, history=history, lengths=ns)


def infer_bodies(plan: ServingPlan, payloads: Payloads) -> list[dict]:
    """Seed-shaped Triton JSON per payload, windows computed in memory from the same history."""
    from rti_store import MemoryWindowStore
    store = MemoryWindowStore(plan)
    store.append(payloads.append_items(plan))
    bodies = []
    for row in payloads.rows:
        keys = [(h.key.key, row[h.key.source.column]) for h in plan.hops]
        windows: list[Window] = store.read_many(keys, row["tx_datetime"])
        tensors = build_tensors(plan, row, {k: w for (k, _), w in zip(keys, windows)})
        bodies.append(to_triton_json(plan, tensors))
    return bodies
