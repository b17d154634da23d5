"""CPU cost of the exported model inside Triton (Python backend), per batch and per event.

Starts Triton alone (``relstream.stack.LocalStack``), exports an untrained model of the fraud plan
(``offline.export.export_untrained``: the real model code), and sends pre-stacked requests of a fixed
batch size (the seed's window lengths 4/8/16/32, round robin) one after another over gRPC, as the
Kafka scorer does. For each batch size it reports, from CPU-time counters (load-independent):

* ``triton_ms_per_batch``: the Triton server process and its backend stub (user+system CPU),
* ``in_process_ms_per_batch``: the same ``split_scores`` (features + forward) in this process,
* ``ipc_and_backend_ms_per_batch``: the difference (gRPC, the Python backend's shared-memory IPC,
  ``execute()``'s tensor handling),
* with ``--profile``: the top functions of a cProfile of ``split_scores`` at the largest batch.

    python3 bench/bench_triton_model.py --batches 1,8,32,64 --calls 300 --out bench/results/triton_model
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve_load import cpu_seconds  # noqa: E402
from bench.payloads import LENGTHS  # noqa: E402
from schemas.plan_loading import builtin_plan  # noqa: E402
from schemas.tensors import stack_requests  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32,64", help="batch sizes (comma separated)")
    ap.add_argument("--calls", type=int, default=300, help="Triton calls per batch size")
    ap.add_argument("--profile", action="store_true", help="cProfile split_scores at the largest batch")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "triton_model")
    args = ap.parse_args(argv)

    import torch
    import tritonclient.grpc as grpcclient

    from offline.export import export_untrained
    from offline.export.bundle import load_bundle, split_scores
    from offline.export.model_repository import synthetic_requests
    from relstream.stack import LocalStack
    from scorer.triton import make_inputs

    torch.set_num_threads(1)
    plan = builtin_plan("fraud")
    tmp = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    stack = LocalStack(tmp / "stack", tmp / "models", components=("triton",), stop_with_owner=True)
    stack.up()
    result: dict = {"load_avg_start": os.getloadavg(), "calls": args.calls, "lengths": list(LENGTHS), "batches": []}
    try:
        vdir = export_untrained(plan, stack.model_repository, model_name="relstream")
        client = grpcclient.InferenceServerClient(stack.triton_grpc_url)
        client.load_model("relstream")
        bundle = load_bundle(vdir)
        requests = synthetic_requests(plan, n=128, seq_lens=LENGTHS)
        outputs = [grpcclient.InferRequestedOutput(o.name) for o in plan.outputs]
        triton_pids = {"triton": stack.pids()["triton"]}
        for b in [int(x) for x in args.batches.split(",")]:
            stacked = stack_requests(plan, [requests[i % len(requests)] for i in range(b)])
            inputs = make_inputs(plan, stacked, grpcclient)
            for _ in range(20):  # warm-up
                client.infer("relstream", inputs, outputs=outputs)
            load_before = os.getloadavg()
            before = cpu_seconds(triton_pids)["triton"]
            t0 = time.perf_counter()
            for _ in range(args.calls):
                client.infer("relstream", inputs, outputs=outputs)
            wall = time.perf_counter() - t0
            triton_ms = 1e3 * (cpu_seconds(triton_pids)["triton"] - before) / args.calls
            for _ in range(20):
                split_scores(bundle, [stacked])
            c0 = time.process_time()
            for _ in range(args.calls):
                split_scores(bundle, [stacked])
            in_process_ms = 1e3 * (time.process_time() - c0) / args.calls
            row = {"batch": b, "triton_ms_per_batch": triton_ms, "triton_ms_per_event": triton_ms / b,
                   "in_process_ms_per_batch": in_process_ms,
                   "ipc_and_backend_ms_per_batch": triton_ms - in_process_ms,
                   "wall_ms_per_call": 1e3 * wall / args.calls,
                   "load_avg": {"before": load_before, "after": os.getloadavg()}}
            print(f"batch {b:>3}: Triton {triton_ms:.2f} ms CPU/batch ({triton_ms / b:.3f}/event), in process "
                  f"{in_process_ms:.2f}, IPC + backend {triton_ms - in_process_ms:.2f}", file=sys.stderr)
            result["batches"].append(row)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.calls):
                split_scores(bundle, [stacked])
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
            result["profile"] = text.getvalue()
            print(result["profile"], file=sys.stderr)
        client.close()
    finally:
        stack.down()
    result["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
