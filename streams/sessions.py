"""Purchase lines as session events (plan ``recsys``; schema ``schemas/avro/purchase_line.avsc``).

Complete Journey gives all lines of a basket one timestamp; the session order (the one definition
is the loader's, :func:`offline.datasets.complete_journey.session_order`) gives line ``i`` of a
basket the time ``basket_time + i`` ns, so a basket arrives as a sequence of events with distinct
times. Ingest appends each line to its household's window exactly like any other interaction
(``relstream ingest --plan recsys``): nothing here is specific to the transport.

:func:`synthetic_purchase_lines` generates such sessions for tests and benchmarks (values rounded
to float32 so that a record decodes to exactly what was generated).
"""
from __future__ import annotations

from typing import Any

import numpy as np

PURCHASE_LINES_SUBJECT = "purchase-lines-value"
RECOMMENDATIONS_SUBJECT = "recommendations-value"
NS_PER_S = 1_000_000_000


def synthetic_purchase_lines(n_baskets: int, seed: int = 0, n_households: int = 50, n_products: int = 500,
                             lines_per_basket: tuple[int, int] = (1, 12), start_ns: int = 1_700_000_000 * NS_PER_S,
                             span_s: float = 20 * 86_400, first_id: int = 1,
                             first_basket: int = 1) -> list[dict[str, Any]]:
    """Purchase lines of ``n_baskets`` baskets, in session order (basket time, then line index).

    Products follow a Zipf-like popularity so catalog top-N and windows overlap as in real data.
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_products + 1) ** 0.8
    popularity /= popularity.sum()
    basket_times = np.sort(start_ns + (rng.random(n_baskets) * span_s * NS_PER_S).astype(np.int64))
    out: list[dict[str, Any]] = []
    next_id = first_id
    for b in range(n_baskets):
        household = int(rng.integers(0, n_households))
        n_lines = int(rng.integers(lines_per_basket[0], lines_per_basket[1] + 1))
        products = rng.choice(n_products, size=n_lines, replace=False, p=popularity)
        for i, product in enumerate(products):
            out.append({"transaction_id": next_id, "transaction_timestamp": int(basket_times[b]) + i,
                        "household_id": household, "product_id": int(product) + 1,
                        "basket_id": first_basket + b, "quantity": int(rng.integers(1, 4)),
                        "sales_value": float(np.float32(round(float(rng.gamma(2.0, 2.0)), 2)))})
            next_id += 1
    return out


__all__ = ["NS_PER_S", "PURCHASE_LINES_SUBJECT", "RECOMMENDATIONS_SUBJECT", "synthetic_purchase_lines"]
