"""`relstream offline distill | quality | export` for a project's serving plan, registered by ``offline/cli.py``.

    relstream offline distill --project SPEC [--run-dir RUN] [--epochs N] [--train-days 7]
                              [--max-train-rows N] [--device cpu|cuda]
        scoring plans: point-in-time rows of the train and test periods, test metrics
        ranking plans: [--examples 20000] [--train-weeks 12] [--negatives 64] ... sampled candidates
        -> RUN/shallow_model.pt + RUN/distill.json
    relstream offline quality --project SPEC [--run-dir RUN] [--train-days 7]
        scoring plans: the project's deep model at request time (RUN/deep_model.pt) vs distilled vs
                       LightGBM on engineered features, same test rows; [--val-days 7] [--grid ...]
                       [--seeds 0,1,2] [--summary-json PATH] -> RUN/quality/
        ranking plans: popularity, buy-again, deep (RUN/embeddings.parquet, RUN/deep_model.pt), distilled
                       (RUN/shallow_model.pt) on test sessions, recall ceilings of candidate sources
                       [--candidates 1000] [--max-examples 2000] -> RUN/quality/
    relstream offline quality-summary RUN1 RUN2 ... --out SUMMARY.json   (scoring; one run per data seed)
    relstream offline export --repo MODEL_REPO (--project SPEC | --untrained [--plan ...]) [--check]

The project's serving plan says which kind a run is (``ranking.candidate_column``: ranking); its
serving task gives the label, its split the test period. Everything a command reads besides its
flags is resolved by :func:`resolve_inputs`. ``--check`` loads the export into the Triton of the
running local stack (``relstream stack up``) or of ``--triton-http/--triton-grpc`` and compares
its answers with the offline scores. Torch-free at import (registration only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from offline.cli_inputs import (DAY_NS, QUALITY_DIR, Inputs, add_distill_args, distill_config, hop_tables, plan_of,
                                resolve_inputs, torch_setup)
from offline.cli_quality import register_quality
from offline.project import OfflineCliError, error, update_manifest

_error = error


# ----- distill ------------------------------------------------------------------------------------

def _scoring_rows(args, inp: Inputs, table) -> tuple[Any, dict, dict]:
    """Training rows (train period) + keyword arguments of the trainer + what to report."""
    import numpy as np

    from offline.evaluate import time_split

    if args.soft_weight > 0:
        _error("--soft-weight: a scoring plan's soft targets need the deep model's per-row predictions, which "
               "the project's deep model does not give yet (0 trains on the labels)")
    tx = inp.dataset.table(inp.plan.fact_table)
    split = time_split(tx, inp.split, inp.day0_ns, time=inp.plan.fact.time_column, label=inp.label,
                       entity=inp.entity)
    train_i = tx.index.get_indexer(split.train.index)
    test_i = tx.index.get_indexer(split.test.index)
    mask = np.zeros(len(tx), bool)
    mask[train_i] = True
    mask[test_i] = True
    rows = _point_in_time_rows(args, inp, tx, mask)
    pos = {int(r): i for i, r in enumerate(rows.row_index)}
    y_train = split.train[inp.label].to_numpy(np.float32)
    test_rows = rows.take(np.array([pos[int(i)] for i in test_i]))
    return (rows.take(np.array([pos[int(i)] for i in train_i])), {"labels": y_train},
            {"split": split.config.to_dict(), "test": (split, test_rows)})


def _point_in_time_rows(args, inp: Inputs, tx, mask):
    """The scored rows' tensors as of their own time, by the engine of ``--engine``: DuckDB (or
    Spark) runs the plan's windows as one SQL query; the replay is the reference they equal and
    the path for plans the query does not express (``auto`` says which and why)."""
    from offline.distillation.replay import replay_rows
    from offline.rows import RowsPlanError, build_rows, load_rows
    from offline.rows.query import check_plan

    engine = args.engine
    if engine == "auto":
        try:
            check_plan(inp.plan)
            engine = "duckdb"
        except RowsPlanError as exc:
            print(f"distill: rows by the replay ({exc})")
            engine = "replay"
    if engine == "replay":
        return replay_rows(inp.plan, tx, score_mask=mask, progress=not args.no_progress,
                           other_tables=hop_tables(inp))
    out = inp.run_dir / "rows"
    try:
        build_rows(inp.plan, tx, None, mask, engine=engine, out=out, spark=args.spark_master,
                   progress=not args.no_progress)
    except RowsPlanError as exc:
        _error(f"--engine {engine}: {exc}")
    return load_rows(out, inp.plan).rows


def _ranking_rows(args, inp: Inputs, table) -> tuple[Any, dict, dict]:
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from offline.distillation.candidates import DailyPopularity, SamplingConfig, TrainingCandidates
    from offline.distillation.replay import replay_ranking_rows
    from offline.tasks.ranking import InteractionIndex, ranking_examples

    plan, cols = inp.plan, inp.ranking_columns()
    if args.examples < 1 or args.negatives < 1:
        _error("--examples and --negatives: must be >= 1")
    if not (0 <= args.history_share <= 1 and 0 <= args.popularity_share <= 1
            and args.history_share + args.popularity_share <= 1):
        _error("--history-share and --popularity-share: each in [0, 1], together at most 1")
    first_snapshot = pc.min(pq.read_table(inp.embeddings, columns=["snapshot_time"]).column("snapshot_time")).as_py()
    cut = int(inp.split["train_cut_ns"])
    # Examples whose anchors can have an admissible embedding snapshot, before the training cut.
    start = max(cut - args.train_weeks * 7 * DAY_NS, int(first_snapshot) + plan.min_embedding_offset.ns)
    if start >= cut:
        _error(f"--embeddings: the first snapshot ({np.datetime64(first_snapshot, 'ns')}) is not before the training "
               f"cut; re-run `offline embed` with snapshots before the test period")
    tx = inp.dataset.table(cols.facts)
    examples = ranking_examples(tx, cols, start, cut, max_examples=args.examples, seed=args.seed)
    examples = examples[examples["anchor_time"] < cut].reset_index(drop=True)  # targets end before the cut too
    if examples.empty:
        _error("no ranking example before the training cut (too few rows?)")
    print(f"distill: {len(examples):,} examples from {np.datetime64(start, 'ns')} to "
          f"{np.datetime64(cut, 'ns')} (seed {args.seed})")
    sampling = SamplingConfig(n_negatives=args.negatives, max_positives=args.max_positives,
                              history_share=args.history_share, popularity_share=args.popularity_share)
    choose = TrainingCandidates(DailyPopularity(InteractionIndex(tx, cols), sampling.popular_n), sampling,
                                plan.hops[0].key.key, plan.candidate_column, seed=args.seed)
    t0 = time.perf_counter()
    rows = replay_ranking_rows(plan, tx, examples, choose, sampling.n_negatives + sampling.max_positives,
                               progress=not args.no_progress)
    return rows, {}, {"examples": len(examples), "example_range_ns": [int(start), cut],
                      "sampling": sampling.__dict__, "seconds_rows": time.perf_counter() - t0}


def cmd_distill(args) -> int:
    """Point-in-time rows, the shallow model of the plan's kind, RUN/shallow_model.pt + RUN/distill.json."""
    from offline.distillation.trainer import MODEL_FILE, predict_rows, save_model, train_shallow
    from offline.embeddings import EmbeddingTable
    from offline.evaluate import row_day, scoring_metrics, write_json

    t_start = time.perf_counter()
    cfg = distill_config(args, plan_of(args))  # bad flags fail before the data loads
    inp = resolve_inputs(args)
    plan = inp.plan
    torch_setup(args, plan)
    table = EmbeddingTable.from_parquet(inp.embeddings, plan)
    rows, train_kwargs, report = (_ranking_rows if plan.is_ranking else _scoring_rows)(args, inp, table)
    model, info = train_shallow(rows, table, cfg, progress=not args.no_progress, **train_kwargs)
    metrics = {}
    if "test" in report:  # scoring: the test period's metrics
        split, test_rows = report.pop("test")
        scores = predict_rows(model, test_rows, table, device=args.device)
        metrics = scoring_metrics(split.test[inp.label].to_numpy(), scores, split.test[inp.entity].to_numpy(),
                                row_day(split.test, split.day0_ns, plan.fact.time_column))
    out = save_model(inp.run_dir / MODEL_FILE, model.cpu(), plan)
    report.update({"plan": plan.name, "metrics": metrics, "train": info, "config": cfg.to_dict(),
                   "embeddings": str(inp.embeddings), "seconds_total": time.perf_counter() - t_start})
    write_json(inp.run_dir / "distill.json", report)
    update_manifest(inp.run_dir, "distill", {
        "inputs": inp.sources, "config": cfg.to_dict(), "seed": args.seed,
        "outputs": [str(out), str(inp.run_dir / "distill.json")], "metrics": metrics or info})
    print(json.dumps({"out": str(out), "parameters": info["parameters"], "rows": info["rows"], "metrics": metrics},
                     indent=1))
    return 0


