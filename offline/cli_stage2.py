"""`relstream offline distill | quality | export` (stage 2), registered by ``offline/cli.py``.

    relstream offline distill  --run-dir RUN [--soft-weight 0.3] [--epochs 6] [--max-train-rows N] [--device cpu|cuda]
    relstream offline quality  --run-dir RUN      (deep vs distilled vs LightGBM -> RUN/quality/)
    relstream offline export   --run-dir RUN --repo MODEL_REPO [--check]
    relstream offline export   --untrained --repo MODEL_REPO [--embeddings E.parquet] [--check]

``--check`` loads the export into the Triton of the running local stack (``relstream stack up``)
or of ``--triton-http/--triton-grpc`` and compares its answers with the offline scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

class Stage2Error(RuntimeError):
    pass


def _error(msg: str):
    from offline.cli import _error as offline_error

    offline_error(msg)  # relstream's CliError when available
    raise Stage2Error(msg)


def _plan(args):
    from schemas.plan import builtin_plan, load_plan

    return load_plan(args.plan) if Path(args.plan).suffix in (".yaml", ".yml") else builtin_plan(args.plan)


def _common(p) -> None:
    p.add_argument("--run-dir", required=True, type=Path,
                   help="pipeline directory (RUN/transactions.parquet, RUN/model.pt, RUN/embeddings.parquet)")
    p.add_argument("--transactions", help="default RUN/transactions.parquet")
    p.add_argument("--embeddings", type=Path, help="default RUN/embeddings.parquet")
    p.add_argument("--deep-model", type=Path, help="default RUN/model.pt (its split is the split used here)")
    p.add_argument("--plan", default="fraud", help="built-in plan name or a plan YAML (default fraud)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--epochs", type=int, default=6, help="distillation epochs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--d-model", type=int, default=64, help="shallow model width")
    p.add_argument("--layers", type=int, default=2, help="shallow model transformer layers")
    p.add_argument("--soft-weight", type=float, default=0.0,
                   help="weight of the deep model's soft predictions in the distillation loss (0..1)")
    p.add_argument("--max-train-rows", type=int,
                   help="train the shallow model on a seeded uniform subsample of this many training rows "
                        "(default: all); the test period is always scored in full")
    p.add_argument("--no-progress", action="store_true")


def _inputs(args):
    """(run_dir, dataset, transactions path, deep model path, embeddings path, split config)."""
    import torch

    from offline.cli import _load, _run_dir, _transactions_path

    run_dir = _run_dir(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        _error("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    tx_path = _transactions_path(args, run_dir)
    deep = args.deep_model or run_dir / "model.pt"
    emb = args.embeddings or run_dir / "embeddings.parquet"
    for flag, path, step in (("--deep-model", deep, "train-deep"), ("--embeddings", emb, "embed")):
        if not Path(path).exists():
            _error(f"{flag}: {path} does not exist (run `relstream offline {step} --run-dir {run_dir}` first)")
    from offline.train_deep import load_model

    _, deep_cfg = load_model(deep)
    return run_dir, _load(tx_path), tx_path, Path(deep), Path(emb), deep_cfg.split


def _distill_config(args):
    from offline.distill import DistillConfig
    from offline.shallow_model import ShallowConfig

    if args.max_train_rows is not None and args.max_train_rows < 1:
        _error(f"--max-train-rows: must be >= 1 (got {args.max_train_rows})")
    if not 0.0 <= args.soft_weight <= 1.0:
        _error(f"--soft-weight: must be in [0, 1] (got {args.soft_weight})")
    return DistillConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, soft_weight=args.soft_weight,
                         max_train_rows=args.max_train_rows, seed=args.seed, device=args.device,
                         model=ShallowConfig(d_model=args.d_model, n_layers=args.layers, d_ff=2 * args.d_model))


def cmd_quality(args) -> int:
    from offline.cli import update_manifest
    from offline.quality import QualityConfig, run_quality

    distill_cfg = _distill_config(args)  # bad flags fail before the dataset loads
    run_dir, ds, tx_path, deep, emb, split = _inputs(args)
    cfg = QualityConfig(split=split, distill=distill_cfg)
    out = run_dir / "quality"
    report = run_quality(_plan(args), ds, out, cfg, deep_model=deep, embeddings=emb, progress=not args.no_progress,
                         dataset_info={"transactions": str(tx_path)})
    update_manifest(run_dir, "quality", {
        "inputs": {"transactions": str(tx_path), "deep_model": str(deep), "embeddings": str(emb)},
        "config": {"split": split.to_dict(), "distill": cfg.distill.to_dict()}, "seed": args.seed,
        "outputs": [str(out / n) for n in ("quality.json", "roc_pr.png", "metrics.png", "shallow_model.pt")],
        "metrics": report["models"]})
    print(json.dumps({"out": str(out), "models": report["models"], "latency": report["latency"]}, indent=1))
    return 0


def cmd_distill(args) -> int:
    """Distillation only: point-in-time rows, training on the train period, test metrics."""
    import numpy as np

    from offline.cli import update_manifest
    from offline.deep_baseline import DeepRequestScorer, HeadConfig, rows_of
    from offline.distill import predict_rows, replay_rows, train_shallow
    from offline.embeddings import EmbeddingTable
    from offline.evaluate import fraud_metrics, time_split, tx_day, write_json
    from offline.quality import SHALLOW_FILE, save_shallow

    plan = _plan(args)
    cfg = _distill_config(args)  # bad flags fail before the dataset loads
    run_dir, ds, tx_path, deep, emb, split_cfg = _inputs(args)
    tx = ds.table("transactions")
    split = time_split(tx, split_cfg)
    table = EmbeddingTable.from_parquet(emb, plan)
    train_i = tx.index.get_indexer(split.train.index)
    test_i = tx.index.get_indexer(split.test.index)
    mask = np.zeros(len(tx), bool)
    mask[train_i] = True
    mask[test_i] = True
    rows = replay_rows(plan, tx, score_mask=mask, progress=not args.no_progress)
    pos = {int(r): i for i, r in enumerate(rows.row_index)}
    train_rows = rows.take(np.array([pos[int(i)] for i in train_i]))
    test_rows = rows.take(np.array([pos[int(i)] for i in test_i]))
    y_train = split.train["tx_fraud"].to_numpy(np.float32)
    soft = None
    if args.soft_weight > 0:  # the deep request-time model's predictions as soft targets
        scorer = DeepRequestScorer.from_files(deep, None, ds, device=args.device)
        x = scorer.encode_many(*rows_of(split.train), progress=not args.no_progress)
        scorer.fit_head(x, y_train, HeadConfig(seed=args.seed))
        soft = scorer.score_encoded(x)
    model, info_train = train_shallow(train_rows, y_train, table, cfg, soft_labels=soft, progress=not args.no_progress)
    scores = predict_rows(model, test_rows, table, device=args.device)
    metrics = fraud_metrics(split.test["tx_fraud"].to_numpy(), scores, split.test["customer_id"].to_numpy(),
                            tx_day(split.test, split.day0_ns))
    save_shallow(run_dir / SHALLOW_FILE, model, {"plan_fingerprint": plan.fingerprint()})
    write_json(run_dir / "distill.json", {"split": split.config.to_dict(), "metrics": metrics, "train": info_train,
                                          "config": cfg.to_dict(), "embeddings": str(emb)})
    update_manifest(run_dir, "distill", {
        "inputs": {"transactions": str(tx_path), "embeddings": str(emb), "deep_model": str(deep)},
        "config": {"split": split.config.to_dict(), "distill": cfg.to_dict()}, "seed": args.seed,
        "outputs": [str(run_dir / SHALLOW_FILE), str(run_dir / "distill.json")], "metrics": metrics})
    print(json.dumps({"out": str(run_dir / SHALLOW_FILE), "metrics": metrics}, indent=1))
    return 0


def _triton_urls(args) -> tuple[str, str]:
    if args.triton_http and args.triton_grpc:
        return args.triton_http, args.triton_grpc
    try:
        from relstream.config import load_config, stack_from_config

        st = stack_from_config(load_config(getattr(args, "config", None)))
        return st.triton_http_url, st.triton_grpc_url
    except Exception as exc:  # noqa: BLE001 - report what is missing, whatever it is
        raise Stage2Error(f"--check needs a Triton: start `relstream stack up` or pass --triton-http and "
                          f"--triton-grpc ({exc})") from None


def _real_requests(plan, args, n: int = 16):
    """Requests built from the run's own last transactions (None: synthetic ones)."""
    if args.untrained or args.run_dir is None or not (Path(args.run_dir) / "transactions.parquet").exists():
        return None
    import numpy as np

    from offline.datasets.loader import load_transactions
    from offline.distill import replay_rows

    tx = load_transactions(Path(args.run_dir) / "transactions.parquet").table(plan.fact_table)
    mask = np.zeros(len(tx), bool)
    mask[-n:] = True
    rows = replay_rows(plan, tx, score_mask=mask, progress=False)
    return [rows.request(i) for i in range(len(rows))]


