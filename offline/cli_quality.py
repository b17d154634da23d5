"""`relstream offline quality | quality-summary` for a project's serving plan (see ``offline/cli_stage2.py``
for the usage of every stage-2 command). Torch-free at import (registration only).
"""

from __future__ import annotations

import json
from pathlib import Path

from offline.cli_inputs import (QUALITY_DIR, add_distill_args, distill_config, hop_tables, plan_of,
                                resolve_inputs, torch_setup)
from offline.project import error, update_manifest

_error = error


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

    cfg_distill = distill_config(args, plan_of(args))  # bad flags fail before the dataset loads
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
    torch_setup(args, inp.plan)
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
                             other_tables=hop_tables(inp), progress=not args.no_progress,
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

    if not plan_of(args).is_ranking:
        return _scoring_quality(args)
    from offline.quality.ranking import run_ranking_quality

    try:  # bad flags fail before the data loads
        sizes = tuple(int(n) for n in args.ceiling_sizes.split(",")) if args.ceiling_sizes else None
    except ValueError:
        _error(f"--ceiling-sizes: expected comma-separated integers, got {args.ceiling_sizes!r}")
    if sizes is not None and not all(1 <= n <= args.candidates for n in sizes):
        _error(f"--ceiling-sizes: each N in [1, --candidates {args.candidates}], got {list(sizes)}")
    inp = resolve_inputs(args, need_deep=False)
    torch_setup(args, inp.plan)
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



def register_quality(offline_sub) -> None:
    p = offline_sub.add_parser("quality", help="scoring: deep vs distilled vs LightGBM; ranking: baselines, deep "
                                               "and distilled on test baskets -> RUN/quality/ (JSON + plots)")
    add_distill_args(p)
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
