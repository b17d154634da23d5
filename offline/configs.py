"""Configuration of the offline models, free of torch so the CLI can build its parsers cheaply.

Every ``relstream`` command registers the offline subcommands; importing torch for their
defaults would cost each service seconds of start-up and hundreds of MB. The model modules
re-export these names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from offline.datasets.base import NS_PER_DAY
from offline.evaluate import SplitConfig

if TYPE_CHECKING:
    from offline.sampler import SamplerConfig


@dataclass(frozen=True)
class DeepModelConfig:
    hidden: int = 64
    embedding_dim: int = 32
    num_layers: int = 2
    heads: int = 2
    time_dim: int = 8
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    split: SplitConfig = SplitConfig()
    horizon_days: int = 7
    warmup_days: int = 30  # first training snapshot: features need a month of history
    fanouts: tuple[int, ...] = (10, 10)
    batch_size: int = 1024
    epochs: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-5
    neg_ratio: float = 3.0  # negatives per positive drawn each epoch
    max_samples_per_epoch: int = 200_000
    max_val_samples: int = 60_000
    seed: int = 0
    device: str = "cpu"
    model: DeepModelConfig = field(default_factory=DeepModelConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fanouts"] = list(self.fanouts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["split"] = SplitConfig(**d["split"])
        d["model"] = DeepModelConfig(**d["model"])
        d["fanouts"] = tuple(d["fanouts"])
        return cls(**d)

    @property
    def label_delay_ns(self) -> int:
        return self.split.delay_days * NS_PER_DAY

    @property
    def sampler(self) -> "SamplerConfig":
        from offline.sampler import SamplerConfig  # torch: only when a model is actually built

        return SamplerConfig(fanouts=self.fanouts, label_delay_ns=self.label_delay_ns)


@dataclass(frozen=True)
class RelGNNConfig:
    """Size of the deep model of any project (offline.models.relgnn)."""

    hidden: int = 64
    embedding_dim: int = 32
    time_dim: int = 8
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DeepTrainConfig:
    """Training of the deep model of any project (offline.models.train)."""

    fanouts: tuple[int, ...] = (10, 10, 10)  # most-recent-K per hop; one hop per GNN layer
    batch_size: int = 512
    epochs: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-5
    neg_ratio: float = 3.0  # negatives per positive drawn each epoch (binary tasks)
    item_negatives: int = 4  # sampled negative items per positive pair (next-item tasks)
    inbatch_weight: float = 1.0  # next-item: weight of the logQ-corrected in-batch softmax (0 = BCE only)
    max_samples_per_epoch: int = 200_000  # per task
    max_val_samples: int = 60_000
    candidates: int = 1000  # next-item validation: most popular items of the last 28 days
    eval_entities: int = 500
    seed: int = 0
    device: str = "cpu"
    model: RelGNNConfig = field(default_factory=RelGNNConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fanouts"] = list(self.fanouts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DeepTrainConfig":
        d = dict(d)
        d["model"] = RelGNNConfig(**d["model"])
        d["fanouts"] = tuple(d["fanouts"])
        return cls(**d)