# ----- export -------------------------------------------------------------------------------------

def _triton_urls(args) -> tuple[str, str]:
    """The flags, else the local stack's Triton (the app passes ``args.local_triton_urls``)."""
    if args.triton_http and args.triton_grpc:
        return args.triton_http, args.triton_grpc
    local = getattr(args, "local_triton_urls", None)
    try:
        if local is None:
            raise RuntimeError("no local stack configured")
        return local()
    except Exception as exc:  # noqa: BLE001 - report what is missing, whatever it is
        _error(f"--check needs a Triton: start `relstream stack up` or pass --triton-http and "
               f"--triton-grpc ({exc})")


def _real_requests(inp: Inputs, n: int = 16):
    """Requests built from the run's own last rows: scoring, the last ``n`` events; ranking, the
    last week's baskets with catalog candidates of several sizes."""
    import numpy as np

    from offline.distillation.replay import replay_ranking_rows, replay_rows

    plan = inp.plan
    tx = inp.dataset.table(plan.fact_table)
    if not plan.is_ranking:
        mask = np.zeros(len(tx), bool)
        mask[-n:] = True
        rows = replay_rows(plan, tx, score_mask=mask, progress=False, other_tables=hop_tables(inp))
        return [rows.request(i) for i in range(len(rows))]
    from offline.tasks.ranking import InteractionIndex, ranking_examples

    cols = inp.ranking_columns()
    cut = int(tx[plan.fact.time_column].max()) + 1
    ex = ranking_examples(tx, cols, cut - 7 * DAY_NS, cut, max_examples=6, seed=0)
    index = InteractionIndex(tx, cols)
    n_cands = (100, 1000, 10, 1, 250, 50)

    def choose(i, e, _w):
        p, _ = index.popular(int(e["anchor_time"]), n_cands[i % len(n_cands)])
        return p, np.zeros(len(p), np.float32)
    rows = replay_ranking_rows(plan, tx, ex, choose, plan.max_candidates, progress=False)
    return [rows.request(i) for i in range(len(rows))]


