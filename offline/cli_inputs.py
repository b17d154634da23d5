"""What the distill, quality and export commands share: the run's inputs resolved from the
project spec (:func:`resolve_inputs`), the serving plan (:func:`plan_of`), the distillation flags
and their per-kind defaults. Torch-free at import (the CLI registers every command at start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline.project import add_project_args, error, open_project

DAY_NS = 86_400 * 10**9
QUALITY_DIR = "quality"

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


def torch_setup(args, plan) -> None:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        _error("--device cuda: no CUDA device available")
    threads = args.threads or (1 if plan.is_ranking else None)  # ranking: 1 (shared CPU, see docs/recsys.md)
    if threads:
        torch.set_num_threads(threads)


# Per plan kind: defaults of the flags whose best value differs (scoring, ranking).
KIND_DEFAULTS = {"epochs": (6, 3), "batch_size": (256, 64), "layers": (2, 1)}


def kind_default(args, name: str, plan):
    value = getattr(args, name)
    return KIND_DEFAULTS[name][int(plan.is_ranking)] if value is None else value


def distill_config(args, plan):
    from offline.distillation.shallow_model import RankingConfig, ScoringConfig
    from offline.distillation.trainer import DistillConfig

    if args.max_train_rows is not None and args.max_train_rows < 1:
        _error(f"--max-train-rows: must be >= 1 (got {args.max_train_rows})")
    if not 0.0 <= args.soft_weight <= 1.0 or (plan.is_ranking and args.soft_weight == 1.0):
        _error(f"--soft-weight: must be in [0, 1{')' if plan.is_ranking else ']'} (got {args.soft_weight})")
    epochs = kind_default(args, "epochs", plan)
    if epochs < 1:
        _error(f"--epochs: must be >= 1 (got {epochs})")
    layers = kind_default(args, "layers", plan)
    head = (RankingConfig(d_model=args.d_model, n_layers=layers, d_ff=2 * args.d_model) if plan.is_ranking
            else ScoringConfig(d_model=args.d_model, n_layers=layers, d_ff=2 * args.d_model))
    return DistillConfig(epochs=epochs, batch_size=kind_default(args, "batch_size", plan), lr=args.lr,
                         loss=args.loss, soft_weight=args.soft_weight, max_train_rows=args.max_train_rows,
                         seed=args.seed, device=args.device, model=head)



def hop_tables(inp: Inputs) -> dict:
    """The tables the plan's hops read besides the fact table (their rows feed the windows)."""
    return {h.key.target.table: inp.dataset.table(h.key.target.table) for h in inp.plan.hops
            if h.key.target.table != inp.plan.fact_table}


def plan_of(args):
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
    from schemas.plan_loading import builtin_plan, load_plan

    return load_plan(args.plan) if Path(args.plan).suffix in (".yaml", ".yml") else builtin_plan(args.plan)


def add_distill_args(p) -> None:
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


