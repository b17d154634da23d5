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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DAY_NS = 86_400 * 10**9
QUALITY_DIR = "quality"


from offline.project import OfflineCliError, add_project_args, error, open_project, update_manifest


_error = error


# ----- inputs -------------------------------------------------------------------------------------

@dataclass
class Inputs:
    """What a distill/quality/export run reads: the plan, the data, the deep model's outputs."""

    plan: Any  # schemas.plan.ServingPlan
    run_dir: Path
    dataset: Any = None  # offline.datasets.base.RelationalDataset
    embeddings: Path | None = None
    deep_model: Path | None = None
    split: Any = None  # scoring: offline.evaluate.SplitConfig; ranking: {"train_cut_ns", "data_end_ns"}
    sources: dict = field(default_factory=dict)  # paths, for manifests
    label: str | None = None  # scoring: the serving task's label column of the fact table
    entity: str | None = None  # scoring: the fact column per-entity metrics group by (first embedding key)
    day0_ns: int = 0  # midnight before the data's first row: day 0 of the split
    project: Any = None  # offline.data.spec.Project

    def ranking_columns(self):
        """Ranking plans: the fact table's time, entity, item and session columns (from the spec)."""
        from offline.tasks.ranking import RankingColumns, RankingTaskError
        from schemas.plan import FieldError

        try:
            return RankingColumns.of(self.project)
        except (RankingTaskError, FieldError) as exc:
            _error(f"--project: {exc}")


def resolve_inputs(args, *, need_deep: bool = True, load_data: bool = True) -> Inputs:
    """The one place that turns ``--project`` + run directory into a plan, data and embeddings.

    ``need_deep``: the deep model's embeddings must exist (distill, quality); ``load_data``: load the
    tables (an export of a scoring plan without ``--check`` needs none)."""
    from offline.data.spec import FactLabelTask

    run = open_project(args)
    project, plan = run.project, run.project.plan
    if plan is None or project.spec.serving is None:
        _error(f"--project {run.spec_path}: the spec has no serving section (serving.plan and serving.task)")
    task = project.spec.serving.task
    if plan.is_ranking == isinstance(task, FactLabelTask):
        _error(f"--project {run.spec_path}: serving.task: a {'ranking' if plan.is_ranking else 'scoring'} plan "
               f"needs a {'next_item' if plan.is_ranking else 'fact_label'} task (got {task.kind})")
    emb = Path(getattr(args, "embeddings", None) or run.run_dir / "embeddings.parquet")
    if need_deep and not emb.exists():
        _error(f"--embeddings: {emb} does not exist (run `relstream offline embed --project {run.spec_path}` first)")
    deep = run.run_dir / "deep_model.pt"
    sources = {"project": str(run.spec_path), "embeddings": str(emb), "deep_model": str(deep)}
    if not load_data:
        return Inputs(plan, run.run_dir, None, emb, deep, None, sources, project=project)
    from offline.data.sources import split_instants

    ds = run.load_tables()
    instants = split_instants(project, ds)
    if plan.is_ranking:
        split = {"train_cut_ns": instants["test_start_ns"], "data_end_ns": instants["data_end_ns"]}
        return Inputs(plan, run.run_dir, ds, emb, deep, split, sources, project=project)
    return Inputs(plan, run.run_dir, ds, emb, deep, _scoring_split(args, project, task, instants), sources,
                  label=task.label, entity=plan.embedding_keys[0].column, day0_ns=instants["day0_ns"],
                  project=project)


