"""Configuration of the offline models, free of torch so the CLI can build its parsers cheaply.

Every ``relstream`` command registers the offline subcommands; importing torch for their
defaults would cost each service seconds of start-up and hundreds of MB. The model modules
re-export these names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
