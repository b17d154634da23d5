"""``relstream offline ...``: one pipeline for any project spec (docs/byod.md).

    relstream offline dataset fraud|complete-journey|bank --out DIR   (files + DIR/project.yaml)
    relstream offline dataset draft --dir DIR                         (a first spec for your own files)
    relstream offline check      --project SPEC                       (validate the spec against the files)
    relstream offline train-deep --project SPEC [--run-dir RUN] [--epochs E] [--device cpu|cuda]
    relstream offline embed      --project SPEC [--run-dir RUN] [--every-days 1] [--device cpu|cuda]
    relstream offline distill    --project SPEC [--run-dir RUN]       (the shallow model of the serving plan)
    relstream offline quality    --project SPEC [--run-dir RUN]       (baselines vs deep vs distilled)
    relstream offline export     --project SPEC --repo REPO [--check] (a Triton model repository version)

Outputs of a pipeline go to one run directory (default ``runs/<project>`` next to the spec); each
command merges its entry into ``RUN/manifest.json`` (:mod:`offline.project`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from offline.cli_stage2 import register_stage2
from offline.project import (OfflineCliError, add_project_args, check_device, error, git_commit,  # noqa: F401
                             open_project, torch_threads, update_manifest)

# The app prints these as one message, without a traceback (relstream/cli.py).
EXPECTED_ERRORS = (OfflineCliError,)
_error = error


# ----- dataset -------------------------------------------------------------------------------

def cmd_dataset(args) -> int:
    import yaml

    t0 = time.perf_counter()
    if args.dataset == "draft":
        from offline.data.adapters import draft_spec

        if not args.dir or not Path(args.dir).is_dir():
            _error(f"--dir: {args.dir} is not a directory of .parquet/.csv files")
        print(yaml.safe_dump(draft_spec(args.dir), sort_keys=False), end="")
        return 0
    if not args.out:
        _error("--out: required (the directory the files and project.yaml are written to)")
    out = Path(args.out)
    if args.dataset == "fraud":
        from offline.data.adapters import fraud_project
        from offline.datasets.fraud import TINY, FraudSimConfig

        base = TINY if args.tiny else FraudSimConfig()
        cfg = FraudSimConfig(**{**base.to_dict(), **{k: v for k, v in {
            "n_customers": args.customers, "n_terminals": args.terminals, "n_days": args.days,
            "seed": args.seed}.items() if v is not None}})
        spec = fraud_project(out, cfg, test_start=args.test_start, plan_name=args.plan or "fraud")
        config = cfg.to_dict()
    elif args.dataset == "complete-journey":
        from offline.data.adapters import complete_journey_project

        spec = complete_journey_project(out, max_rows=args.max_rows, session_seed=args.seed or 0)
        config = {"max_rows": args.max_rows, "session_seed": args.seed or 0}
    else:
        from offline.datasets.synthetic_bank import TINY_BANK, BankConfig, write_bank_project

        base = TINY_BANK if args.tiny else BankConfig()
        cfg = BankConfig(**{**base.to_dict(), **{k: v for k, v in {
            "n_customers": args.customers, "n_days": args.days, "seed": args.seed}.items() if v is not None}})
        spec = write_bank_project(out, cfg)
        config = cfg.to_dict()
    update_manifest(out, f"dataset {args.dataset}", {"config": config, "outputs": [str(spec)],
                                                     "metrics": {"seconds": time.perf_counter() - t0}})
    print(f"dataset {args.dataset}: {time.perf_counter() - t0:.1f}s -> {spec}")
    return 0


# ----- check ---------------------------------------------------------------------------------

def cmd_check(args) -> int:
    run = open_project(args)
    ds = run.load_tables()
    from offline.data.sources import split_instants

    inst = split_instants(run.project, ds)
    for name in ds.table_names:
        print(f"  {name}: {len(ds.table(name)):,} rows, features {run.project.feature_columns(name)}")
    print(f"check: {run.spec_path} is valid; test period starts "
          f"{time.strftime('%Y-%m-%d', time.gmtime(inst['test_start_ns'] // 10**9))}; base tasks "
          f"{[t.name for t in run.project.tasks]}; embeddings for {list(run.project.embedding_entity_types)}")
    return 0


# ----- train-deep ----------------------------------------------------------------------------

DEEP_MODEL_FILE = "deep_model.pt"


def cmd_train_deep(args) -> int:
    from offline.evaluate import write_json
    from offline.configs import DeepTrainConfig, RelGNNConfig
    from offline.models.train import train_deep

    check_device(args.device)
    run = open_project(args)
    ds = run.load_tables()
    cfg = DeepTrainConfig(fanouts=tuple(int(x) for x in args.fanouts.split(",")), batch_size=args.batch_size,
                          epochs=args.epochs, lr=args.lr, neg_ratio=args.neg_ratio,
                          max_samples_per_epoch=args.max_samples_per_epoch, candidates=args.candidates,
                          inbatch_weight=args.inbatch_weight,
                          eval_entities=args.eval_entities, seed=args.seed, device=args.device,
                          model=RelGNNConfig(hidden=args.hidden, embedding_dim=args.embedding_dim))
    with torch_threads(args.threads):
        try:
            model, metrics = train_deep(run.project, ds, cfg, progress=not args.no_progress)
        except ValueError as exc:
            _error(str(exc))
    model_path = run.run_dir / DEEP_MODEL_FILE
    model.save(model_path, extra={"project": run.project.name})
    write_json(run.run_dir / "deep_metrics.json", metrics)
    # The split every later step (distillation, quality) evaluates on: the deep model saw rows
    # before test_start_ns (its "train cut") and labels older than that minus their delay.
    write_json(run.run_dir / "split.json", {**metrics["split"], "train_cut_ns": metrics["split"]["test_start_ns"],
                                            "project": str(run.spec_path)})
    update_manifest(run.run_dir, "train-deep", {
        "inputs": {"project": str(run.spec_path)}, "config": cfg.to_dict(), "seed": cfg.seed,
        "outputs": [str(model_path), str(run.run_dir / "deep_metrics.json"), str(run.run_dir / "split.json")], "metrics": metrics})
    print(f"train-deep: {json.dumps(metrics['validation'])}")
    print(f"train-deep: done in {metrics['seconds_total']:.1f}s -> {model_path}")
    return 0


# ----- embed ---------------------------------------------------------------------------------

def cmd_embed(args) -> int:
    from offline.models.embed import snapshot_times, write_embeddings
    from offline.models.train import DeepModel

    check_device(args.device)
    run = open_project(args)
    model_path = Path(args.model) if args.model else run.run_dir / DEEP_MODEL_FILE
    if not model_path.exists():
        _error(f"--model: {model_path} does not exist (run `relstream offline train-deep --project "
               f"{run.spec_path}` first)")
    ds = run.load_tables()
    model = DeepModel.load(model_path, args.device)
    snaps = snapshot_times(run.project, ds, args.every_days, args.first_day, args.last_day)
    out = Path(args.out) if args.out else run.run_dir / "embeddings.parquet"
    with torch_threads(args.threads):
        meta = write_embeddings(model, run.project, ds, out, snaps, batch_size=args.batch_size,
                                progress=not args.no_progress, extra_meta={"model_path": str(model_path)})
    update_manifest(run.run_dir, "embed", {
        "inputs": {"project": str(run.spec_path), "model": str(model_path)},
        "config": {"every_days": args.every_days, "first_day": args.first_day, "last_day": args.last_day,
                   "batch_size": args.batch_size, "device": args.device},
        "outputs": [str(out), str(out) + ".json"],
        "metrics": {k: meta[k] for k in ("rows", "dim", "entity_types", "seconds", "cpu_seconds")}
        | {"snapshots": len(meta["snapshot_times"])}})
    print(f"embed: {meta['rows']} rows of {meta['entity_types']} ({len(meta['snapshot_times'])} snapshots, "
          f"dim {meta['dim']}) in {meta['seconds']:.1f}s -> {out}")
    return 0


# ----- parsers -------------------------------------------------------------------------------

def register(subparsers) -> None:
    from offline.configs import DeepTrainConfig, RelGNNConfig  # torch-free: every command registers these

    d, m = DeepTrainConfig(), RelGNNConfig()

    off = subparsers.add_parser("offline", help="offline stage: data, deep model, embeddings, evaluation",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = off.add_subparsers(dest="offline_command", required=True, metavar="COMMAND")

    p = sub.add_parser("dataset", help="write a dataset's files + project spec (fraud, complete-journey, bank), "
                                       "or draft a spec for a directory of your own files")
    p.add_argument("dataset", choices=["fraud", "complete-journey", "bank", "draft"])
    p.add_argument("--out", help="directory for the files, plan.yaml and project.yaml")
    p.add_argument("--dir", help="draft: the directory of .parquet/.csv files (one table each)")
    p.add_argument("--tiny", action="store_true", help="fraud/bank: a tiny instance (tests, demos)")
    p.add_argument("--customers", type=int)
    p.add_argument("--terminals", type=int, help="fraud")
    p.add_argument("--days", type=int)
    p.add_argument("--test-start", help="fraud: first test day (ISO date; default: the protocol's, fitted)")
    p.add_argument("--plan", choices=["fraud", "fraud_labels"],
                   help="fraud: the built-in serving plan (default fraud; fraud_labels adds the known labels "
                        "of each customer and terminal as inputs)")
    p.add_argument("--max-rows", type=int, help="complete-journey: the earliest N purchase lines only")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("check", help="validate a project spec against its files")
    add_project_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("train-deep", help="train the deep temporal GNN of a project on its base task(s)")
    add_project_args(p)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--fanouts", default=",".join(map(str, d.fanouts)),
                   help="most-recent-K referencing rows per hop; one hop per GNN layer (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--neg-ratio", type=float, default=d.neg_ratio, help="negatives per positive per epoch")
    p.add_argument("--max-samples-per-epoch", type=int, default=d.max_samples_per_epoch, help="per task")
    p.add_argument("--candidates", type=int, default=d.candidates,
                   help="next-item validation: rank the N most popular items of the last 28 days")
    p.add_argument("--inbatch-weight", type=float, default=d.inbatch_weight,
                   help="next-item tasks: weight of the logQ-corrected in-batch softmax (0: BCE only)")
    p.add_argument("--eval-entities", type=int, default=d.eval_entities,
                   help="next-item validation: entities sampled per evaluation window")
    p.add_argument("--hidden", type=int, default=m.hidden)
    p.add_argument("--embedding-dim", type=int, default=m.embedding_dim)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine more threads spin-wait)")
    p.set_defaults(func=cmd_train_deep)

    p = sub.add_parser("embed", help="write embeddings.parquet: the plan's embedding entities at daily snapshots")
    add_project_args(p)
    p.add_argument("--model", help=f"default RUN/{DEEP_MODEL_FILE}")
    p.add_argument("--out", help="default RUN/embeddings.parquet")
    p.add_argument("--every-days", type=float, default=1, help="snapshot spacing in days (default 1)")
    p.add_argument("--first-day", type=int, default=1, help="first snapshot: midnight starting day N (default 1)")
    p.add_argument("--last-day", type=int, help="last snapshot day (default: the midnight after the last row)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=cmd_embed)

    register_stage2(sub)  # distill, quality, export


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
