"""Recommendation base task on the Complete Journey data: "will this household buy this
product in the next week", with the same temporal GNN as the fraud path.

The graph is households -> products (one edge per purchase line, amount = sales value). At a
weekly snapshot t the model embeds households and products from purchases strictly before t
(most-recent-K sampling); a pair's score is the scaled dot product of the two embeddings plus
the product head's logit (an inductive popularity bias computed from the product's history). Training
uses pairs bought in [t, t + 7 days) as positives and products sampled half by popularity,
half uniformly as negatives, only from snapshots whose week ended before the training cut. Evaluation ranks a
candidate set (the most popular products of the 4 weeks before t) for households active in the
test week and reports recall@k and NDCG@k against two baselines measured on the same
households and candidates: popularity, and "buy again" (the household's own purchase counts).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from offline.datasets.base import NS_PER_DAY, RelationalDataset
from offline.deep_model import DeepModelConfig, TemporalHeteroGNN
from offline.graph import TemporalGraph, build_bipartite_graph
from offline.sampler import SamplerConfig, SnapshotFeatures, sample_subgraphs, window_sums
from offline.configs import RecsysConfig  # noqa: F401  (re-exported)

HOUSEHOLDS, PRODUCTS = "households", "products"
WEEK = 7 * NS_PER_DAY


def build_recsys_graph(ds: RelationalDataset) -> TemporalGraph:
    return build_bipartite_graph(
        ds.table("transactions"),
        src=(HOUSEHOLDS, "household_id", ds.table("households")["household_id"].to_numpy(np.int64)),
        dst=(PRODUCTS, "product_id", ds.table("products")["product_id"].to_numpy(np.int64)),
        relation=("buys", "bought_by"), time_column="transaction_timestamp", id_column="transaction_id",
        amount_column="sales_value")


def recsys_weeks(line_times: np.ndarray, cfg: RecsysConfig) -> tuple[int, np.ndarray, int]:
    """``(day0, weekly snapshots, train_cut)``: snapshots at ``day0 + k weeks`` (midnight UTC of
    the first line's day) for k from ``cfg.first_week`` while a full week follows; the last
    ``cfg.test_weeks`` of them start the test period ``[train_cut, end of data]``. Training (and
    anything fitted on the deep model, e.g. the distilled ranker) uses only lines before
    ``train_cut``."""
    t0 = int(np.min(line_times))
    day0 = t0 - t0 % NS_PER_DAY
    n_weeks = int((int(np.max(line_times)) - day0) // WEEK)
    snaps = day0 + np.arange(cfg.first_week, n_weeks, dtype=np.int64) * WEEK  # each with a full week after it
    if len(snaps) <= cfg.test_weeks:
        raise ValueError(f"recsys: {n_weeks} full weeks of data leave no training week after first_week "
                         f"{cfg.first_week} and {cfg.test_weeks} test week(s)")
    return day0, snaps, int(snaps[-cfg.test_weeks])


def load_recsys_model(path) -> tuple[TemporalHeteroGNN, RecsysConfig]:
    """The model and config saved by ``recsys-train`` / ``train-recsys`` (``recsys_model.pt``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    d = dict(ckpt["config"])
    model_cfg = DeepModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("model").items()})
    cfg = RecsysConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}, model=model_cfg)
    model = TemporalHeteroGNN(cfg.model, node_types=(HOUSEHOLDS, PRODUCTS),
                              edge_types=((HOUSEHOLDS, "buys", PRODUCTS), (PRODUCTS, "bought_by", HOUSEHOLDS)))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, cfg


