"""Deploy safety checks (each refusal is a :class:`DeployRefused` naming the check):

* ``contract``            the bundle's plan fingerprint (plan.yaml and manifest.json) equals the
                          running contract's (graph-model version skew, seed 002);
* ``tensor-schema``       config.pbtxt inputs/outputs are exactly the contract's tensors, and equal
                          the config Triton is serving now;
* ``embeddings-freshness`` every embedded entity type has a snapshot admissible for anchors at
                          ``now`` (newer than ``now - max_embedding_offset``);
* ``smoke-inference``     the loaded version answers valid requests with finite scores of the
                          right shape and reports its own version;
* warm-up                 N more requests before the version takes traffic (cold cache, seed 002).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from schemas.interactions import Interaction, Window
from schemas.plan import ServingPlan
from schemas.tensors import build_tensors

from .model_bundles import REQUIRED_OUTPUTS, DeployRefused, plan_signature

CHECKS = ("contract", "tensor-schema", "embeddings-freshness", "smoke-inference")


def check_contract(contract: ServingPlan, bundle_plan: ServingPlan, manifest: Mapping) -> None:
    want = contract.fingerprint()
    got = bundle_plan.fingerprint()
    if got != want:
        diff = sorted(set(bundle_plan.tensor_names) ^ set(contract.tensor_names))
        detail = f"; tensors only on one side: {diff}" if diff else " (same tensor names: max_len, offsets or keys differ)"
        raise DeployRefused("contract", f"bundle plan {bundle_plan.name!r} fingerprint {got} != running "
                                        f"contract {contract.name!r} {want}{detail}")
    claimed = manifest.get("plan_fingerprint")
    if claimed is not None and claimed != got:
        raise DeployRefused("contract", f"manifest.json plan_fingerprint {claimed} != plan.yaml's {got}: "
                                        "the bundle was edited after export")


def check_tensor_schema(contract: ServingPlan, bundle_signature: Mapping,
                        running_signature: Mapping | None = None) -> None:
    want = plan_signature(contract)
    got = dict(bundle_signature["inputs"])
    for name, spec in want.items():
        if name not in got:
            raise DeployRefused("tensor-schema", f"config.pbtxt lacks input {name!r} of the contract")
        if got[name] != spec:
            raise DeployRefused("tensor-schema", f"config.pbtxt input {name!r} is {got[name][0]} dims "
                                                 f"{list(got[name][1])}; the contract says {spec[0]} dims {list(spec[1])}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise DeployRefused("tensor-schema", f"config.pbtxt has inputs the contract does not send: {extra}")
    for out in REQUIRED_OUTPUTS:
        if out not in bundle_signature["outputs"]:
            raise DeployRefused("tensor-schema", f"config.pbtxt lacks output {out!r}")
    if running_signature is not None and dict(running_signature) != dict(bundle_signature):
        changed = sorted(k for part in ("inputs", "outputs")
                         for k in set(running_signature[part]) | set(bundle_signature[part])
                         if running_signature[part].get(k) != bundle_signature[part].get(k))
        raise DeployRefused("tensor-schema", f"config.pbtxt differs from the config Triton is serving "
                                             f"for the primary in {changed}; a new schema is a new model")


def newest_snapshots(path: Path) -> dict[str, int]:
    """Newest ``snapshot_time`` per ``entity_type`` in an embeddings.parquet."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["entity_type", "snapshot_time"])
    except FileNotFoundError:
        raise DeployRefused("embeddings-freshness", f"{path} not found") from None
    except (KeyError, ValueError, OSError) as exc:  # pyarrow: missing column / not parquet
        raise DeployRefused("embeddings-freshness", f"{path}: needs columns entity_type, snapshot_time ({exc})") from None
    if table.num_rows == 0:
        return {}
    grouped = table.group_by("entity_type").aggregate([("snapshot_time", "max")])
    return {str(t): int(s) for t, s in zip(grouped.column("entity_type").to_pylist(),
                                             grouped.column("snapshot_time_max").to_pylist())}


def check_embeddings_fresh(contract: ServingPlan, newest: Mapping[str, int], now_ns: int) -> None:
    lo, _hi = contract.embedding_snapshot_bounds(now_ns)
    for etype in dict.fromkeys(contract.embedding_entity_types):
        if etype not in newest:
            raise DeployRefused("embeddings-freshness", f"embeddings.parquet has no snapshot for entity type "
                                                        f"{etype!r}: every {etype} would be a cold start")
        if newest[etype] < lo:
            age_h = (now_ns - newest[etype]) / 3.6e12
            max_h = contract.max_embedding_offset.ns / 3.6e12
            raise DeployRefused("embeddings-freshness", f"newest {etype!r} snapshot is {age_h:.1f} h old, older "
                                                        f"than max_embedding_offset ({max_h:.1f} h): no anchor now "
                                                        "could use it")


def check_smoke_outputs(outputs: Mapping[str, np.ndarray], served_version: str, version: int, batch: int) -> None:
    if str(served_version) != str(version):
        raise DeployRefused("smoke-inference", f"asked version {version}, Triton answered with {served_version!r}")
    score = outputs.get("score")
    if score is None:
        raise DeployRefused("smoke-inference", "response has no 'score' output")
    if score.shape != (batch, 1):
        raise DeployRefused("smoke-inference", f"score shape {list(score.shape)}, expected [{batch}, 1]")
    if not np.isfinite(score).all():
        raise DeployRefused("smoke-inference", f"non-finite score {score.reshape(-1).tolist()}")


# ----- synthetic traffic for smoke / warm-up ---------------------------------------------------

def synthetic_requests(plan: ServingPlan, n: int, now_ns: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` valid single-row requests anchored at ``now`` with histories of varied lengths.

    Built with :func:`schemas.tensors.build_tensors` from synthetic rows, so they go through the
    same tensor code as live traffic. Lengths cycle through 0, 1, a middle value and ``max_len``
    so warm-up touches the empty-history and the full-window paths.
    """

    rng = np.random.default_rng(seed)

    def value(dtype: str, i: int):
        if dtype == "timestamp":
            return now_ns
        if dtype == "int64":
            return int(rng.integers(1, 1000))
        if dtype in ("float32", "float64"):
            return float(np.round(rng.uniform(1, 200), 2))
        return f"v{i}".encode()

    out = []
    for i in range(n):
        fact = {c: value(plan.fact.columns[c], i) for c in plan.fact_columns}
        fact[plan.fact.time_column] = now_ns
        windows = {}
        for hop in plan.hops:
            table = plan.interaction_table(hop)
            length = (0, 1, max(hop.max_len // 2, 1), hop.max_len)[i % 4]
            lo, hi = plan.rti_bounds(now_ns)
            times = np.sort(rng.integers(lo, hi, length)) if length else np.zeros(0, np.int64)
            items = [Interaction(event_id=j, event_time=int(t),
                                 values={c: (int(t) if c == table.time_column else value(table.columns[c], j))
                                         for c in hop.columns})
                     for j, t in enumerate(times)]
            windows[hop.key.key] = Window.from_interactions(plan, hop, items)
        out.append(build_tensors(plan, fact, windows, anchor_time=now_ns))
    return out