def _scoring_split(args, project, task, instants: dict):
    """The distillation's periods in whole days from day 0: test = the spec's test period; train =
    ``--train-days`` days ending one label delay before the test start, so every training label
    had arrived when the test period begins."""
    from offline.datasets.base import NS_PER_DAY
    from offline.evaluate import SplitConfig

    if getattr(args, "train_days", None) is None:  # export: no training period
        return None
    delay_days = -(-project.spec.tables[task.table].label_delay_ns(task.label) // NS_PER_DAY)
    test_start_day = (instants["test_start_ns"] - instants["day0_ns"]) // NS_PER_DAY
    train_start_day = test_start_day - delay_days - args.train_days
    if args.train_days < 1 or train_start_day < 0:
        _error(f"--train-days: {args.train_days} training days + a {delay_days}-day label delay do not fit before "
               f"the test start (day {test_start_day} of the data)")
    return SplitConfig(train_start_day=int(train_start_day), train_days=args.train_days, delay_days=int(delay_days),
                       test_days=project.spec.split.test_days)


def _torch_setup(args, plan) -> None:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        _error("--device cuda: no CUDA device available")
    threads = args.threads or (1 if plan.is_ranking else None)  # ranking: 1 (shared CPU, see docs/recsys.md)
    if threads:
        torch.set_num_threads(threads)


# Per plan kind: defaults of the flags whose best value differs (scoring, ranking).
KIND_DEFAULTS = {"epochs": (6, 3), "batch_size": (256, 64), "layers": (2, 1)}


def _kind_default(args, name: str, plan):
    value = getattr(args, name)
    return KIND_DEFAULTS[name][int(plan.is_ranking)] if value is None else value


def _distill_config(args, plan):
    from offline.distillation.shallow_model import RankingConfig, ScoringConfig
    from offline.distillation.trainer import DistillConfig

    if args.max_train_rows is not None and args.max_train_rows < 1:
        _error(f"--max-train-rows: must be >= 1 (got {args.max_train_rows})")
    if not 0.0 <= args.soft_weight <= 1.0 or (plan.is_ranking and args.soft_weight == 1.0):
        _error(f"--soft-weight: must be in [0, 1{')' if plan.is_ranking else ']'} (got {args.soft_weight})")
    epochs = _kind_default(args, "epochs", plan)
    if epochs < 1:
        _error(f"--epochs: must be >= 1 (got {epochs})")
    layers = _kind_default(args, "layers", plan)
    head = (RankingConfig(d_model=args.d_model, n_layers=layers, d_ff=2 * args.d_model) if plan.is_ranking
            else ScoringConfig(d_model=args.d_model, n_layers=layers, d_ff=2 * args.d_model))
    return DistillConfig(epochs=epochs, batch_size=_kind_default(args, "batch_size", plan), lr=args.lr,
                         loss=args.loss, soft_weight=args.soft_weight, max_train_rows=args.max_train_rows,
                         seed=args.seed, device=args.device, model=head)


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
                           other_tables=_hop_tables(inp))
    out = inp.run_dir / "rows"
    try:
        build_rows(inp.plan, tx, None, mask, engine=engine, out=out, spark=args.spark_master,
                   progress=not args.no_progress)
    except RowsPlanError as exc:
        _error(f"--engine {engine}: {exc}")
    return load_rows(out, inp.plan).rows


def _hop_tables(inp: Inputs) -> dict:
    """The tables the plan's hops read besides the fact table (their rows feed the windows)."""
    return {h.key.target.table: inp.dataset.table(h.key.target.table) for h in inp.plan.hops
            if h.key.target.table != inp.plan.fact_table}


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
    cfg = _distill_config(args, _plan_of(args))  # bad flags fail before the data loads
    inp = resolve_inputs(args)
    plan = inp.plan
    _torch_setup(args, plan)
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


# ----- quality ------------------------------------------------------------------------------------

def _seeds(args) -> tuple[int, ...]:
    if args.seeds is None:
        return (args.seed,)
    try:
        seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    except ValueError:
        _error(f"--seeds: comma-separated integers (got {args.seeds!r})")
    if not seeds or len(set(seeds)) != len(seeds):
        _error(f"--seeds: one or more distinct integers (got {args.seeds!r})")
    return seeds


def _data_seed(spec_path: Path):
    """The generator's seed of a generated dataset (its manifest next to the spec), else None."""
    manifest = Path(spec_path).parent / "manifest.json"
    if not manifest.exists():
        return None
    steps = json.loads(manifest.read_text()).get("steps", {})
    seeds = [v.get("config", {}).get("seed") for k, v in steps.items() if k.startswith("dataset")]
    return next((x for x in seeds if x is not None), None)


