"""The demo's summary numbers and its Markdown report with plots (latency over time, ROC, PR).

Pure functions over plain arrays: :func:`summarise` turns what the demo measured into numbers,
:func:`write_report` writes ``report.md`` and the PNGs next to it (matplotlib, Agg backend),
:func:`format_summary` renders the console summary. Nothing here talks to a server.
"""
from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PERCENTILES = (50, 90, 99, 99.9)


@dataclass
class StageTiming:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class StreamMeasurement:
    """What the streaming phase produced, one entry per produced event (aligned arrays)."""

    event_ids: np.ndarray  # str/object
    produced_ns: np.ndarray  # int64 wall clock when the producer handed the event to Kafka
    consumed_ns: np.ndarray  # int64 wall clock when its score was consumed; -1 = never scored
    scores: np.ndarray  # float32; nan = never scored
    labels: np.ndarray  # int (0/1)
    offered_rate: float  # events/s the producer aimed for
    produce_seconds: float  # wall time the producer took
    drain_seconds: float  # wall time from first produce to last score consumed
    duplicates: int = 0  # score records seen more than once for the same event id
    degraded: int = 0  # score records with any degraded flag
    cold_start: int = 0  # score records with any cold-start entity


@dataclass
class Parity:
    events: int
    max_abs_diff: float
    mean_abs_diff: float
    worst_event_id: str | None
    tolerance: float = 1e-5

    @property
    def ok(self) -> bool:
        return self.events > 0 and self.max_abs_diff <= self.tolerance


@dataclass
class CurlCall:
    command: str  # as printed: pasted into bash/zsh with the token variable set, it runs as is
    status: int
    body: str
    # `export RELSTREAM_API_TOKEN=...` when serve was left running (KEEP_STACK=1), so the two
    # printed lines can be pasted; None otherwise (the token is not written into report.md)
    token_export: str | None = None


def curl_command(url: str, body: str, token_env: str = "RELSTREAM_API_TOKEN") -> str:
    """The curl line of one scoring call, safe to paste into a POSIX shell.

    The Authorization header is double-quoted so the shell expands ``$token_env`` (single quotes
    would send the variable's name, and the server answers 401); the JSON body and the URL are
    single-quoted where needed so the shell leaves them alone.
    """
    if not token_env.replace("_", "").isalnum() or token_env[0].isdigit():
        raise ValueError(f"token_env {token_env!r} is not a shell variable name")
    return " ".join(["curl", "-sS", "-X", "POST", shlex.quote(url),
                     "-H", f'"Authorization: Bearer ${token_env}"',
                     "-H", shlex.quote("Content-Type: application/json"), "-d", shlex.quote(body)])


def token_export(token: str, token_env: str = "RELSTREAM_API_TOKEN") -> str:
    return f"export {token_env}={shlex.quote(token)}"


@dataclass
class DemoSummary:
    run_dir: str
    data: dict[str, Any]
    stages: list[StageTiming]
    events: int
    scored: int
    unscored: int
    duplicates: int
    offered_rate: float
    achieved_rate: float
    latency_ms: dict[str, float]
    auc_roc: float
    average_precision: float
    fraud_rate: float
    degraded: int
    cold_start: int
    parity: Parity | None = None
    curl: CurlCall | None = None
    offline_metrics: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d.get("curl"):
            d["curl"].pop("token_export", None)  # the token stays out of the files written
        if self.parity is not None:
            d["parity"]["ok"] = self.parity.ok
        return d


def latency_ms(stream: StreamMeasurement) -> np.ndarray:
    done = stream.consumed_ns >= 0
    return (stream.consumed_ns[done] - stream.produced_ns[done]) / 1e6


def percentiles(values: np.ndarray, qs: Sequence[float] = PERCENTILES) -> dict[str, float]:
    if len(values) == 0:
        return {f"p{q:g}": float("nan") for q in qs} | {"max": float("nan"), "mean": float("nan")}
    out = {f"p{q:g}": float(np.percentile(values, q)) for q in qs}
    out["max"] = float(np.max(values))
    out["mean"] = float(np.mean(values))
    return out


