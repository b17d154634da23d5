"""The deep-at-request-time baseline of ``bench_serve.py``: the project's deep model scored in-process,
open-loop, at the HTTP sweep's loads."""
from __future__ import annotations

import time
from pathlib import Path

from bench.serve_load import summary_ms


def deep_baseline_latency(deep_dir: Path, project_path: Path, qps_steps, seconds: float, log,
                          n_payloads: int = 128) -> list[dict]:
    """The project's deep model at request time (offline/quality/deep.py), driven open-loop
    in-process by one worker (one predictor): latency = queueing + temporal subgraph sampling +
    deep GNN (+ head).

    ``deep_dir`` is the project's run directory (``relstream offline train-deep``: its
    ``deep_model.pt``; ``quality/deep_head.pt`` when the project has no fact-label head, else a
    random head of the same cost). Payloads are the fact table's last 128 rows, scored as of
    their own time. No HTTP in this path, so the comparison favours the baseline."""
    import numpy as np
    import torch

    from offline.data.sources import load_tables
    from offline.data.spec import load_project
    from offline.quality.deep import DeepRequestScorer, FrozenHead

    project = load_project(project_path)
    dataset = load_tables(project)
    plan = project.plan
    scorer = DeepRequestScorer.from_files(deep_dir / "deep_model.pt", project, dataset, plan.fact_table,
                                          project.spec.serving.task.label)
    n_rows = len(dataset.table(plan.fact_table))
    rows = np.arange(max(0, n_rows - n_payloads), n_rows)
    times = dataset.table(plan.fact_table)[plan.fact.time_column].to_numpy(np.int64)[rows]
    head = deep_dir / "quality" / "deep_head.pt"
    trained = not scorer.needs_head
    if scorer.needs_head:
        torch.manual_seed(0)
        scorer.head = FrozenHead(scorer.encode(rows[:1], times[:1]).shape[1]).eval()
        if head.exists():
            scorer.head.load_state_dict(torch.load(head, weights_only=True)["state_dict"])
            trained = True

    def score_one(i: int) -> None:
        k = i % len(rows)
        scorer.score(rows[k:k + 1], times[k:k + 1])

    for i in range(5):
        score_one(i)  # warm-up
    return [_deep_step(score_one, float(qps), seconds, log, str(project_path), n_rows, trained) for qps in qps_steps]


def _deep_step(score_one, qps: float, seconds: float, log, source: str, n_rows: int, trained_head: bool) -> dict:
    n = int(qps * seconds)
    t0 = time.perf_counter() + 0.05
    lat, unfinished = [], 0
    for i in range(n):
        sched = t0 + i / qps
        delay = sched - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if time.perf_counter() - t0 > 3 * seconds:  # hopelessly behind: stop, report a lower bound
            unfinished = n - i
            break
        score_one(i)
        lat.append(time.perf_counter() - sched)
    service = []
    for i in range(20):
        a = time.perf_counter()
        score_one(i)
        service.append(time.perf_counter() - a)
    res = {"qps": qps, "project": source, "fact_rows": n_rows,
           "trained_head": trained_head, "latency_from_schedule": summary_ms(lat), "unfinished": unfinished,
           "service_time_unloaded": summary_ms(service)}
    log(f"  deep baseline at {qps:.0f} QPS: p99 {res['latency_from_schedule'].get('p99_ms', float('nan')):.1f} ms"
        f" (service time p50 {res['service_time_unloaded']['p50_ms']:.1f} ms), {unfinished} not sent")
    return res