def _trained_export(args, inp: Inputs):
    from offline.distillation.trainer import MODEL_FILE, load_model
    from offline.export import export_model

    plan, run = inp.plan, inp.run_dir
    weights = next((c for c in (run / MODEL_FILE, run / QUALITY_DIR / MODEL_FILE) if c.exists()), None)
    if weights is None:
        _error(f"--run-dir: no {MODEL_FILE} in {run} or {run / QUALITY_DIR} (run `relstream offline distill` first)")
    model = load_model(weights, plan)
    manifest = {"trained": True, "run_dir": str(run), "weights": str(weights)}
    for rep_path in (weights.parent / "quality.json", run / "distill.json"):
        if rep_path.exists():
            rep = json.loads(rep_path.read_text())
            # quality: the first seed's metrics, the seed whose model RUN/quality/ keeps
            manifest["metrics"] = ((rep.get("per_seed") or [{}])[0].get("models") or rep.get("models")
                                   or rep.get("metrics") or {"train": rep.get("train", {}).get("history")})
            manifest["training_data_range"] = {
                "split": rep.get("split"), "transactions": rep.get("transactions"),
                "train_rows": rep.get("train_rows") or rep.get("train", {}).get("rows"),
                "example_range_ns": rep.get("example_range_ns"), "examples": rep.get("examples")}
            break
    catalog, days = None, args.embeddings_last_days
    if plan.is_ranking:
        from offline.tasks.ranking import InteractionIndex

        tx = inp.dataset.table(plan.fact_table)
        cut = int(tx[plan.fact.time_column].max()) + 1  # the export cut: after the last row
        catalog = InteractionIndex(tx, inp.ranking_columns()).popular(cut, plan.max_candidates)
        manifest.update(catalog_cut_ns=cut,
                        catalog=f"top {len(catalog[0])} candidates by interactions in the 28 days before the cut")
        if days is None:  # serving needs snapshots up to max_embedding_offset old, plus one spare week
            days = plan.max_embedding_offset.ns / DAY_NS + 7
    return export_model(plan, args.repo, model, inp.embeddings, catalog=catalog, model_name=args.model_name,
                        manifest=manifest, embeddings_last_days=days)


