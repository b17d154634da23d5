"""Train the temporal GNN on the entity-level base task, leak-free.

Base task: for a (customer or terminal, snapshot instant t), "will this entity see at least one
fraudulent transaction in [t, t + horizon)". Snapshots are midnights (UTC).

Leakage rules (tested in tests/offline/test_leakage.py):
* Training happens "at" the split's test start T = train_end + delay, on ``dataset.upto(T,
  delay)``: rows at/after T are gone and labels of transactions at/after ``train_end`` are
  masked (unknown), exactly what a model trained at T could know.
* A training target window [t, t + horizon) must end at or before ``train_end`` so that every
  label it reads is visible; features at t use transactions before t and labels before
  t - delay (sampler rules).
* Validation snapshots lie in the test period and are featurised from the full data with the
  same sampler rules (their targets are ground truth for scoring only).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from offline.datasets.base import NS_PER_DAY, RelationalDataset
from offline.deep_model import DeepModelConfig, TemporalHeteroGNN
from offline.evaluate import SplitConfig, data_day0_ns
from offline.graph import NODE_TYPES, TemporalGraph, build_graph
from offline.sampler import SamplerConfig, SnapshotFeatures, future_fraud_labels, sample_subgraphs
from offline.configs import TrainConfig  # noqa: F401  (re-exported)


@dataclass
class SnapshotSamples:
    """Rows (node type code, node index, snapshot ns, target) over a set of snapshots."""

    ntype: np.ndarray
    node: np.ndarray
    time: np.ndarray
    y: np.ndarray

    def take(self, idx: np.ndarray) -> "SnapshotSamples":
        return SnapshotSamples(self.ntype[idx], self.node[idx], self.time[idx], self.y[idx])

    def __len__(self) -> int:
        return len(self.y)


def snapshot_samples(g: TemporalGraph, snapshots_ns: np.ndarray, horizon_ns: int) -> SnapshotSamples:
    parts = []
    for code, t in enumerate(g.node_types):
        n = g.num_nodes[t]
        node = np.tile(np.arange(n), len(snapshots_ns))
        at = np.repeat(snapshots_ns, n)
        y = future_fraud_labels(g, t, node, at, horizon_ns)
        parts.append((np.full(len(node), code, np.int8), node, at, y))
    return SnapshotSamples(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def training_window(ds: RelationalDataset, cfg: TrainConfig) -> dict:
    """The instants that define what training may see (see module docstring)."""
    day0 = data_day0_ns(ds.table("transactions"))
    train_end = day0 + cfg.split.train_end_day * NS_PER_DAY
    train_at = day0 + cfg.split.test_start_day * NS_PER_DAY
    horizon = cfg.horizon_days * NS_PER_DAY
    # Short data: shrink the warm-up so that at least one snapshot remains (features are then
    # computed over less than 30 days of history, which the model sees as low counts).
    warmup = max(1, min(cfg.warmup_days, cfg.split.train_end_day - cfg.horizon_days))
    first = day0 + warmup * NS_PER_DAY
    train_snaps = np.arange(first, train_end - horizon + 1, NS_PER_DAY, dtype=np.int64)
    last_ns = int(ds.table("transactions")["tx_datetime"].max())
    val_snaps = np.arange(train_at, day0 + cfg.split.test_end_day * NS_PER_DAY, NS_PER_DAY, dtype=np.int64)
    val_snaps = val_snaps[val_snaps + horizon <= last_ns + 1]
    if len(train_snaps) == 0:
        raise ValueError(f"train-deep: no training snapshot between warm-up day {cfg.warmup_days} and "
                         f"train end day {cfg.split.train_end_day} - horizon {cfg.horizon_days}")
    return {"day0_ns": day0, "train_end_ns": train_end, "trained_at_ns": train_at,
            "train_snapshots_ns": train_snaps, "val_snapshots_ns": val_snaps}


def batch_seeds(s: SnapshotSamples, node_types=NODE_TYPES) -> dict:
    """Seeds per node type; ``ntype`` codes index ``node_types`` (the graph's)."""
    return {t: (s.node[s.ntype == code], s.time[s.ntype == code]) for code, t in enumerate(node_types)}


def batch_targets(s: SnapshotSamples, device, node_types=NODE_TYPES) -> dict:
    return {t: torch.from_numpy(s.y[s.ntype == code]).to(device) for code, t in enumerate(node_types)}


def to_device(batch, device):
    return batch if str(device) == "cpu" else batch.to(device)


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def predict(model: TemporalHeteroGNN, g: TemporalGraph, samples: SnapshotSamples, cfg: TrainConfig,
            features: SnapshotFeatures | None, batch_size: int = 4096, progress: bool = True, desc: str = "predict"):
    """Base-task scores and embeddings for sample rows (row order preserved)."""
    model.eval()
    scores = np.zeros(len(samples), np.float32)
    emb = np.zeros((len(samples), model.cfg.embedding_dim), np.float32)
    for lo in tqdm(range(0, len(samples), batch_size), desc=desc, disable=not progress, unit="batch"):
        part = samples.take(np.arange(lo, min(lo + batch_size, len(samples))))
        batch = to_device(sample_subgraphs(g, batch_seeds(part, g.node_types), cfg.sampler, features), cfg.device)
        out = model(batch)
        for code, t in enumerate(g.node_types):
            rows = lo + np.flatnonzero(part.ntype == code)
            emb[rows] = out[t][0].cpu().numpy()
            scores[rows] = torch.sigmoid(out[t][1]).cpu().numpy()
    return scores, emb


def base_task_metrics(samples: SnapshotSamples, scores: np.ndarray, node_types=NODE_TYPES) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    out = {}
    for code, t in enumerate(node_types):
        m = samples.ntype == code
        y = samples.y[m]
        ok = len(np.unique(y)) == 2
        out[t] = {"auc_roc": float(roc_auc_score(y, scores[m])) if ok else float("nan"),
                  "average_precision": float(average_precision_score(y, scores[m])) if ok else float("nan"),
                  "n": int(m.sum()), "positive_rate": float(y.mean()) if len(y) else float("nan")}
    return out


def train(ds: RelationalDataset, cfg: TrainConfig = TrainConfig(), progress: bool = True, log=print):
    """Returns (model, metrics). Deterministic for a given seed on CPU."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    win = training_window(ds, cfg)
    horizon = cfg.horizon_days * NS_PER_DAY
    # What a model trained at T = test start can know: rows < T, labels < train_end.
    known = ds.upto(win["trained_at_ns"], cfg.label_delay_ns)
    g_train = build_graph(known)
    pool = snapshot_samples(g_train, win["train_snapshots_ns"], horizon)
    feats = SnapshotFeatures(g_train, win["train_snapshots_ns"], cfg.label_delay_ns)
    t_prep = time.perf_counter() - t_start
    log(f"train-deep: {len(win['train_snapshots_ns'])} training snapshots, {len(pool)} samples, "
        f"{int(pool.y.sum())} positive; prep {t_prep:.1f}s")

    device = torch.device(cfg.device)
    model = TemporalHeteroGNN(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pos = np.flatnonzero(pool.y > 0)
    neg = np.flatnonzero(pool.y == 0)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        n_neg = min(len(neg), int(cfg.neg_ratio * max(len(pos), 1)))
        chosen = np.concatenate([pos, rng.choice(neg, size=n_neg, replace=False)])
        if len(chosen) > cfg.max_samples_per_epoch:
            chosen = rng.choice(chosen, size=cfg.max_samples_per_epoch, replace=False)
        chosen = rng.permutation(chosen)
        total, seen = 0.0, 0
        bar = tqdm(range(0, len(chosen), cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, unit="batch")
        for lo in bar:
            part = pool.take(chosen[lo:lo + cfg.batch_size])
            batch = to_device(sample_subgraphs(g_train, batch_seeds(part), cfg.sampler, feats), device)
            targets = batch_targets(part, device)
            out = model(batch)
            loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(out[t][1], targets[t], reduction="sum")
                       for t in NODE_TYPES if len(targets[t])) / len(part)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(part)
            seen += len(part)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "samples": int(seen)})
        log(f"epoch {epoch + 1}: loss {total / max(seen, 1):.4f} ({seen} samples)")
    t_train = time.perf_counter() - t_start
    cpu_train = time.process_time() - cpu_start  # ~ wall time on an otherwise idle core (1 thread)

    metrics = {"history": history, "train_samples_pool": len(pool), "train_positives": int(pool.y.sum()),
               "train_snapshots": len(win["train_snapshots_ns"]), "seconds_prep": t_prep,
               "seconds_train": t_train, "cpu_seconds_train": cpu_train}
    if len(win["val_snapshots_ns"]):
        g_full = build_graph(ds)
        val = snapshot_samples(g_full, win["val_snapshots_ns"], horizon)
        if len(val) > cfg.max_val_samples:
            val = val.take(np.sort(rng.choice(len(val), size=cfg.max_val_samples, replace=False)))
        vfeats = SnapshotFeatures(g_full, win["val_snapshots_ns"], cfg.label_delay_ns)
        scores, _ = predict(model, g_full, val, cfg, vfeats, progress=progress, desc="validate")
        metrics["validation"] = base_task_metrics(val, scores)
        metrics["validation_snapshots"] = len(win["val_snapshots_ns"])
        log(f"validation (base task, test period): {metrics['validation']}")
    metrics["seconds_total"] = time.perf_counter() - t_start
    metrics["cpu_seconds_total"] = time.process_time() - cpu_start
    metrics["torch_threads"] = torch.get_num_threads()
    metrics["window"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in win.items()}
    return model, metrics


def save_model(path: str | Path, model: TemporalHeteroGNN, cfg: TrainConfig) -> None:
    torch.save({"state_dict": model.state_dict(), "train_config": cfg.to_dict()}, path)


def load_model(path: str | Path, device: str = "cpu") -> tuple[TemporalHeteroGNN, TrainConfig]:
    ckpt = torch.load(path, map_location=device, weights_only=True)
    cfg = TrainConfig.from_dict(ckpt["train_config"])
    model = TemporalHeteroGNN(cfg.model).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, cfg
