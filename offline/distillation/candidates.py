"""Candidates of a ranking plan's training rows: the targets plus seeded negatives.

Candidates of a training example: its targets (at most ``max_positives``, seeded) plus
``n_negatives`` distinct non-target items: a share drawn popularity-proportionally and a share
uniformly from the popular items before the example's day (``InteractionIndex.popular``, rows
strictly before the day start, so no future row is used), and a share from the entity's own
window (items taken before but not now: without them "taken before" would be a free signal).
Items revealed in the open session are never negatives (they are never ranked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline.tasks.ranking import InteractionIndex

NS_PER_DAY = 86_400 * 10**9


class DailyPopularity:
    """The popular items at the start of each day (rows strictly before it), cached per day:
    ``at(t)`` -> ``(item ids, row counts)``, most frequent first."""

    def __init__(self, index: InteractionIndex, n: int, days: float = 28):
        self.index = index
        self.n, self.days = n, days
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def at(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        day = int(t) - int(t) % NS_PER_DAY
        if day not in self._cache:
            ids, counts = self.index.popular(day, self.n, self.days)
            self._cache[day] = (ids.astype(np.int64), counts.astype(np.int64))
        return self._cache[day]


@dataclass(frozen=True)
class SamplingConfig:
    n_negatives: int = 64
    max_positives: int = 16
    popularity_share: float = 0.4  # popularity-proportional among the popular items
    history_share: float = 0.2  # from the entity's own window; the rest uniform over the popular list
    popular_n: int = 2000  # size of the popular list negatives come from


class TrainingCandidates:
    """``choose`` for training rows: targets + seeded negatives (see the module docstring)."""

    def __init__(self, popularity: DailyPopularity, cfg: SamplingConfig, hop_key: str, item_column: str, seed: int):
        self.pop, self.cfg, self.hop_key, self.item_column = popularity, cfg, hop_key, item_column
        self.seed = seed

    def __call__(self, i: int, example, windows: dict):
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, i])  # per example: independent of the replay order
        targets = np.unique(np.asarray(example["targets"], np.int64))
        if len(targets) > cfg.max_positives:
            targets = np.sort(rng.choice(targets, cfg.max_positives, replace=False))
        ids, counts = self.pop.at(int(example["anchor_time"]))
        history = np.unique(np.asarray(windows[self.hop_key].columns[self.item_column], np.int64))
        n_hist = int(round(cfg.n_negatives * cfg.history_share))
        n_pop = int(round(cfg.n_negatives * cfg.popularity_share))
        pools = [rng.permutation(history)[:3 * n_hist] if len(history) else np.zeros(0, np.int64),
                 rng.choice(ids, 3 * n_pop, p=counts / counts.sum()) if len(ids) else np.zeros(0, np.int64),
                 rng.choice(ids, 3 * cfg.n_negatives) if len(ids) else np.zeros(0, np.int64)]
        # Items already in the open session are never negatives: every ranking of the quality
        # report and the recommender leaves them out, and as negatives they would teach "like
        # the session -> unlikely", the opposite of the in-session effect.
        revealed = example["revealed_items"] if "revealed_items" in example else ()
        taken = set(targets.tolist()) | set(np.asarray(revealed, np.int64).tolist())
        neg: list[int] = []

        def take(pool: np.ndarray, quota: int) -> None:
            added = 0
            for p in pool.tolist():
                if added >= quota or len(neg) >= cfg.n_negatives:
                    return
                if p not in taken:
                    taken.add(p)
                    neg.append(p)
                    added += 1

        take(pools[0], n_hist)
        take(pools[1], n_pop)
        take(pools[2], cfg.n_negatives - len(neg))  # uniform tops up to n_negatives
        cands = np.concatenate([targets, np.asarray(neg, np.int64)])
        labels = np.concatenate([np.ones(len(targets), np.float32), np.zeros(len(neg), np.float32)])
        perm = rng.permutation(len(cands))  # positions carry no label information
        return cands[perm], labels[perm]


__all__ = ["DailyPopularity", "SamplingConfig", "TrainingCandidates"]
