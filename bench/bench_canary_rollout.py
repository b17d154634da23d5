"""What loading a canary does to the version already serving, for three ways of loading it.

A client sends requests to version 1 of the distilled model (untrained export, the fraud plan)
in a closed loop while a second version is loaded; latency of every request is recorded with
its start time. Scenarios, all in one run on a private Triton:

* ``baseline``            nothing is loaded meanwhile (the reference);
* ``per_version_grpc``    the control plane's way: version 2 as its own Triton model
                          ``<model>__v2``, loaded over gRPC;
* ``per_version_http``    the same, loaded over HTTP;
* ``version_policy_grpc`` one Triton model, ``version_policy`` rewritten from [1] to [1, 2], loaded
                          (re-loaded) over gRPC.

The client speaks HTTP (JSON, as `/v1/infer` users and curl do) or gRPC (as the scorers do):
``--client http|grpc``. Reported per scenario: requests, errors, p50/p99/max latency during the
load window and the ratio of p99 and max to the baseline's. Prints JSON; writes
bench/results/canary_rollout.json and .png (latency over time, load window shaded).

    python3 bench/bench_canary_rollout.py [--client http] [--seconds-before 1.0]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"


class Hammer:
    """Closed-loop client on one model/version; records (start offset s, latency ms, ok)."""

    def __init__(self, plan, stack, model: str, version: int, client: str, requests):
        self.plan, self.stack, self.model, self.version = plan, stack, model, version
        self.client, self.requests = client, requests
        self.samples: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        if self.client == "http":
            import httpx

            from schemas.tensors import to_triton_json
            bodies = [to_triton_json(self.plan, r) for r in self.requests]
            c = httpx.Client(base_url=self.stack.triton_http_url, timeout=120)
            url = f"/v2/models/{self.model}/versions/{self.version}/infer"

            def call(i):
                r = c.post(url, json=bodies[i % len(bodies)])
                return r.status_code == 200
        else:
            import tritonclient.grpc as tg
            c = tg.InferenceServerClient(self.stack.triton_grpc_url)

            def call(i):
                req = self.requests[i % len(self.requests)]
                inputs = []
                for spec in self.plan.tensors:
                    x = tg.InferInput(spec.name, list(req[spec.name].shape), spec.triton_dtype)
                    x.set_data_from_numpy(req[spec.name])
                    inputs.append(x)
                try:
                    c.infer(self.model, inputs, model_version=str(self.version), client_timeout=120)
                    return True
                except Exception:  # noqa: BLE001 - an error is a data point here
                    return False
        i = 0
        while not self._stop.is_set():
            t = time.perf_counter()
            ok = call(i)
            self.samples.append((t - self.t0, (time.perf_counter() - t) * 1e3, ok))
            i += 1
        c.close()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(180)


def window_stats(samples, lo: float, hi: float) -> dict:
    inside = [(t, ms, ok) for t, ms, ok in samples if lo <= t <= hi or (t < lo and t + ms / 1e3 > lo)]
    lat = np.array([ms for _, ms, ok in inside if ok]) if inside else np.zeros(0)
    return {"requests": len(inside), "errors": sum(1 for *_, ok in inside if not ok),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "max_ms": round(float(lat.max()), 2) if len(lat) else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", choices=["http", "grpc"], default="http")
    ap.add_argument("--seconds-before", type=float, default=1.0)
    ap.add_argument("--baseline-seconds", type=float, default=4.0)
    args = ap.parse_args(argv)

    import tritonclient.grpc as tg
    import tritonclient.http as th

    from offline.export import export_untrained
    from relstream import lifecycle as lc
    from relstream.model_bundles import link_tree, slot_config
    from relstream.model_checks import synthetic_requests
    from relstream.model_ops import ModelOps
    from relstream.triton_control import TritonControl
    from relstream.stack import LocalStack
    from schemas.plan_loading import builtin_plan

    plan = builtin_plan("fraud")
    now = time.time_ns()
    requests = synthetic_requests(plan, 8, now, seed=3)
    tmp = Path(tempfile.mkdtemp(prefix="bench-canary-"))
    stack = LocalStack(tmp / "run", components=("triton",), stop_with_owner=True)
    results: dict = {"client": args.client, "scenarios": {}}
    series: dict = {}
    try:
        repo = stack.model_repository
        for seed in (1, 2):
            export_untrained(plan, repo, "bm", seed=seed)
        stack.up()
        grpc = tg.InferenceServerClient(stack.triton_grpc_url)
        http = th.InferenceServerClient(stack.triton_http_url.split("://")[1], network_timeout=300,
                                        connection_timeout=300)
        ops = ModelOps(repo, "bm", TritonControl(stack.triton_grpc_url), triton_warmup=0)
        ops.materialize(1)
        ops.materialize(2)
        grpc.load_model(lc.triton_model_name("bm", 1))

        def run(name, model, version, action):
            h = Hammer(plan, stack, model, version, args.client, requests).start()
            time.sleep(args.seconds_before)
            lo = time.perf_counter() - h.t0
            if action is not None:
                action()
            else:
                time.sleep(args.baseline_seconds)
            hi = time.perf_counter() - h.t0
            time.sleep(0.5)
            h.stop()
            stats = window_stats(h.samples, lo, hi)
            stats["load_s"] = round(hi - lo, 2)
            results["scenarios"][name] = stats
            series[name] = (h.samples, lo, hi)
            print(name, stats, flush=True)

        slot1 = lc.triton_model_name("bm", 1)
        slot2 = lc.triton_model_name("bm", 2)
        run("baseline", slot1, 1, None)
        run("per_version_grpc", slot1, 1, lambda: grpc.load_model(slot2))
        grpc.unload_model(slot2)
        time.sleep(2)
        run("per_version_http", slot1, 1, lambda: http.load_model(slot2))
        grpc.unload_model(slot2)
        grpc.unload_model(slot1)

        # one Triton model, both versions: policy [1] -> [1, 2]
        single = repo / "bm_single"
        single.mkdir()
        for v in (1, 2):
            link_tree(repo / "bm" / str(v), single / str(v))
        base_cfg = (repo / "bm" / "config.pbtxt").read_text()
        (single / "config.pbtxt").write_text(slot_config(base_cfg, "bm_single", 1))
        grpc.load_model("bm_single")

        def v1_successes() -> int:
            raw = grpc.get_inference_statistics("bm_single", "1", as_json=True)
            return int(raw["model_stats"][0]["inference_stats"]["success"].get("count", 0))

        def reload_with_both():
            results["version_policy_v1_successes_before"] = v1_successes()
            text = slot_config(base_cfg, "bm_single", 1).replace("versions: 1", "versions: 1\n    versions: 2")
            (single / "config.pbtxt").write_text(text)
            grpc.load_model("bm_single")
            # fewer successes after than before = version 1 itself was re-loaded (statistics restart)
            results["version_policy_v1_successes_after"] = v1_successes()
        run("version_policy_grpc", "bm_single", 1, reload_with_both)
        states = {(m["name"], m.get("version")): m.get("state")
                  for m in grpc.get_model_repository_index(as_json=True).get("models", [])}
        results["version_policy_states_after"] = {f"{k[0]}:{k[1]}": v for k, v in states.items()
                                                  if k[0] == "bm_single"}
        grpc.close()
        http.close()
        ops.triton.close()
    finally:
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)

    base = results["scenarios"]["baseline"]
    for name, s in results["scenarios"].items():
        if s["p99_ms"] and base["p99_ms"]:
            s["p99_vs_baseline"] = round(s["p99_ms"] / base["p99_ms"], 2)
            s["max_vs_baseline"] = round(s["max_ms"] / base["max_ms"], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.client == "http" else "_grpc"
    (RESULTS / f"canary_rollout{suffix}.json").write_text(json.dumps(results, indent=2))
    plot(series, RESULTS / f"canary_rollout{suffix}.png", args.client)
    print(json.dumps(results, indent=2))
    return results


def plot(series, path: Path, client: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(9, 2.2 * len(series)), sharey=False)
    for ax, (name, (samples, lo, hi)) in zip(np.atleast_1d(axes), series.items()):
        t = [s[0] for s in samples]
        ms = [s[1] for s in samples]
        ax.axvspan(lo, hi, color="orange", alpha=0.2, label="load window")
        ax.scatter(t, ms, s=3)
        ax.set_yscale("log")
        ax.set_ylabel("latency ms")
        what = "nothing loading" if name == "baseline" else "version 2 loading"
        ax.set_title(f"{name} (client {client}): requests to version 1, {what} in the shaded window", fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