def week_pairs(g: TemporalGraph, t: int) -> np.ndarray:
    """Distinct (household, product) node-index pairs bought in [t, t + 1 week)."""
    lo, hi = np.searchsorted(g.edge_time, [t, t + WEEK])
    pairs = np.stack([g.edge_src[lo:hi], g.edge_dst[lo:hi]], axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def popularity(g: TemporalGraph, t: int, days: int = 28) -> np.ndarray:
    """Purchase lines per product in [t - days, t)."""
    n = g.num_nodes[PRODUCTS]
    c, _, _ = window_sums(g, PRODUCTS, np.arange(n), np.full(n, t - days * NS_PER_DAY), np.full(n, t))
    return c.astype(np.float64)


def _embed(model, g, cfg, feats, ntype, idx, t):
    """(embeddings, head logits) of one node type at instant t."""
    seeds = {ntype: (idx, np.full(len(idx), t, np.int64))}
    batch = sample_subgraphs(g, seeds, SamplerConfig(cfg.fanouts, 0), feats)
    return model(batch)[ntype]


def pair_scores(eh: torch.Tensor, ep: torch.Tensor, bias_p: torch.Tensor) -> torch.Tensor:
    """All-pairs scores [households, products]."""
    return eh @ ep.T / eh.shape[1] ** 0.5 + bias_p[None, :]


def train_recsys(ds: RelationalDataset, cfg: RecsysConfig = RecsysConfig(), progress: bool = True, log=print):
    t_start, cpu_start = time.perf_counter(), time.process_time()
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    g = build_recsys_graph(ds)
    day0, snaps, train_cut = recsys_weeks(g.edge_time, cfg)
    test_snaps = snaps[-cfg.test_weeks:]
    train_snaps = snaps[snaps + WEEK <= train_cut]  # label week ends before the training cut
    feats = SnapshotFeatures(g, snaps, 0)  # no labels in this task: delay 0
    pos = [(np.full(len(p), t, np.int64), p) for t in train_snaps for p in [week_pairs(g, int(t))]]
    pos_t = np.concatenate([a for a, _ in pos])
    pos_pairs = np.concatenate([b for _, b in pos])
    pop = {int(t): popularity(g, int(t)) + 1.0 for t in train_snaps}
    log(f"recsys: {g.num_nodes} nodes, {g.num_edges} purchase lines, {len(train_snaps)} training weeks, "
        f"{len(pos_pairs)} positive pairs, test weeks from {np.datetime64(train_cut, 'ns')}")

    model = TemporalHeteroGNN(cfg.model, node_types=g.node_types, edge_types=g.edge_types).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-5)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        chosen = rng.permutation(len(pos_pairs))[:cfg.max_positives_per_epoch]
        starts = np.arange(0, len(chosen), cfg.batch_size)
        if cfg.inbatch_weight > 0:
            # In-batch negatives need a shared snapshot: batches are cut from week-sorted
            # positives, then visited in random order.
            chosen = chosen[np.argsort(pos_t[chosen], kind="stable")]
            starts = rng.permutation(starts)
        total, seen = 0.0, 0
        bar = tqdm(starts, desc=f"recsys epoch {epoch + 1}/{cfg.epochs}", disable=not progress, unit="batch")
        for lo in bar:
            sel = chosen[lo:lo + cfg.batch_size]
            ts, hh, pp = pos_t[sel], pos_pairs[sel, 0], pos_pairs[sel, 1]
            neg = np.empty(len(sel), np.int64)
            # Negatives: half popularity-proportional (hard: teaches personalisation), half
            # uniform over products (easy: lets the product head learn popularity).
            for t in np.unique(ts):
                m = np.flatnonzero(ts == t)
                p = pop[int(t)]
                hard = rng.random(len(m)) < cfg.neg_popularity_share
                neg[m[hard]] = rng.choice(len(p), size=int(hard.sum()), p=p / p.sum())
                neg[m[~hard]] = rng.integers(0, len(p), int((~hard).sum()))
            seeds = {HOUSEHOLDS: (hh, ts), PRODUCTS: (np.concatenate([pp, neg]), np.concatenate([ts, ts]))}
            out = model(sample_subgraphs(g, seeds, SamplerConfig(cfg.fanouts, 0), feats))
            eh, (ep, bias) = out[HOUSEHOLDS][0], out[PRODUCTS]
            n = len(sel)
            scale = eh.shape[1] ** 0.5
            logits = torch.cat([(eh * ep[:n]).sum(-1) / scale + bias[:n], (eh * ep[n:]).sum(-1) / scale + bias[n:]])
            y = torch.cat([torch.ones(n), torch.zeros(n)])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            if cfg.inbatch_weight > 0:
                loss = loss + cfg.inbatch_weight * inbatch_softmax_loss(eh, ep[:n], bias[:n], ts, pp, pop)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * n
            seen += n
            bar.set_postfix(loss=f"{total / seen:.4f}")
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "positives": int(seen)})
        log(f"recsys epoch {epoch + 1}: loss {total / max(seen, 1):.4f}")
    t_train = time.perf_counter() - t_start
    # Own generator for the evaluation households: the same households for every model config.
    eval_rng = np.random.default_rng([cfg.seed, 1])
    metrics = {"history": history, "seconds_train": t_train, "train_cut_ns": train_cut,
               "data_end_ns": int(g.edge_time.max()),
               "test": evaluate_recsys(model, g, cfg, feats, test_snaps, eval_rng)}
    metrics["seconds_total"] = time.perf_counter() - t_start
    metrics["cpu_seconds_total"] = time.process_time() - cpu_start
    log(f"recsys test: {metrics['test']}")
    return model, metrics


