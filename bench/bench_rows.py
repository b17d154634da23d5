"""Point-in-time training rows: the Python replay vs DuckDB vs Spark local (offline/rows).

Data: the fraud simulator (``offline/datasets/fraud.py``). The *published* scale is its defaults
(5,000 customers x 10,000 terminals x 183 days, seed 0: 1.79 M transactions) scored like
``relstream offline distill``: the protocol split's train + test transactions (``time_split``).
Larger scales are ``--shards`` independent simulator runs (seeds 0..k-1, disjoint customer,
terminal and transaction ids) over the same 183 days, written shard by shard to one Parquet file
(the generator never holds more than one shard); there every ``--score-every``-th event is scored.
Embeddings: random vectors (``--dim``) at daily snapshots for every entity, the
``embeddings.parquet`` format, so the embedding join is part of the measured work.

Every measurement runs ``build_rows`` in a fresh process (spawn) while the parent samples the
resident memory of that process and its children (Spark's JVM) every 0.2 s: the peak is the
whole engine's. Reported per (scale, engine): median wall seconds over ``--repeats`` runs (the
replay: ``--replay-repeats``), rows/s and events/s, peak RSS; ratios against the replay of the
same run. The load average at the start is recorded (the machine is shared).

    nice -n 5 python bench/bench_rows.py --scale published --engines replay,duckdb,spark
    nice -n 5 python bench/bench_rows.py --scale 4,8,16,28 --engines duckdb --repeats 1

Writes bench/results/rows[_<tag>].json and .png (time vs events, log-log).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

NS_PER_DAY = 86_400 * 10**9


def _published_inputs(work: Path, dim: int) -> dict:
    """Published-scale transactions + the distill split's score mask + daily random embeddings."""
    from offline.datasets.fraud import FraudSimConfig, generate_dataset
    from offline.embeddings import random_embeddings, write_embeddings_parquet
    from offline.evaluate import SplitConfig, time_split
    from schemas.plan_loading import builtin_plan

    plan = builtin_plan("fraud")
    tx = generate_dataset(FraudSimConfig()).table("transactions")
    split = time_split(tx, SplitConfig(), time="tx_datetime", label="tx_fraud", entity="customer_id")
    mask = np.zeros(len(tx), bool)
    mask[tx.index.get_indexer(split.train.index)] = True
    mask[tx.index.get_indexer(split.test.index)] = True
    tx.to_parquet(work / "events.parquet", index=False)
    np.save(work / "mask.npy", mask)
    day0 = split.day0_ns
    snaps = [day0 + d * NS_PER_DAY for d in range(split.config.train_start_day - 1, split.config.test_end_day)]
    types, ids, st, vec = random_embeddings(plan, {"customers": tx["customer_id"].unique(),
                                                   "terminals": tx["terminal_id"].unique()}, snaps, dim=dim)
    write_embeddings_parquet(work / "embeddings.parquet", types, ids, st, vec)
    return {"events": len(tx), "rows": int(mask.sum()), "snapshots": len(snaps), "embedding_rows": len(ids)}