def cmd_export(args) -> int:
    from offline.export import check_export, export_model, export_untrained

    plan = _plan(args)
    if plan.is_ranking:  # ranking plans export the distilled ranker (offline/cli_ranker.py)
        from offline.cli_ranker import cmd_export_ranker

        return cmd_export_ranker(args)
    if args.untrained:
        vdir = export_untrained(plan, args.repo, model_name=args.model_name, embeddings=args.embeddings,
                                seed=args.seed)
    else:
        if args.run_dir is None:
            raise Stage2Error("export: give --run-dir (a distill/quality run) or --untrained")
        from offline.quality import SHALLOW_FILE, load_shallow

        run = Path(args.run_dir)
        candidates = [run / SHALLOW_FILE, run / "quality" / SHALLOW_FILE]
        weights = next((c for c in candidates if c.exists()), None)
        if weights is None:
            _error(f"--run-dir: no {SHALLOW_FILE} in {run} or {run / 'quality'} (run `relstream offline distill` first)")
        model = load_shallow(weights, plan)
        embeddings = args.embeddings or (run / "embeddings.parquet")
        manifest = {"trained": True, "run_dir": str(run), "weights": str(weights)}
        for rep_path in (weights.parent / "quality.json", run / "distill.json"):
            if rep_path.exists():
                rep = json.loads(rep_path.read_text())
                manifest["metrics"] = rep.get("models") or rep.get("metrics")
                manifest["training_data_range"] = {"split": rep.get("split"), "transactions": rep.get("transactions"),
                                                   "train_rows": rep.get("train_rows") or rep.get("train", {}).get("rows")}
                break
        vdir = export_model(plan, args.repo, model, embeddings, model_name=args.model_name, manifest=manifest,
                            embeddings_last_days=args.embeddings_last_days)
    print(f"exported {vdir}")
    if args.check:
        http, grpc = _triton_urls(args)
        report = check_export(vdir, http, grpc, _real_requests(plan, args), latency_requests=50)
        print(json.dumps(report, indent=1))
    return 0


