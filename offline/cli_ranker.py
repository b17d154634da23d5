"""``relstream offline recsys-distill`` (train the distilled ranker) and the ranker branch of
``relstream offline export --plan recsys``; registered by ``offline/cli.py``.

    relstream offline recsys-distill --run-dir RUN [--examples 20000] [--epochs 3] [--train-weeks 12]
                                     [--device cpu|cuda] [--threads 1]
    relstream offline export --plan recsys --run-dir RUN --repo MODEL_REPO [--check]
    relstream offline export --plan recsys --untrained --repo MODEL_REPO [--check]

recsys-distill reads RUN/recsys_split.json (the training cut, written by ``recsys-train``) and
RUN/embeddings.parquet (``recsys-embed``), samples ranking examples (``ranking_examples``) of
the weeks before the cut that have admissible embeddings, replays their windows point-in-time,
trains the ranker and writes RUN/ranker.pt + RUN/ranker.json. The export bundles the ranker, the
recent embedding snapshots and the catalog (``popular_products`` at the end of the data).
Torch-free at import (registration only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

RANKER_FILE = "ranker.pt"
DAY_NS = 86_400 * 10**9


def _error(msg: str):
    from offline.cli import _error as offline_error

    offline_error(msg)


def _split(run_dir: Path) -> dict:
    path = run_dir / "recsys_split.json"
    if not path.exists():
        _error(f"{path}: not found (written by `relstream offline recsys-train --run-dir {run_dir}`)")
    return json.loads(path.read_text())


def _data(split: dict):
    from offline.datasets.complete_journey import load_complete_journey

    return load_complete_journey(max_rows=split.get("max_rows"), session_seed=split.get("session_seed", 0))


def _embeddings(args, run_dir: Path) -> Path:
    path = Path(args.embeddings or run_dir / "embeddings.parquet")
    if not path.exists():
        _error(f"--embeddings: {path} not found (run `relstream offline recsys-embed --run-dir {run_dir}`)")
    return path


def cmd_recsys_distill(args) -> int:
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import torch

    from offline.cli import update_manifest
    from offline.embeddings import EmbeddingTable
    from offline.evaluate import write_json
    from offline.ranker import RankerConfig
    from offline.ranker_export import save_ranker
    from offline.ranker_train import (DailyPopularity, RankerTrainConfig, SamplingConfig, TrainingCandidates,
                                      replay_ranking_rows, train_ranker)
    from offline.recsys_tasks import PurchaseIndex, ranking_examples
    from schemas.plan import builtin_plan

    if args.examples < 1 or args.epochs < 1 or args.negatives < 1:
        _error("--examples, --epochs and --negatives: must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        _error("--device cuda: no CUDA device available")
    t_start = time.perf_counter()
    run_dir = Path(args.run_dir)
    split = _split(run_dir)
    emb_path = _embeddings(args, run_dir)
    torch.set_num_threads(args.threads)
    plan = builtin_plan("recsys")
    table = EmbeddingTable.from_parquet(emb_path, plan)
    first_snapshot = pc.min(pq.read_table(emb_path, columns=["snapshot_time"]).column("snapshot_time")).as_py()
    cut = int(split["train_cut_ns"])
    # Examples whose anchors can have an admissible embedding snapshot, before the training cut.
    start = max(cut - args.train_weeks * 7 * DAY_NS, int(first_snapshot) + plan.min_embedding_offset.ns)
    if start >= cut:
        _error(f"--embeddings: the first snapshot ({np.datetime64(first_snapshot, 'ns')}) is not before the training "
               f"cut; re-run recsys-embed with snapshots before the test period")
    ds = _data(split)
    tx = ds.table("transactions")
    examples = ranking_examples(tx, start, cut, max_examples=args.examples, seed=args.seed)
    examples = examples[examples["anchor_time"] < cut].reset_index(drop=True)  # targets end before the cut too
    if examples.empty:
        _error("no ranking example before the training cut (too few rows?)")
    print(f"recsys-distill: {len(examples):,} examples from {np.datetime64(start, 'ns')} to "
          f"{np.datetime64(cut, 'ns')} (seed {args.seed})")
    if not (0 <= args.history_share <= 1 and 0 <= args.popularity_share <= 1
            and args.history_share + args.popularity_share <= 1):
        _error("--history-share and --popularity-share: each in [0, 1], together at most 1")
    sampling = SamplingConfig(n_negatives=args.negatives, max_positives=args.max_positives,
                              history_share=args.history_share, popularity_share=args.popularity_share)
    choose = TrainingCandidates(DailyPopularity(PurchaseIndex(tx), sampling.popular_n), sampling,
                                plan.hops[0].key.key, plan.candidate_column, seed=args.seed)
    t0 = time.perf_counter()
    rows = replay_ranking_rows(plan, tx, examples, choose, sampling.n_negatives + sampling.max_positives,
                               progress=not args.no_progress)
    seconds_rows = time.perf_counter() - t0
    if not 0.0 <= args.soft_weight < 1.0:
        _error(f"--soft-weight: must be in [0, 1) (got {args.soft_weight})")
    cfg = RankerTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, loss=args.loss,
                            soft_weight=args.soft_weight,
                            seed=args.seed, device=args.device,
                            model=RankerConfig(d_model=args.d_model, n_layers=args.layers, d_ff=2 * args.d_model))
    model, info = train_ranker(rows, table, cfg, progress=not args.no_progress)
    out = save_ranker(run_dir / RANKER_FILE, model.cpu(), {"plan_fingerprint": plan.fingerprint()})
    report = {"examples": len(examples), "example_range_ns": [int(start), cut], "sampling": sampling.__dict__,
              "config": cfg.to_dict(), "train": info, "seconds_rows": seconds_rows,
              "embeddings": str(emb_path), "seconds_total": time.perf_counter() - t_start}
    write_json(run_dir / "ranker.json", report)
    update_manifest(run_dir, "recsys-distill", {
        "inputs": {"embeddings": str(emb_path), "split": split}, "config": cfg.to_dict(), "seed": args.seed,
        "outputs": [str(out), str(run_dir / "ranker.json")], "metrics": info})
    print(f"recsys-distill: {info['parameters']:,} parameters, {len(rows):,} rows, "
          f"{report['seconds_total']:.0f}s -> {out}")
    return 0


def cmd_export_ranker(args) -> int:
    """``relstream offline export`` for a ranking plan (called by offline/cli_stage2.py)."""
    from schemas.plan import builtin_plan, load_plan

    from offline.ranker_export import (check_ranker_export, export_ranker, export_untrained_ranker, load_ranker)

    plan = load_plan(args.plan) if Path(args.plan).suffix in (".yaml", ".yml") else builtin_plan(args.plan)
    model_name = args.model_name if args.model_name != "relstream" else "relstream_ranker"
    requests = None
    if args.untrained:
        vdir = export_untrained_ranker(plan, args.repo, model_name=model_name, embeddings=args.embeddings,
                                       seed=args.seed)
    else:
        if args.run_dir is None:
            _error("export: give --run-dir (a recsys-distill run) or --untrained")
        import numpy as np

        from offline.recsys_tasks import PurchaseIndex, ranking_examples

        run = Path(args.run_dir)
        weights = run / RANKER_FILE
        if not weights.exists():
            _error(f"--run-dir: no {RANKER_FILE} in {run} (run `relstream offline recsys-distill` first)")
        model = load_ranker(weights, plan)
        embeddings = _embeddings(args, run)
        split = _split(run)
        tx = _data(split).table("transactions")
        cut = int(tx["transaction_timestamp"].max()) + 1  # the export cut: after the last line
        ids, counts = PurchaseIndex(tx).popular(cut, plan.max_candidates)
        manifest = {"trained": True, "run_dir": str(run), "weights": str(weights), "catalog_cut_ns": cut,
                    "catalog": f"top {len(ids)} products by purchase lines in the 28 days before the cut"}
        report = run / "ranker.json"
        if report.exists():
            rep = json.loads(report.read_text())
            manifest["training_data_range"] = {"example_range_ns": rep.get("example_range_ns"),
                                               "examples": rep.get("examples")}
            manifest["metrics"] = {"train": rep.get("train", {}).get("history")}
        days = args.embeddings_last_days
        if days is None:  # serving needs snapshots up to max_embedding_offset old, plus one spare week
            days = plan.max_embedding_offset.ns / DAY_NS + 7
        vdir = export_ranker(plan, args.repo, model, embeddings, (ids, counts), model_name=model_name,
                             manifest=manifest, embeddings_last_days=days)
        if args.check:  # real requests: the last test baskets of the data, catalog candidates
            from offline.ranker_train import replay_ranking_rows

            ex = ranking_examples(tx, cut - 7 * DAY_NS, cut, max_examples=6, seed=0)
            index = PurchaseIndex(tx)
            n_cands = (100, 1000, 10, 1, 250, 50)

            def choose(i, e, _w):
                p, _ = index.popular(int(e["anchor_time"]), n_cands[i % len(n_cands)])
                return p, np.zeros(len(p), np.float32)
            rows = replay_ranking_rows(plan, tx, ex, choose, plan.max_candidates, progress=False)
            requests = [rows.request(i) for i in range(len(rows))]
    print(f"exported {vdir}")
    if args.check:
        import torch

        from offline.cli_stage2 import _triton_urls

        torch.set_num_threads(1)  # in-process latency with the thread count the Triton model uses
        http, grpc = _triton_urls(args)
        print(json.dumps(check_ranker_export(vdir, http, grpc, requests, latency_requests=200), indent=1))
    return 0


def register_ranker(sub) -> None:
    p = sub.add_parser("recsys-distill", help="Complete Journey: train the distilled ranker (session RTI + embeddings) "
                                              "-> RUN/ranker.pt")
    p.add_argument("--run-dir", required=True, help="the recsys pipeline directory (recsys-train, recsys-embed)")
    p.add_argument("--embeddings", help="default RUN/embeddings.parquet")
    p.add_argument("--examples", type=int, default=20000, help="seeded sample of training baskets (default 20000)")
    p.add_argument("--train-weeks", type=int, default=12, help="weeks before the training cut to sample from")
    p.add_argument("--negatives", type=int, default=64, help="sampled negatives per example (default 64)")
    p.add_argument("--max-positives", type=int, default=16)
    p.add_argument("--history-share", type=float, default=0.2,
                   help="share of negatives from the household's own window (bought before, not now)")
    p.add_argument("--popularity-share", type=float, default=0.4,
                   help="share drawn popularity-proportionally; the rest uniform over the popular list")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--loss", choices=["softmax", "bce"], default="softmax")
    p.add_argument("--soft-weight", type=float, default=0.0,
                   help="weight of the deep model's pair scores (dot of the embeddings) as soft targets, 0..1")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=1, help="transformer layers over the history")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_recsys_distill)