def cmd_export(args) -> int:
    from offline.export import check_export, export_untrained

    plan = plan_of(args)
    inp = None
    if args.untrained:
        vdir = export_untrained(plan, args.repo, model_name=args.model_name, embeddings=args.embeddings,
                                seed=args.seed)
    else:
        if not args.project:
            _error("export: give --project SPEC (a project whose model was distilled) or --untrained")
        # the catalog of a ranking export and the requests of --check come from the data
        inp = resolve_inputs(args, need_deep=False, load_data=plan.is_ranking or args.check)
        vdir = _trained_export(args, inp)
    print(f"exported {vdir}")
    if args.check:
        import torch

        torch.set_num_threads(1)  # in-process latency with the thread count the Triton model uses
        http, grpc = _triton_urls(args)
        requests = _real_requests(inp) if inp is not None else None
        print(json.dumps(check_export(vdir, http, grpc, requests, latency_requests=200 if plan.is_ranking else 50),
                         indent=1))
    return 0


def register_stage2(offline_sub) -> None:
    p = offline_sub.add_parser("distill", help="train the shallow model (scoring or ranking head, from the plan) "
                                               "on point-in-time rows -> RUN/shallow_model.pt")
    add_distill_args(p)
    p.set_defaults(func=cmd_distill)
    register_quality(offline_sub)

    p = offline_sub.add_parser("export", help="write a Triton model repository version (and --check it)")
    p.add_argument("--repo", type=Path, required=True, help="Triton model repository")
    p.add_argument("--model-name", help="default: relstream (scoring plans), relstream_ranker (ranking plans)")
    p.add_argument("--project", metavar="SPEC", help="the project whose distilled model to export")
    p.add_argument("--run-dir", help="default: runs/<project name> next to the spec (its shallow_model.pt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--untrained", action="store_true",
                   help="export a randomly initialised model of --plan or the project's plan (for tests)")
    p.add_argument("--plan", default="fraud", help="--untrained without --project: built-in plan name or a plan YAML")
    p.add_argument("--embeddings", type=Path, help="embeddings.parquet (default: the run's; untrained: empty)")
    p.add_argument("--embeddings-last-days", type=float,
                   help="bundle only the snapshots of the last N days (serving needs max_embedding_offset; "
                        "ranking default: that + 7)")
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
    except OfflineCliError as exc:  # a clear one-line error
        print(f"relstream offline: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
