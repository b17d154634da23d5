"""Offline datasets behind one small interface (:class:`RelationalDataset`).

* :mod:`offline.datasets.fraud` — seeded transaction simulator (published schema) and the
  normalised fraud tables named as in ``schemas/plans/fraud.yaml``;
* :mod:`offline.datasets.loader` — ``--transactions PATH`` (parquet/CSV) with validation;
* :mod:`offline.datasets.complete_journey` — real grocery data for recommendation.
"""

from offline.datasets.base import NS_PER_DAY, NS_PER_SECOND, RelationalDataset, TableMeta

__all__ = ["NS_PER_DAY", "NS_PER_SECOND", "RelationalDataset", "TableMeta"]