def inbatch_softmax_loss(eh, ep, bias, ts, pp, pop) -> torch.Tensor:
    """Each household against every product of the batch bought at the same snapshot (sampled
    softmax, the diagonal is the positive). In-batch products are drawn in proportion to how often
    they are bought, so their logits get the logQ correction ``- log q(product)`` (q from the
    4-week popularity at the snapshot); otherwise popular products would be pushed down. Ranking
    within popular products is what the quality report measures, which BCE against one random
    negative barely teaches."""
    n = len(pp)
    logq = torch.as_tensor(np.array([np.log(pop[int(t)][p] / pop[int(t)].sum()) for t, p in zip(ts, pp)]),
                           dtype=eh.dtype)
    logits = eh @ ep.T / eh.shape[1] ** 0.5 + bias[None, :] - logq[None, :]
    other = torch.as_tensor((ts[:, None] != ts[None, :]) | ((pp[:, None] == pp[None, :]) & ~np.eye(n, dtype=bool)))
    logits = logits.masked_fill(other, float("-inf"))  # other snapshots, or the same product again
    return torch.nn.functional.cross_entropy(logits, torch.arange(n))


def ranking_metrics(scores: np.ndarray, truth: list[np.ndarray], ks) -> dict:
    """Mean recall@k and NDCG@k over rows; ``scores`` [rows, candidates], ``truth`` candidate
    indices bought per row; ``n_true`` counts all bought products (misses outside the
    candidates count against recall)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {}
    for k in ks:
        rec, ndcg = [], []
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        for i, (pos, n_true) in enumerate(truth):
            if n_true == 0:
                continue
            hit = np.isin(order[i, :k], pos)
            rec.append(hit.sum() / n_true)
            ideal = disc[:min(n_true, k)].sum()
            ndcg.append((hit * disc).sum() / ideal)
        out[f"recall@{k}"] = float(np.mean(rec)) if rec else float("nan")
        out[f"ndcg@{k}"] = float(np.mean(ndcg)) if ndcg else float("nan")
    return out


@torch.no_grad()
def evaluate_recsys(model, g: TemporalGraph, cfg: RecsysConfig, feats, test_snaps, rng) -> dict:
    model.eval()
    results = {"gnn": [], "popularity": [], "buy_again": []}
    for t in test_snaps:
        t = int(t)
        pop = popularity(g, t)
        cand = np.argsort(-pop, kind="stable")[:cfg.candidates]
        pairs = week_pairs(g, t)
        active = np.unique(pairs[:, 0])
        hist_end = g.csr[HOUSEHOLDS].position(active, g.time_rank(np.full(len(active), t)))
        active = active[hist_end > g.csr[HOUSEHOLDS].indptr[active]]  # households with history
        hh = np.sort(rng.choice(active, size=min(cfg.eval_households, len(active)), replace=False))
        pos_in_cand = {c: i for i, c in enumerate(cand)}
        truth = []
        for h in hh:
            bought = pairs[pairs[:, 0] == h, 1]
            truth.append((np.array([pos_in_cand[p] for p in bought if p in pos_in_cand], np.int64), len(bought)))
        eh = torch.cat([_embed(model, g, cfg, feats, HOUSEHOLDS, hh[i:i + 1024], t)[0] for i in range(0, len(hh), 1024)])
        prod = [_embed(model, g, cfg, feats, PRODUCTS, cand[i:i + 2048], t) for i in range(0, len(cand), 2048)]
        gnn = pair_scores(eh, torch.cat([p[0] for p in prod]), torch.cat([p[1] for p in prod])).numpy()
        # Buy again: the household's purchase lines of each candidate before t (+ popularity tie-break).
        csr = g.csr[HOUSEHOLDS]
        again = np.zeros((len(hh), len(cand)))
        col = {c: i for i, c in enumerate(cand)}
        for r, h in enumerate(hh):
            end = csr.position(np.array([h]), g.time_rank(np.array([t])))[0]
            prods = g.edge_dst[csr.edge[csr.indptr[h]:end]]
            for p, c in zip(*np.unique(prods, return_counts=True)):
                if p in col:
                    again[r, col[p]] = c
        popm = np.broadcast_to(pop[cand] / (pop[cand].max() + 1), again.shape)
        for name, s in (("gnn", gnn), ("popularity", np.array(popm)), ("buy_again", again + popm)):
            results[name].append(ranking_metrics(s, truth, cfg.ks))
    return {name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for name, rs in results.items()} | {
        "households_per_week": int(cfg.eval_households), "candidates": cfg.candidates,
        "test_weeks": [int(t) for t in test_snaps]}