def _sharded_inputs(work: Path, shards: int, score_every: int, dim: int, snapshot_every_days: int) -> dict:
    """``shards`` simulator runs in one Parquet file; random embeddings of every entity every
    ``snapshot_every_days``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from offline.datasets.fraud import FraudSimConfig, generate_dataset
    from offline.embeddings import random_embeddings, write_embeddings_parquet
    from schemas.plan_loading import builtin_plan

    plan = builtin_plan("fraud")
    cfg = FraudSimConfig()
    writer, n, masks, first_day = None, 0, [], None
    emb_ids = {"customers": [], "terminals": []}
    for k in range(shards):
        tx = generate_dataset(FraudSimConfig(seed=k)).table("transactions")
        tx = tx.assign(transaction_id=tx["transaction_id"] + n, customer_id=tx["customer_id"] + k * cfg.n_customers,
                       terminal_id=tx["terminal_id"] + k * cfg.n_terminals)
        first_day = int(tx["tx_datetime"].min()) if first_day is None else min(first_day, int(tx["tx_datetime"].min()))
        emb_ids["customers"].append(tx["customer_id"].unique())
        emb_ids["terminals"].append(tx["terminal_id"].unique())
        table = pa.Table.from_pandas(tx, preserve_index=False)
        writer = writer or pq.ParquetWriter(work / "events.parquet", table.schema, compression="zstd")
        writer.write_table(table, row_group_size=1_000_000)
        masks.append((np.arange(n, n + len(tx)) % score_every) == 0)
        n += len(tx)
        print(f"  shard {k + 1}/{shards}: {n:,} events", flush=True)
    writer.close()
    mask = np.concatenate(masks)
    np.save(work / "mask.npy", mask)
    day0 = first_day - first_day % NS_PER_DAY
    snaps = [day0 + d * NS_PER_DAY for d in range(0, cfg.n_days, snapshot_every_days)]
    types, ids, st, vec = random_embeddings(plan, {t: np.concatenate(v) for t, v in emb_ids.items()}, snaps, dim=dim)
    write_embeddings_parquet(work / "embeddings.parquet", types, ids, st, vec)
    return {"events": n, "rows": int(mask.sum()), "snapshots": len(snaps), "embedding_rows": len(ids)}


def _run_one(work: str, engine: str, out: str, chunk_events: int, result_path: str,
             duckdb_memory_limit: str | None = None) -> None:
    """In a fresh process: one build_rows, its timings written to result_path."""
    from offline.rows import build_rows
    from schemas.plan_loading import builtin_plan

    work = Path(work)
    mask = np.load(work / "mask.npy")
    spark = None
    if engine == "spark":
        from offline.rows.engines import local_spark_session

        t = time.perf_counter()
        spark = local_spark_session("local[2]", shuffle_partitions=8, driver_memory="8g")
        spark.sparkContext.setLogLevel("ERROR")
        start_s = time.perf_counter() - t
    t = time.perf_counter()
    manifest = build_rows(builtin_plan("fraud"), work / "events.parquet", work / "embeddings.parquet", mask,
                          engine=engine, out=out, chunk_events=chunk_events, spark=spark, work_dir=work, progress=False,
                          duckdb_memory_limit=duckdb_memory_limit)
    seconds = time.perf_counter() - t
    info = {"seconds": seconds, "rows": manifest["rows"], "chunks": len(manifest["chunks"]),
            "seconds_stage": manifest.get("seconds_stage"), "seconds_query": manifest.get("seconds_query")}
    if spark is not None:
        info["seconds_session_start"] = start_s
        spark.stop()
    Path(result_path).write_text(json.dumps(info))


def measure(work: Path, engine: str, chunk_events: int, duckdb_memory_limit: str | None = None) -> dict:
    import psutil

    result = work / f"result_{engine}.json"
    result.unlink(missing_ok=True)
    proc = mp.get_context("spawn").Process(target=_run_one, args=(str(work), engine, str(work / f"rows_{engine}"),
                                                                   chunk_events, str(result), duckdb_memory_limit))
    proc.start()
    peak, stop = [0], threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                    peak[0] = max(peak[0], rss)
                except psutil.Error:
                    pass
                time.sleep(0.2)
        except psutil.Error:
            return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc.join()
    stop.set()
    sampler.join()
    if proc.exitcode != 0 or not result.exists():
        return {"engine": engine, "failed": f"exit code {proc.exitcode}", "peak_rss_gb": peak[0] / 2**30}
    info = json.loads(result.read_text())
    info.update(engine=engine, peak_rss_gb=peak[0] / 2**30)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="published",
                    help="'published' or comma-separated shard counts (1 shard = one published-size run)")
    ap.add_argument("--engines", default="replay,duckdb,spark")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--replay-repeats", type=int, default=1)
    ap.add_argument("--score-every", type=int, default=10, help="sharded scales: score every k-th event")
    ap.add_argument("--chunk-events", type=int, default=3_000_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--duckdb-memory-limit", default=None, help="e.g. 10GB: DuckDB spills beyond it")
    ap.add_argument("--snapshot-every-days", type=int, default=7, help="sharded scales: embedding snapshot spacing")
    ap.add_argument("--work-dir", default=None, help="where inputs, rows and spill files go (default: a temp dir)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    out_json = ROOT / "bench" / "results" / f"rows{'_' + args.tag if args.tag else ''}.json"
    report = {"argv": sys.argv[1:], "load_average_start": os.getloadavg(), "cpus": os.cpu_count(), "engines": engines,
              "repeats": args.repeats, "replay_repeats": args.replay_repeats, "chunk_events": args.chunk_events,
              "dim": args.dim, "scales": []}
    for scale in args.scale.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-rows-", dir=args.work_dir) as tmp:
            work = Path(tmp)
            t = time.perf_counter()
            print(f"scale {scale}: generating", flush=True)
            data = (_published_inputs(work, args.dim) if scale == "published"
                    else _sharded_inputs(work, int(scale), args.score_every, args.dim, args.snapshot_every_days))
            data.update(scale=scale, seconds_generate=time.perf_counter() - t,
                        load_average=os.getloadavg(), engines={})
            for engine in engines:
                runs = [measure(work, engine, args.chunk_events, args.duckdb_memory_limit)
                        for _ in range(args.replay_repeats if engine == "replay" else args.repeats)]
                ok = [r for r in runs if "failed" not in r]
                summary = {"runs": runs, "peak_rss_gb": max(r["peak_rss_gb"] for r in runs)}
                if ok:
                    med = statistics.median(r["seconds"] for r in ok)
                    summary.update(seconds_median=med, rows_per_s=data["rows"] / med, events_per_s=data["events"] / med)
                data["engines"][engine] = summary
                print(f"  {engine}: {json.dumps({k: v for k, v in summary.items() if k != 'runs'})}", flush=True)
            base = data["engines"].get("replay", {}).get("seconds_median")
            if base:
                data["speedup_vs_replay"] = {e: base / s["seconds_median"] for e, s in data["engines"].items()
                                             if "seconds_median" in s}
            report["scales"].append(data)
            out_json.write_text(json.dumps(report, indent=1))
    plot(report, out_json.with_suffix(".png"))
    print(f"wrote {out_json}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for engine in report["engines"]:
        pts = [(s["events"], s["engines"][engine]) for s in report["scales"] if "seconds_median" in s["engines"].get(engine, {})]
        if not pts:
            continue
        ev = [p[0] for p in pts]
        ax_t.plot(ev, [p[1]["seconds_median"] for p in pts], "o-", label=engine)
        ax_m.plot(ev, [p[1]["peak_rss_gb"] for p in pts], "o-", label=engine)
    for ax, label in ((ax_t, "wall seconds (median)"), (ax_m, "peak RSS (GiB, process tree)")):
        ax.set_xscale("log")
        ax.set_xlabel("events")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_t.set_yscale("log")
    fig.suptitle(f"training rows: replay vs DuckDB vs Spark local (load avg at start {report['load_average_start'][0]:.1f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
