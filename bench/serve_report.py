"""The results of ``bench_serve.py``: the targets and the verdict against them, the latency plots, and
the before/after CPU-per-event summary (``--cpu-json``) with its plot."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TARGET_HTTP = {"qps": 1000, "p99_ms": 50.0, "errors": 0}
TARGET_KAFKA = {"rate": 1000, "p99_ms": 100.0}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sweep = result.get("kafka_sweep") or ([result["kafka"]] if result.get("kafka") else [])
    panels = (["http"] if result["http"] or not sweep else []) + (["kafka"] if sweep else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "http":
            _plot_http(ax, result)
        else:
            _plot_kafka(ax, sweep)
    fig.suptitle("relstream scorer, all co-located on one 2-core machine")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_http(ax, result: dict) -> None:
    for name, steps in result["http"].items():
        qps = [s["offered_qps"] for s in steps]
        for key, style in (("p50_ms", "--"), ("p99_ms", "-")):
            ax.plot(qps, [s["latency_from_schedule"].get(key) or np.nan for s in steps], style, marker="o",
                    label=f"{name} {key.split('_')[0]}")
    if result.get("kafka"):
        k = result["kafka"]
        ax.scatter([k["rate"]], [k["latency"].get("p99_ms") or np.nan], marker="s", color="k",
                   label="Kafka path p99 (produce->score consumed)", zorder=5)
    deep = [d for d in (result.get("deep_sweep") or [result.get("deep_baseline") or {}])
            if d.get("latency_from_schedule", {}).get("p99_ms")]
    if deep:
        ax.plot([d["qps"] for d in deep], [d["latency_from_schedule"]["p99_ms"] for d in deep], "-", marker="x",
                ms=8, color="m", label="deep-at-request-time baseline p99 (in-process, one predictor)", zorder=5)
    ax.axhline(TARGET_HTTP["p99_ms"], color="r", lw=0.8, ls=":", label="HTTP p99 target (50 ms)")
    ax.axhline(100, color="grey", lw=0.8, ls=":", label="100 ms budget")
    ax.set_xlabel("offered QPS (open loop)")
    ax.set_ylabel("client latency (ms)")
    ax.set_yscale("log")
    ax.set_title("HTTP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_kafka(ax, sweep: list) -> None:
    rates = [k["rate"] for k in sweep]
    for key, style in (("p50_ms", "--"), ("p99_ms", "-")):
        ax.plot(rates, [k["latency"].get(key) or np.nan for k in sweep], style, color="k",
                marker="o" if key == "p50_ms" else "s",
                label=f"produce -> score consumed, {key.split('_')[0]}")
    colours = {"produced_to_scorer": "tab:blue", "in_scorer": "tab:orange", "built_to_consumed": "tab:green"}
    for part, colour in colours.items():
        if all(part in k.get("latency_parts", {}) for k in sweep):
            ax.plot(rates, [k["latency_parts"][part].get("p99_ms") or np.nan for k in sweep], "-", marker=".",
                    color=colour, lw=0.8, label=f"p99 of part: {part.replace('_', ' ')}")
    ax.axhline(TARGET_KAFKA["p99_ms"], color="r", lw=0.8, ls=":", label="Kafka p99 target (100 ms)")
    ax.set_xlabel("events/s produced (open loop)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Kafka path (exactly once, read_committed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def cpu_points(result: dict) -> dict:
    """``{"kafka_<rate>": {"p99_ms": [...], "cpu_ms_per_event": [...]}, "http_<qps>": {...}}``: every
    run of each point of one benchmark run, in run order."""
    points: dict = {}
    for run in result.get("kafka_sweep", []):
        point = points.setdefault(f"kafka_{run['rate']:.0f}", {"p99_ms": [], "missing": [], "cpu_ms_per_event": [],
                                                               "cpu_ms_by_process": [], "load_avg": []})
        point["p99_ms"].append(run["latency"].get("p99_ms"))
        point["missing"].append(run["missing"])
        point["cpu_ms_per_event"].append(run["cpu_ms_per_event"]["all"])
        point["cpu_ms_by_process"].append(run["cpu_ms_per_event"])
        point["load_avg"].append(run["load_avg"])
    for step in result.get("http", {}).get("/v1/score", []):
        point = points.setdefault(f"http_{step['offered_qps']:.0f}", {"p99_ms": [], "errors": [], "cpu_ms_per_event": [],
                                                                      "cpu_ms_by_process": [], "load_avg": []})
        point["p99_ms"].append(step["latency_from_schedule"].get("p99_ms"))
        point["errors"].append(step["errors"])
        point["cpu_ms_per_event"].append(step["cpu_ms_per_request"]["scorer_stack"])
        point["cpu_ms_by_process"].append(step["cpu_ms_per_request"])
        point["load_avg"].append(step["load_avg"])
    return points


def merge_cpu_summary(path: Path, label: str, result: dict) -> dict:
    """Merge this run's points into ``path`` under ``label``. The ``after`` points are also the
    top-level keys (``{"kafka_1000": {"p99_ms": [run1, run2]}, ...}``), and ``cpu_ms_per_event``
    holds per label the median, over the runs of the Kafka point at the target rate (else the
    first point), of the CPU per scored event of all processes together."""
    summary = json.loads(path.read_text()) if path.exists() else {}
    run = summary.setdefault("runs", {}).setdefault(label, {"points": {}, "settings": [], "machine": []})
    run["points"].update(cpu_points(result))  # e.g. a Kafka run and an HTTP run of the same code
    run["settings"].append(result["settings"])
    run["machine"].append(result["machine"])
    run["model"] = result.get("model")
    points = run["points"]
    if label == "after":
        summary.update(points)
    headline = f"kafka_{TARGET_KAFKA['rate']}" if f"kafka_{TARGET_KAFKA['rate']}" in points else next(iter(points), None)
    if headline is not None:
        cpu = summary.setdefault("cpu_ms_per_event", {})
        cpu[label] = float(np.median(points[headline]["cpu_ms_per_event"]))
        cpu.setdefault("point", {})[label] = headline
        by_process: dict = {}
        for run in points[headline]["cpu_ms_by_process"]:
            for name, ms in run.items():
                by_process.setdefault(name, []).append(ms)
        cpu.setdefault("by_process", {})[label] = {k: float(np.median(v)) for k, v in by_process.items()}
        if "before" in cpu and "after" in cpu:
            cpu["after_over_before"] = cpu["after"] / cpu["before"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    return summary


def plot_cpu_summary(path: Path) -> None:
    """CPU ms per event by process, per label (bars), and p99 of every run of each point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    summary = json.loads(path.read_text())
    labels = list(summary.get("runs", {}))
    by_process = summary.get("cpu_ms_per_event", {}).get("by_process", {})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({n for label in labels for n in by_process.get(label, {}) if n != "all"})
    bottom = np.zeros(len(labels))
    for name in names:
        vals = np.array([by_process.get(label, {}).get(name, 0.0) for label in labels])
        ax1.bar(labels, vals, bottom=bottom, label=name)
        bottom += vals
    ax1.set_ylabel("CPU ms per scored event")
    ax1.set_title(f"CPU per event by process ({summary.get('cpu_ms_per_event', {}).get('point', {})})")
    ax1.legend(fontsize=8)
    points = sorted({p for label in labels for p in summary["runs"][label]["points"]})
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        for i, point in enumerate(points):
            runs = summary["runs"][label]["points"].get(point, {}).get("p99_ms", [])
            ax2.scatter([i + (j - (len(labels) - 1) / 2) * width] * len(runs), runs, label=label if i == 0 else None,
                        color=f"C{j}")
    ax2.set_xticks(range(len(points)), points)
    ax2.set_yscale("log")
    ax2.set_ylabel("p99 latency, ms (each run)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(fig)


def verdict(result: dict) -> dict:
    out = {}
    steps = result["http"].get("/v1/score") or []
    ok = [s for s in steps if s["errors"] == 0 and (s["latency_from_schedule"].get("p99_ms") or 1e9)
          <= TARGET_HTTP["p99_ms"] and s["achieved_qps"] >= 0.95 * s["offered_qps"]]
    if steps:
        best = max(ok, key=lambda s: s["offered_qps"]) if ok else None
        out["http_max_qps_meeting_p99_50ms_0_errors"] = best["offered_qps"] if best else 0
        out["http_target_met"] = bool(best and best["offered_qps"] >= TARGET_HTTP["qps"])
    if result.get("kafka"):
        k = result["kafka"]
        out["kafka_p99_ms"] = k["latency"].get("p99_ms")
        out["kafka_target_met"] = bool(k["missing"] == 0 and (k["latency"].get("p99_ms") or 1e9)
                                       <= TARGET_KAFKA["p99_ms"] and k["rate"] >= TARGET_KAFKA["rate"])
    deep_steps = [d for d in (result.get("deep_sweep") or [result.get("deep_baseline") or {}])
                  if d.get("p99_ratio_deep_over_distilled")]
    if deep_steps:
        # the ratio depends on the load: report it per load, and from which load on it holds
        out["deep_over_distilled_p99"] = {f"{d['qps']:g}": d["p99_ratio_deep_over_distilled"] for d in deep_steps}
        holding = [d["qps"] for d in deep_steps if d["p99_ratio_deep_over_distilled"] >= 20]
        out["deep_target_met_at_qps"] = holding
        out["deep_target_met_at_every_load"] = len(holding) == len(deep_steps)
    return out