def register_stage2(offline_sub) -> None:
    p = offline_sub.add_parser("distill", help="train the shallow model on point-in-time distillation rows")
    _common(p)
    p.set_defaults(func=cmd_distill)

    p = offline_sub.add_parser("quality", help="deep vs distilled vs LightGBM on the deep model's split (JSON + plots)")
    _common(p)
    p.set_defaults(func=cmd_quality)

    p = offline_sub.add_parser("export", help="write a Triton model repository version (and --check it)")
    p.add_argument("--repo", type=Path, required=True, help="Triton model repository")
    p.add_argument("--model-name", default="relstream")
    p.add_argument("--plan", default="fraud")
    p.add_argument("--run-dir", type=Path, help="a distill/quality run directory (shallow_model.pt)")
    p.add_argument("--untrained", action="store_true", help="export a randomly initialised model (for tests)")
    p.add_argument("--embeddings", type=Path, help="embeddings.parquet (default: the run's; untrained: empty)")
    p.add_argument("--embeddings-last-days", type=float,
                   help="bundle only the snapshots of the last N days (serving needs max_embedding_offset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="load into Triton and compare with offline scores")
    p.add_argument("--triton-http", help="e.g. http://127.0.0.1:8000 (default: the local stack's)")
    p.add_argument("--triton-grpc", help="e.g. 127.0.0.1:8001 (default: the local stack's)")
    p.set_defaults(func=cmd_export)


def main(argv=None) -> int:
    """Standalone entry (``python -m offline.cli_stage2 ...``)."""
    parser = argparse.ArgumentParser(prog="relstream offline")
    parser.add_argument("--config", default=None)
    register_stage2(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # CliError / Stage2Error: a clear one-line error
        if type(exc).__name__ not in ("CliError", "Stage2Error", "OfflineCliError"):
            raise
        print(f"relstream offline: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