def classification_metrics(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(AUC ROC, average precision) over scored events; nan when only one class is present."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    ok = ~np.isnan(scores)
    y, s = labels[ok].astype(int), scores[ok].astype(float)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


def parity_of(event_ids: Sequence[str], online: np.ndarray, offline: np.ndarray,
              tolerance: float = 1e-5) -> Parity:
    """Compare online and offline scores of the same events (nan online = unscored: infinite diff)."""
    online = np.asarray(online, np.float64)
    offline = np.asarray(offline, np.float64)
    if len(online) != len(offline) or len(online) != len(event_ids):
        raise ValueError(f"parity: {len(event_ids)} ids, {len(online)} online, {len(offline)} offline scores")
    if len(online) == 0:
        return Parity(0, float("nan"), float("nan"), None, tolerance)
    diff = np.abs(online - offline)
    diff[np.isnan(diff)] = np.inf
    worst = int(np.argmax(diff))
    return Parity(len(online), float(diff[worst]), float(np.mean(diff[np.isfinite(diff)])) if np.isfinite(diff).any()
                  else float("inf"), str(event_ids[worst]), tolerance)


def summarise(run_dir: str | Path, stream: StreamMeasurement, stages: Sequence[StageTiming], data: dict,
              parity: Parity | None = None, curl: CurlCall | None = None,
              offline_metrics: dict | None = None) -> DemoSummary:
    lat = latency_ms(stream)
    scored = int((stream.consumed_ns >= 0).sum())
    auc, ap = classification_metrics(stream.labels, stream.scores)
    achieved = scored / stream.drain_seconds if stream.drain_seconds > 0 else float("nan")
    return DemoSummary(
        run_dir=str(run_dir), data=dict(data), stages=list(stages), events=len(stream.event_ids),
        scored=scored, unscored=len(stream.event_ids) - scored, duplicates=stream.duplicates,
        offered_rate=stream.offered_rate, achieved_rate=achieved, latency_ms=percentiles(lat),
        auc_roc=auc, average_precision=ap, fraud_rate=float(np.mean(stream.labels)) if len(stream.labels) else 0.0,
        degraded=stream.degraded, cold_start=stream.cold_start, parity=parity, curl=curl,
        offline_metrics=dict(offline_metrics or {}))


# ----- plots -----------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(stream: StreamMeasurement, path: Path) -> Path:
    plt = _plt()
    done = stream.consumed_ns >= 0
    t0 = int(stream.produced_ns.min()) if len(stream.produced_ns) else 0
    x = (stream.produced_ns[done] - t0) / 1e9
    y = (stream.consumed_ns[done] - stream.produced_ns[done]) / 1e6
    order = np.argsort(x)
    x, y = x[order], y[order]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.scatter(x, y, s=3, alpha=0.35, label="event")
    if len(x) >= 20:
        # p50/p99 per one-second bucket: shows warm-up and stalls that a global percentile hides
        buckets = np.floor(x).astype(int)
        xs, p50, p99 = [], [], []
        for b in np.unique(buckets):
            sel = y[buckets == b]
            xs.append(b + 0.5)
            p50.append(np.percentile(sel, 50))
            p99.append(np.percentile(sel, 99))
        ax.plot(xs, p50, color="tab:green", label="p50 per second")
        ax.plot(xs, p99, color="tab:red", label="p99 per second")
    ax.set_xlabel("seconds since the first event was produced")
    ax.set_ylabel("produce -> score consumed (ms)")
    ax.set_yscale("log")
    ax.set_title(f"Kafka path latency at {stream.offered_rate:g} events/s offered")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc_pr(labels: np.ndarray, scores: np.ndarray, roc_path: Path, pr_path: Path) -> tuple[Path, Path]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    ok = ~np.isnan(scores)
    y, s = labels[ok].astype(int), scores[ok].astype(float)
    auc, ap = classification_metrics(labels, scores)
    fig, ax = plt.subplots(figsize=(5, 5))
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"streamed scores (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", alpha=0.4, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC of the streamed scores")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(roc_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    if len(np.unique(y)) == 2:
        prec, rec, _ = precision_recall_curve(y, s)
        ax.plot(rec, prec, label=f"streamed scores (AP {ap:.3f})")
        ax.axhline(float(y.mean()), color="k", ls="--", alpha=0.4, label=f"fraud rate {y.mean():.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall of the streamed scores")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(pr_path, dpi=110)
    plt.close(fig)
    return roc_path, pr_path


# ----- text ------------------------------------------------------------------------------------

def _f(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def format_summary(s: DemoSummary) -> str:
    lat = s.latency_ms
    lines = [
        "",
        "================ relstream demo: summary ================",
        f"data          {s.data.get('description', '')}",
        f"streamed      {s.events:,} held-out transactions at {_f(s.offered_rate, 0)} events/s offered",
        *([f"labels        {s.data['labels']}"] if s.data.get("labels") else []),
        f"scored        {s.scored:,} ({s.unscored} unscored, {s.duplicates} duplicate score records)",
        f"throughput    {_f(s.achieved_rate)} events/s (first produce -> last score consumed)",
        f"latency (ms)  p50 {_f(lat['p50'])}  p90 {_f(lat['p90'])}  p99 {_f(lat['p99'])}  "
        f"max {_f(lat['max'])}   (produce -> score consumed)",
        f"quality       AUC {_f(s.auc_roc, 4)}  AP {_f(s.average_precision, 4)}  "
        f"(fraud rate {s.fraud_rate:.2%}; the scored transactions' own labels never streamed)",
        f"flags         {s.degraded} degraded, {s.cold_start} cold-start score records",
    ]
    if s.parity is not None:
        p = s.parity
        lines.append(f"parity        online vs offline max |diff| {p.max_abs_diff:.2e} over {p.events:,} events "
                     f"({'OK' if p.ok else 'FAILED'}, tolerance {p.tolerance:g})")
    if s.curl is not None:
        lines.append(f"HTTP          $ {s.curl.command}")
        lines.append(f"              -> {s.curl.status} {s.curl.body.strip()[:300]}")
        if s.curl.token_export:
            lines.append("              relstream serve is still running; to call it again, paste:")
            lines.append(f"              {s.curl.token_export}")
            lines.append(f"              {s.curl.command}")
    lines.append("stages        " + ", ".join(f"{t.name} {t.seconds:.1f}s" for t in s.stages))
    lines.append("=========================================================")
    return "\n".join(lines)


def write_report(s: DemoSummary, stream: StreamMeasurement, out_dir: str | Path) -> Path:
    """Write report.md, summary.json and the three PNGs into ``out_dir``; return report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lat_png = plot_latency(stream, out / "latency.png")
    roc_png, pr_png = plot_roc_pr(stream.labels, stream.scores, out / "roc.png", out / "pr.png")
    s.plots = {"latency": lat_png.name, "roc": roc_png.name, "pr": pr_png.name}
    lat = s.latency_ms
    md = [
        "# relstream demo report",
        "",
        f"Run directory: `{s.run_dir}`",
        "",
        "## What ran",
        "",
        f"- Data: {s.data.get('description', '')}",
        f"- Held-out period streamed through Kafka: {s.data.get('holdout', '')}",
        *([f"- Label feedback (plan `fraud_labels`): {s.data['labels']}"] if s.data.get("labels") else []),
        f"- Machine: {os.cpu_count()} CPUs shared with other work; 1-minute load average when streaming began: "
        f"{s.data.get('load_avg_at_stream', 'n/a')}",
        "- Path: producer -> Kafka -> `relstream score` (windows from Redis as of each event's time, "
        "filled by `relstream ingest` and the backfill) -> Triton (distilled model) -> scores topic -> consumer.",
        "",
        "| stage | seconds | detail |",
        "|---|---:|---|",
    ]
    md += [f"| {t.name} | {t.seconds:.1f} | {t.detail.replace('|', chr(92) + '|')} |" for t in s.stages]
    md += [
        "",
        "## Streaming",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| events produced | {s.events:,} |",
        f"| events scored | {s.scored:,} |",
        f"| unscored | {s.unscored} |",
        f"| duplicate score records | {s.duplicates} |",
        f"| offered rate (events/s) | {_f(s.offered_rate, 0)} |",
        f"| achieved rate (events/s) | {_f(s.achieved_rate)} |",
    ]
    md += [f"| latency {k} (ms) | {_f(v, 2)} |" for k, v in lat.items()]
    md += [
        f"| degraded score records | {s.degraded} |",
        f"| cold-start score records | {s.cold_start} |",
        "",
        "Latency is measured from the moment the producer handed the event to Kafka to the moment the "
        "score record was consumed from the output topic (same host clock). It is a cold-start figure: "
        "the broker, `relstream ingest` and `relstream score` were started seconds before this short stream "
        "(the broker's JVM is still compiling its hot paths; the plot shows the latency falling as it warms). "
        "Steady-state latency after a warm-up, and at 1,000 events/s: docs/benchmarks.md, "
        "\"Kafka path after pacing\".",
        "",
        f"![latency over time]({s.plots['latency']})",
        "",
        "## Quality of the streamed scores",
        "",
        f"AUC ROC **{_f(s.auc_roc, 4)}**, average precision **{_f(s.average_precision, 4)}** "
        f"(fraud rate {s.fraud_rate:.2%}). Labels are joined after the fact; they never travel on the stream.",
        "",
        f"![ROC]({s.plots['roc']}) ![PR]({s.plots['pr']})",
        "",
    ]
    if s.offline_metrics:
        md += ["Offline evaluation (same model, offline-built tensors):", "", "```json",
               json.dumps(s.offline_metrics, indent=1, default=str), "```", ""]
    if s.parity is not None:
        p = s.parity
        md += [
            "## Online / offline parity",
            "",
            f"For every streamed event the score from the live path was compared with the offline model's "
            f"score on tensors built offline (in-memory window store replayed from the same data, "
            f"`schemas.tensors.build_tensors`, the bundle's own scoring code).",
            "",
            f"- events compared: {p.events:,}",
            f"- max abs diff: {p.max_abs_diff:.3e} (tolerance {p.tolerance:g}) -> **{'OK' if p.ok else 'FAILED'}**",
            f"- mean abs diff: {p.mean_abs_diff:.3e}",
            f"- worst event: {p.worst_event_id}",
            "",
            "How the claim is made exact: the compared scores come from a second scoring pass (its own "
            "consumer group) over the same held-out events, started after `relstream ingest` had committed "
            "every one of them, so the Redis windows and the in-memory store hold the same interactions. "
            "Window stores keep the newest `max_len` rows and a 7-day look-back relative to their newest row, "
            "so reads as of an earlier time see what both stores kept, identically.",
            "",
        ]
        if "live_equal_event_time" in s.data:
            n = p.events
            md += [
                "The live pass (scored while the day was streaming) compared with the rows the model was trained on "
                "(`offline.distillation.replay.replay_rows`: windows as of each event while replaying in event-time order):",
                "",
                f"- live pass = training-time rows: {s.data['live_equal_event_time']:,} of {n:,} events",
                f"- live pass = caught-up replay pass: {s.data['live_equal_replay']:,} of {n:,}",
                f"- caught-up replay pass = training-time rows: {s.data['replay_equal_event_time']:,} of {n:,}",
                "",
                "Differences there are window freshness, not serving bugs: live, an event is scored with whatever "
                "interactions reached Redis before it was read (ingest and the scorer's own append race each other); "
                "after the fact, later events of the same day have pushed the oldest rows out of full windows "
                "(count cap 32) that were still visible at the earlier event's time.",
                "",
            ]
    if s.curl is not None:
        md += ["## One HTTP call (`relstream serve`)", "", "```console", f"$ {s.curl.command}",
               s.curl.body.strip(), "```", f"HTTP status {s.curl.status}.", ""]
    (out / "summary.json").write_text(json.dumps(s.to_dict(), indent=1, default=_json_default))
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