def _scoring_quality(args) -> int:
    """Deep (the project's trained model at request time) vs distilled vs LightGBM on the split
    of ``--train-days`` and the spec's test period, the distilled model's epoch and configuration
    chosen on the validation split of ``--val-days``; reads RUN/deep_model.pt and the embeddings,
    trains no deep model."""
    from offline.evaluate import write_json
    from offline.quality.scoring import SUMMARY_FILE, QualityConfig, run_quality
    from offline.quality.selection import configured, parse_grid, validation_split

    cfg_distill = _distill_config(args, _plan_of(args))  # bad flags fail before the dataset loads
    seeds = _seeds(args)
    if args.val_days < 0 or args.bootstrap < 0:
        _error(f"--val-days / --bootstrap: must be >= 0 (got {args.val_days} / {args.bootstrap})")
    try:
        grid = parse_grid(args.grid)
        for overrides in grid:
            configured(cfg_distill, overrides)
    except ValueError as exc:
        _error(f"--{exc}")
    if args.grid and not args.val_days:
        _error("--grid: the choice needs a validation period (--val-days >= 1)")
    inp = resolve_inputs(args, need_deep=False, load_data=False)
    if not inp.deep_model.exists():
        _error(f"--run-dir: {inp.deep_model} does not exist (run `relstream offline train-deep --project "
               f"{inp.sources['project']}` first)")
    inp = resolve_inputs(args)
    _torch_setup(args, inp.plan)
    if args.val_days:
        try:
            validation_split(inp.split, args.val_days)
        except ValueError as exc:
            _error(f"{exc} (--val-days 0: no selection)")
    cfg = QualityConfig(split=inp.split, distill=cfg_distill, val_days=args.val_days,
                        grid=tuple(grid) if args.grid else (), seeds=seeds, bootstrap=args.bootstrap)
    out = inp.run_dir / QUALITY_DIR
    try:
        report = run_quality(inp.project, inp.dataset, out, cfg, label=inp.label, entity=inp.entity,
                             day0_ns=inp.day0_ns, deep_model=inp.deep_model, embeddings=inp.embeddings,
                             other_tables=_hop_tables(inp), progress=not args.no_progress,
                             dataset_info={"project": inp.sources["project"],
                                           "seed": _data_seed(Path(inp.sources["project"]))})
    except ValueError as exc:
        _error(str(exc))
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.summary_json, json.loads((out / SUMMARY_FILE).read_text()))
    update_manifest(inp.run_dir, "quality", {
        "inputs": inp.sources, "config": {"split": inp.split.to_dict(), "distill": cfg.distill.to_dict(),
                                          "val_days": cfg.val_days, "grid": list(cfg.grid), "seeds": list(seeds)},
        "seed": args.seed, "outputs": [str(out / n) for n in ("quality.json", SUMMARY_FILE, "roc_pr.png",
                                                               "metrics.png", "seeds.png", "shallow_model.pt")],
        "metrics": report["models"]})
    models = {name: {k: v for k, v in m.items() if k != "features"} for name, m in report["models"].items()}
    print(json.dumps({"out": str(out), "models": models, "latency": report["latency"]}, indent=1))
    return 0


def cmd_quality_summary(args) -> int:
    """Several runs' quality reports (one per data seed) -> one summary JSON and a per-seed plot."""
    from offline.evaluate import write_json
    from offline.quality.scoring import plot_seeds, seed_points, summarize

    reports, runs = [], []
    for run in args.runs:
        path = run / QUALITY_DIR / "quality.json" if run.is_dir() else run
        if not path.exists():
            _error(f"RUN: {path} does not exist (run `relstream offline quality` there first)")
        report = json.loads(path.read_text())
        if "per_seed" not in report:
            _error(f"RUN: {path} is not a scoring quality report with per-seed results")
        reports.append(report)
        runs.append(str(run))
    try:
        summary = summarize(reports, runs)
    except ValueError as exc:
        _error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, summary)
    plot = args.plot or args.out.with_suffix(".png")
    split = summary["split"]
    plot_seeds(seed_points(reports, [Path(r).name for r in runs]), plot,
               title=f"{split['fact_table']}.{split['label']}: per seed, 95 % entity-bootstrap CIs")
    print(json.dumps({"out": str(args.out), "plot": str(plot), "models": summary["models"]}, indent=1))
    return 0


