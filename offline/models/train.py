"""Train the deep model of any project on its base task(s), leak-free; save / load it.

Training happens "at" the test start T (``split``): the graph is built from ``dataset.upto(T)``
(rows before T, each label masked unless older than T - its delay) and a target may only be read
if all its rows were known at T:

* ``entity_aggregate`` / ``next_item``: daily snapshots t from day0 + warm-up with
  t + horizon <= T - delay;
* ``fact_label``: rows with warm-up <= time < T - delay, each seeded at its own time.

Validation uses the full data in [T, T + test_days) with the same sampler rules (ground truth for
scoring only). Multi-task: each epoch interleaves the tasks' batches in a seeded random order.
Deterministic for a given seed on CPU.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from offline.data.sources import split_instants
from offline.data.spec import EntityAggregateTask, FactLabelTask, NextItemTask, Project
from offline.datasets.base import NS_PER_DAY, RelationalDataset
from offline.encoders import TableEncoding
from offline.configs import DeepTrainConfig, RelGNNConfig  # noqa: F401  (re-exported)
from offline.models.relgnn import RelGNN
from offline.relgraph.graph import RelGraph, build_graph
from offline.relgraph.sampler import NodeFeatures, SamplerConfig, sample
from offline.tasks.targets import (ItemPairs, entity_aggregate, fact_labels, item_popularity,
                                   next_item_pairs, recall_at_k, seed_table)


def _is_binary(y: np.ndarray) -> bool:
    return bool(np.isin(np.unique(y), (0.0, 1.0)).all())


def fit_encodings(project: Project, ds: RelationalDataset, cut_ns: int) -> dict[str, TableEncoding]:
    """Encoders of every table fitted on its rows before ``cut_ns`` (static tables: all rows)."""
    out = {}
    for name, t in project.spec.tables.items():
        df = ds.table(name)
        rows = np.arange(len(df)) if t.time_column is None else np.flatnonzero(df[t.time_column].to_numpy() < cut_ns)
        out[name] = TableEncoding.fit(df, {c: t.columns[c] for c in project.feature_columns(name)}, rows)
    return out


def encodings_to_dict(enc: dict[str, TableEncoding]) -> dict:
    def plain(v):
        return v.item() if hasattr(v, "item") else v

    return {t: {**{k: getattr(e, k) for k in ("numeric", "boolean", "categorical", "timestamps", "mean", "std")},
                "vocab": {c: [plain(v) for v in voc] for c, voc in e.vocab.items()}} for t, e in enc.items()}


def encodings_from_dict(d: dict) -> dict[str, TableEncoding]:
    return {t: TableEncoding(**{**e, "vocab": {c: {v: i + 1 for i, v in enumerate(vals)}
                                               for c, vals in e["vocab"].items()}}) for t, e in d.items()}


def training_plan(project: Project, ds: RelationalDataset) -> dict:
    inst = split_instants(project, ds)
    warmup = project.spec.split.warmup_days
    plan = {**inst, "tasks": {}}
    for task in project.tasks:
        latest = inst["test_start_ns"] - project.task_label_delay_ns(task)
        if isinstance(task, FactLabelTask):
            # short data: the warm-up shrinks to at most half the labelled history
            days = min(warmup, int((latest - inst["day0_ns"]) // NS_PER_DAY) // 2)
            first = inst["day0_ns"] + days * NS_PER_DAY
            plan["tasks"][task.name] = {"train_rows_ns": [int(first), int(latest)]}
            continue
        horizon = task.horizon.ns
        # short data: the warm-up shrinks so that one snapshot remains (check_horizons guarantees one)
        days = max(1, min(warmup, int((latest - horizon - inst["day0_ns"]) // NS_PER_DAY)))
        snaps = np.arange(inst["day0_ns"] + days * NS_PER_DAY, latest - horizon + 1, NS_PER_DAY, dtype=np.int64)
        val = np.arange(inst["test_start_ns"], inst["test_end_ns"], NS_PER_DAY, dtype=np.int64)
        end_midnight = inst["data_end_ns"] - inst["data_end_ns"] % NS_PER_DAY + NS_PER_DAY
        val = val[val + horizon <= end_midnight]
        plan["tasks"][task.name] = {"train_snapshots_ns": snaps.tolist(), "val_snapshots_ns": val.tolist()}
    return plan


class DeepModel:
    """A trained model with what it needs to featurise any graph of its project."""

    def __init__(self, net: RelGNN, encodings: dict[str, TableEncoding], cfg: DeepTrainConfig):
        self.net, self.encodings, self.cfg = net, encodings, cfg

    def features(self, ds: RelationalDataset, g: RelGraph) -> NodeFeatures:
        return NodeFeatures(g, self.encodings, ds.frames)

    @torch.no_grad()
    def embed(self, g: RelGraph, feats: NodeFeatures, ntype: str, rows: np.ndarray, t: np.ndarray,
              batch_size: int = 2048) -> np.ndarray:
        self.net.eval()
        out = np.zeros((len(rows), self.net.cfg.embedding_dim), np.float32)
        for lo in range(0, len(rows), batch_size):
            sl = slice(lo, lo + batch_size)
            batch = sample(g, feats, {ntype: (rows[sl], t[sl])}, SamplerConfig(self.cfg.fanouts))
            out[sl] = self.net(batch.to(self.cfg.device))[ntype].cpu().numpy()
        return out

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        torch.save({"state_dict": self.net.state_dict(), "arch": self.net.arch, "train_config": self.cfg.to_dict(),
                    "encodings": encodings_to_dict(self.encodings), **(extra or {})}, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "DeepModel":
        ckpt = torch.load(path, map_location=device, weights_only=True)
        net = RelGNN.from_arch(ckpt["arch"]).to(device)
        net.load_state_dict(ckpt["state_dict"])
        net.eval()
        cfg = replace(DeepTrainConfig.from_dict(ckpt["train_config"]), device=device)
        return cls(net, encodings_from_dict(ckpt["encodings"]), cfg)


def _batch_loss(model: DeepModel, task, g, feats, part, rng, popularity, cfg) -> torch.Tensor:
    dev = cfg.device
    if isinstance(task, NextItemTask):
        item_type = g.link(task.facts, task.item).target
        # Half the negatives by popularity (hard ones), half uniform: with popularity-only
        # negatives the item bias cannot learn popularity, which dominates next-item targets.
        n_pop = cfg.item_negatives // 2
        neg = np.concatenate([rng.choice(len(popularity), size=(len(part), n_pop), p=popularity),
                              rng.integers(0, len(popularity), size=(len(part), cfg.item_negatives - n_pop))], 1)
        items = np.concatenate([part.item[:, None], neg], 1)
        seeds = {task.entity: (part.entity, part.time),
                 item_type: (items.reshape(-1), np.repeat(part.time, items.shape[1]))}
        out = model.net(sample(g, feats, seeds, SamplerConfig(cfg.fanouts)).to(dev))
        e_item = out[item_type].view(len(part), items.shape[1], -1)
        logits = (out[task.entity][:, None, :] * e_item).sum(-1) + model.net.head(task.name, e_item)
        target = torch.zeros_like(logits)
        target[:, 0] = 1
        loss = F.binary_cross_entropy_with_logits(logits, target)
        if cfg.inbatch_weight > 0 and len(part) > 1:
            # In-batch sampled softmax: each entity against every positive item of the batch,
            # logits corrected by -log q(item) (q = popularity) so popular items are not pushed
            # down for being everyone's negative; the same item elsewhere in the batch is masked.
            pos = e_item[:, 0]
            ib = out[task.entity] @ pos.T + model.net.head(task.name, pos)[None, :]
            log_q = torch.from_numpy(np.log(popularity[part.item])).to(dev, ib.dtype)
            ib = ib - log_q[None, :]
            same = torch.from_numpy(part.item[:, None] == part.item[None, :]).to(dev)
            ib = ib.masked_fill(same & ~torch.eye(len(part), dtype=torch.bool, device=dev), float("-inf"))
            loss = loss + cfg.inbatch_weight * F.cross_entropy(ib, torch.arange(len(part), device=dev))
        return loss
    out = model.net(sample(g, feats, {part.ntype: (part.rows, part.time)}, SamplerConfig(cfg.fanouts)).to(dev))
    logits = model.net.head(task.name, out[part.ntype])
    y = torch.from_numpy(part.y).to(dev)
    if getattr(task, "aggregate", "exists") == "count":
        return F.mse_loss(logits, torch.log1p(y))
    return F.binary_cross_entropy_with_logits(logits, y)


def _epoch_indices(task, pool, cfg, rng) -> np.ndarray:
    if isinstance(pool, ItemPairs):
        idx = rng.permutation(len(pool))
        return idx[:cfg.max_samples_per_epoch]
    if _is_binary(pool.y) and getattr(task, "aggregate", "exists") == "exists":
        pos, neg = np.flatnonzero(pool.y > 0), np.flatnonzero(pool.y == 0)
        n_neg = min(len(neg), int(cfg.neg_ratio * max(len(pos), 1)))
        idx = np.concatenate([pos, rng.choice(neg, size=n_neg, replace=False)])
    else:
        idx = np.arange(len(pool))
    if len(idx) > cfg.max_samples_per_epoch:
        idx = rng.choice(idx, size=cfg.max_samples_per_epoch, replace=False)
    return rng.permutation(idx)


def _take(pool, idx):
    if isinstance(pool, ItemPairs):
        return ItemPairs(pool.entity[idx], pool.time[idx], pool.item[idx])
    return pool.take(idx)


def train_deep(project: Project, ds: RelationalDataset, cfg: DeepTrainConfig = DeepTrainConfig(),
               progress: bool = True, log=print) -> tuple[DeepModel, dict]:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    plan = training_plan(project, ds)
    T = plan["test_start_ns"]
    known = ds.upto(T)
    g = build_graph(known)
    encodings = fit_encodings(project, ds, T)
    feats = NodeFeatures(g, encodings, known.frames)
    pools, popularity = {}, {}
    for task in project.tasks:
        p = plan["tasks"][task.name]
        if isinstance(task, FactLabelTask):
            pools[task.name] = fact_labels(g, task, *p["train_rows_ns"])
        elif isinstance(task, EntityAggregateTask):
            pools[task.name] = entity_aggregate(project, known, g, task, np.asarray(p["train_snapshots_ns"]))
        else:
            pools[task.name] = next_item_pairs(project, g, task, np.asarray(p["train_snapshots_ns"]))
            pop = item_popularity(project, g, task, plan["day0_ns"], T).astype(np.float64) + 1.0
            popularity[task.name] = pop / pop.sum()
        if len(pools[task.name]) == 0:
            raise ValueError(f"base_tasks {task.name}: no training example before the test start")
        log(f"train-deep: task {task.name}: {len(pools[task.name])} training examples")
    t_prep = time.perf_counter() - t_start

    heads = {task.name: (seed_table(task) if not isinstance(task, NextItemTask)
                         else g.link(task.facts, task.item).target) for task in project.tasks}
    net = RelGNN(cfg.model, list(g.node_types), g.edge_types, {t: feats.width(t) for t in g.node_types},
                 {t: encodings[t].cardinalities for t in g.node_types}, len(cfg.fanouts), heads).to(cfg.device)
    model = DeepModel(net, encodings, cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tasks = {t.name: t for t in project.tasks}
    history = []
    for epoch in range(cfg.epochs):
        net.train()
        jobs = []
        for name, pool in pools.items():
            idx = _epoch_indices(tasks[name], pool, cfg, rng)
            jobs += [(name, idx[lo:lo + cfg.batch_size]) for lo in range(0, len(idx), cfg.batch_size)]
        order = rng.permutation(len(jobs))
        totals = {n: [0.0, 0] for n in pools}
        bar = tqdm(order, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, unit="batch")
        for j in bar:
            name, idx = jobs[j]
            part = _take(pools[name], idx)
            loss = _batch_loss(model, tasks[name], g, feats, part, rng, popularity.get(name), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            totals[name][0] += float(loss.detach()) * len(idx)
            totals[name][1] += len(idx)
        entry = {"epoch": epoch + 1, **{f"loss_{n}": s / max(c, 1) for n, (s, c) in totals.items()}}
        history.append(entry)
        log(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k != "epoch"))
    metrics = {"history": history, "seconds_prep": t_prep, "seconds_train": time.perf_counter() - t_start,
               "cpu_seconds_train": time.process_time() - cpu_start,
               "train_examples": {n: len(p) for n, p in pools.items()}}
    metrics["validation"] = validate(model, project, ds, plan, progress=progress)
    log(f"validation (test period): {metrics['validation']}")
    metrics["seconds_total"] = time.perf_counter() - t_start
    metrics["cpu_seconds_total"] = time.process_time() - cpu_start
    metrics["split"] = {k: v for k, v in plan.items() if k != "tasks"}
    return model, metrics


@torch.no_grad()
def validate(model: DeepModel, project: Project, ds: RelationalDataset, plan: dict, progress: bool = False) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    cfg = model.cfg
    rng = np.random.default_rng(cfg.seed + 1)
    g = build_graph(ds)
    feats = model.features(ds, g)
    out = {}
    for task in project.tasks:
        p = plan["tasks"][task.name]
        if isinstance(task, NextItemTask):
            out[task.name] = _validate_next_item(model, project, g, feats, task, p, rng)
            continue
        if isinstance(task, FactLabelTask):
            s = fact_labels(g, task, plan["test_start_ns"], plan["test_end_ns"])
        else:
            s = entity_aggregate(project, ds, g, task, np.asarray(p["val_snapshots_ns"], np.int64))
        if len(s) > cfg.max_val_samples:
            s = s.take(np.sort(rng.choice(len(s), size=cfg.max_val_samples, replace=False)))
        if len(s) == 0:
            out[task.name] = {"n": 0}
            continue
        emb = model.embed(g, feats, s.ntype, s.rows, s.time)
        score = model.net.head(task.name, torch.from_numpy(emb).to(cfg.device)).cpu().numpy()
        ok = _is_binary(s.y) and len(np.unique(s.y)) == 2
        out[task.name] = {"n": len(s), "positive_rate": float((s.y > 0).mean()),
                          "auc_roc": float(roc_auc_score(s.y > 0, score)) if ok else float("nan"),
                          "average_precision": float(average_precision_score(s.y > 0, score)) if ok else float("nan")}
    return out


def _validate_next_item(model, project, g, feats, task, p, rng, ks=(10, 50)) -> dict:
    # one evaluation per horizon-long window of the test period (weekly for a 7-day horizon)
    snaps = np.asarray(p["val_snapshots_ns"], np.int64)[::max(1, int(task.horizon.ns // NS_PER_DAY))]
    if not len(snaps):
        return {"n": 0}
    per = [_next_item_at(model, project, g, feats, task, int(t), rng, ks) for t in snaps]
    out = {"n": sum(r["n"] for r in per), "snapshots": len(per), "candidates": per[0]["candidates"]}
    for key in per[0]:
        if "@" in key:
            out[key] = float(np.average([r[key] for r in per], weights=[r["n"] for r in per]))
    return out


def _next_item_at(model, project, g, feats, task, t, rng, ks) -> dict:
    truth_pairs = next_item_pairs(project, g, task, np.array([t]))
    entities = np.unique(truth_pairs.entity)
    if len(entities) > model.cfg.eval_entities:
        entities = np.sort(rng.choice(entities, size=model.cfg.eval_entities, replace=False))
    item_type = g.link(task.facts, task.item).target
    pop = item_popularity(project, g, task, t - 28 * NS_PER_DAY, t)
    cands = np.argsort(-pop, kind="stable")[:model.cfg.candidates]
    e = model.embed(g, feats, task.entity, entities, np.full(len(entities), t))
    it = model.embed(g, feats, item_type, cands, np.full(len(cands), t))
    dev = model.cfg.device
    bias = model.net.head(task.name, torch.from_numpy(it).to(dev)).cpu().numpy()
    scores = e @ it.T + bias[None, :]
    truth = [set(truth_pairs.item[truth_pairs.entity == x].tolist()) for x in entities]
    res = {"n": len(entities), "candidates": len(cands)}
    for k in ks:
        res[f"recall@{k}"] = recall_at_k(scores, cands, truth, k)
        res[f"popularity_recall@{k}"] = recall_at_k(np.tile(pop[cands].astype(float), (len(entities), 1)), cands, truth, k)
    return res