def cmd_quality(args) -> int:
    from offline.distillation.trainer import MODEL_FILE

    if not _plan_of(args).is_ranking:
        return _scoring_quality(args)
    from offline.quality.ranking import run_ranking_quality

    try:  # bad flags fail before the data loads
        sizes = tuple(int(n) for n in args.ceiling_sizes.split(",")) if args.ceiling_sizes else None
    except ValueError:
        _error(f"--ceiling-sizes: expected comma-separated integers, got {args.ceiling_sizes!r}")
    if sizes is not None and not all(1 <= n <= args.candidates for n in sizes):
        _error(f"--ceiling-sizes: each N in [1, --candidates {args.candidates}], got {list(sizes)}")
    inp = resolve_inputs(args, need_deep=False)
    _torch_setup(args, inp.plan)
    model = args.model or inp.run_dir / MODEL_FILE
    if args.model and not model.exists():
        _error(f"--model: {model} not found")
    inp.ranking_columns()  # a spec without a next-item task or session column fails here, naming the field
    deep = Path(args.deep_model) if args.deep_model else inp.deep_model
    if args.deep_model and not deep.exists():
        _error(f"--deep-model: {deep} not found")
    try:
        report, paths = run_ranking_quality(
            inp.project, inp.dataset, inp.split, inp.run_dir / QUALITY_DIR, embeddings=inp.embeddings,
            model_path=model if model.exists() else None, n_candidates=args.candidates,
            max_examples=args.max_examples, ks=tuple(int(k) for k in args.ks.split(",")), seed=args.seed,
            device=args.device, anchor_gnn=not args.no_anchor_gnn, deep_model=deep,
            ceiling_sizes=sizes,
            progress=not args.no_progress)
    except ValueError as exc:
        _error(str(exc))
    update_manifest(inp.run_dir, "quality", {"inputs": {"embeddings": report["deep_embeddings"],
                                                        "deep_model": report["deep_model"],
                                                        "model": report["distilled_model"]},
                                             "outputs": [str(p) for p in paths], "metrics": report})
    return 0


def _plan_of(args):
    """The serving plan: the project's (``--project``), or a built-in/YAML plan (``export --untrained``)."""
    if getattr(args, "project", None):
        from offline.data.spec import SpecError, load_project

        try:  # the spec alone: bad flags fail before the run directory or the data are touched
            plan = load_project(args.project).plan
        except SpecError as exc:
            _error(f"--project {args.project}: {exc}")
        if plan is None:
            _error(f"--project {args.project}: the spec has no serving section (serving.plan and serving.task)")
        return plan
    from schemas.plan import builtin_plan, load_plan

    return load_plan(args.plan) if Path(args.plan).suffix in (".yaml", ".yml") else builtin_plan(args.plan)


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
        rows = replay_rows(plan, tx, score_mask=mask, progress=False, other_tables=_hop_tables(inp))
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

    plan = _plan_of(args)
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


# ----- parsers ------------------------------------------------------------------------------------

def _common(p) -> None:
    add_project_args(p)  # --project SPEC (its serving plan says the kind), --run-dir, --no-progress
    p.add_argument("--embeddings", type=Path, help="default RUN/embeddings.parquet")
    p.add_argument("--engine", choices=["auto", "duckdb", "spark", "replay"], default="auto",
                   help="scoring plans: who builds the point-in-time rows (auto: DuckDB when the plan's windows "
                        "are rows of the fact table, else the Python replay; docs/rows.md)")
    p.add_argument("--spark-master", help="--engine spark: a master URL (default: a local session)")
    p.add_argument("--train-days", type=int, default=7,
                   help="scoring plans: training days, ending one label delay before the test start (default 7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: scoring torch's choice, ranking 1)")
    p.add_argument("--epochs", type=int, help="distillation epochs (default: scoring 6, ranking 3)")
    p.add_argument("--batch-size", type=int, help="default: scoring 256, ranking 64")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--d-model", type=int, default=64, help="shallow model width")
    p.add_argument("--layers", type=int, help="shallow model transformer layers (default: scoring 2, ranking 1)")
    p.add_argument("--soft-weight", type=float, default=0.0,
                   help="weight of the deep model's soft targets in the loss (0..1): scoring, its request-time "
                        "predictions; ranking, its pair scores (dot of the embeddings)")
    p.add_argument("--max-train-rows", type=int,
                   help="train on a seeded uniform subsample of this many training rows (default: all)")
    g = p.add_argument_group("ranking plans: training examples and candidates")
    g.add_argument("--examples", type=int, default=20000, help="seeded sample of training baskets (default 20000)")
    g.add_argument("--train-weeks", type=int, default=12, help="weeks before the training cut to sample from")
    g.add_argument("--negatives", type=int, default=64, help="sampled negatives per example (default 64)")
    g.add_argument("--max-positives", type=int, default=16)
    g.add_argument("--history-share", type=float, default=0.2,
                   help="share of negatives from the entity's own window (seen before, not now)")
    g.add_argument("--popularity-share", type=float, default=0.4,
                   help="share drawn popularity-proportionally; the rest uniform over the popular list")
    g.add_argument("--loss", choices=["softmax", "bce"], default="softmax")


def register_stage2(offline_sub) -> None:
    p = offline_sub.add_parser("distill", help="train the shallow model (scoring or ranking head, from the plan) "
                                               "on point-in-time rows -> RUN/shallow_model.pt")
    _common(p)
    p.set_defaults(func=cmd_distill)

    p = offline_sub.add_parser("quality", help="scoring: deep vs distilled vs LightGBM; ranking: baselines, deep "
                                               "and distilled on test baskets -> RUN/quality/ (JSON + plots)")
    _common(p)
    g = p.add_argument_group("ranking plans: the test protocol")
    g.add_argument("--model", type=Path, help="distilled model to rank with (default RUN/shallow_model.pt if present)")
    g.add_argument("--candidates", type=int, default=1000, help="catalog top-N candidates per example (default 1000)")
    g.add_argument("--max-examples", type=int, default=2000, help="seeded sample of test baskets (default 2000)")
    g.add_argument("--no-anchor-gnn", action="store_true",
                   help="skip the variant that runs the deep model for the entity at the anchor time")
    g.add_argument("--deep-model", type=Path, help="the deep model of `train-deep` for that variant "
                                                   "(default RUN/deep_model.pt if present)")
    g.add_argument("--ceiling-sizes",
                   help="candidate-set sizes N of the recall ceilings, comma-separated (default 100 and --candidates)")
    g.add_argument("--ks", default="10,20,50")
    g = p.add_argument_group("scoring plans: selection and seeds")
    g.add_argument("--val-days", type=int, default=7,
                   help="validation days just before the training period (same training length and label delay); "
                        "they choose the distillation epoch (best validation AUC of --epochs) and --grid "
                        "(default 7; 0: no selection, all --epochs)")
    g.add_argument("--grid", help="configurations to choose among on the validation period, e.g. "
                                  "'lr=1e-3,2e-3;d_model=32,64' (keys: lr, weight_decay, pos_weight, batch_size, "
                                  "d_model, n_layers)")
    g.add_argument("--seeds", help="model seeds, e.g. 0,1,2: distilled, deep head (if fitted), LightGBM per seed; "
                                   "mean and sd over them (default: --seed)")
    g.add_argument("--bootstrap", type=int, default=500, help="entity-bootstrap resamples per seed (default 500)")
    g.add_argument("--summary-json", type=Path, help="also write the summary (RUN/quality/scoring_quality.json) here")
    p.set_defaults(func=cmd_quality)

    p = offline_sub.add_parser("quality-summary", help="scoring: merge several runs' quality reports (one per data "
                                                       "seed) into one summary JSON + per-seed plot")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories (or quality.json files)")
    p.add_argument("--out", type=Path, required=True, help="summary JSON")
    p.add_argument("--plot", type=Path, help="per-seed plot (default: --out with .png)")
    p.set_defaults(func=cmd_quality_summary)

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
