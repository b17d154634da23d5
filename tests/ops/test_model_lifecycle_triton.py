"""Deploy / canary / promote / rollback / refresh-embeddings against the real Triton of the stack.

Two versions of the untrained export (different seeds, so different scores) are loaded side by
side as per-version Triton models; both must answer, the routing split must send each entity to
one of them, and each refusal of the safety checks must leave the serving state untouched.
"""
from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest

from offline.embeddings import write_embeddings_parquet
from offline.export import export_untrained
from relstream import lifecycle as lc
from relstream.model_checks import DeployRefused, synthetic_requests
from relstream.model_ops import ModelOps
from relstream.triton_control import TritonControl
from schemas.plan_loading import builtin_plan, parse_plan

DAY = 86_400 * 10**9
NOW = 1_790_000_000 * 10**9


@pytest.fixture(scope="module")
def plan():
    return builtin_plan("fraud")


def embeddings(path, plan, snapshot_ns, n=20, seed=0):
    rng = np.random.default_rng(seed)
    types = [t for t in dict.fromkeys(plan.embedding_entity_types) for _ in range(n)]
    ids = [i for _ in dict.fromkeys(plan.embedding_entity_types) for i in range(n)]
    write_embeddings_parquet(path, types, ids, [snapshot_ns] * len(ids), rng.normal(size=(len(ids), 16)))
    return path


@pytest.fixture
def ops(stack, tmp_path):
    """A ModelOps on a fresh model name in the session stack's repository; unloads at the end."""
    model = f"ops_{uuid.uuid4().hex[:8]}"
    triton = TritonControl(stack.triton_grpc_url)
    o = ModelOps(stack.model_repository, model, triton, clock=lambda: NOW, sleep=lambda s: None,
                 drain_s=0.0, warmup_requests=8, triton_warmup=2)
    yield o
    o.unload_versions(keep=())
    triton.close()


def export(plan, o, tmp_path, seed, snapshot=NOW - DAY, **kw):
    emb = embeddings(tmp_path / f"emb{seed}.parquet", plan, snapshot, seed=seed)
    return export_untrained(plan, o.repository, o.model, embeddings=emb, seed=seed, **kw)


def settled_successes(o, version, quiet_s=0.3, timeout_s=10.0):
    """Triton counts a request after it has answered; wait until the counter stops moving."""
    deadline = time.monotonic() + timeout_s
    last = o.triton.stats(o.model, [version])[version]["success"]
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = o.triton.stats(o.model, [version])[version]["success"]
        if now == last:
            return now
        last = now
    raise AssertionError(f"version {version}'s success counter still moving after {timeout_s} s")


def score_of(o, plan, version, tensors):
    outs, served = o.triton.infer(plan, o.model, version, tensors)
    assert served == str(version)
    return float(outs["score"][0, 0])


def test_deploy_canary_promote_rollback(plan, ops, tmp_path):
    export(plan, ops, tmp_path, seed=1)
    export(plan, ops, tmp_path, seed=2)

    r = ops.deploy(1)
    assert r["split"] == {1: 100.0} and r["smoke_requests"] == 4 and r["warmup_requests"] == 8
    assert ops.triton.ready_versions(ops.model) == {1: "READY"}

    r = ops.deploy(2, canary_percent=30)
    assert r["split"] == {1: 70.0, 2: 30.0}
    assert ops.triton.ready_versions(ops.model) == {1: "READY", 2: "READY"}

    # both versions answer, differently (different weights), each reporting its own version
    req = synthetic_requests(plan, 1, NOW, seed=7)[0]
    s1, s2 = score_of(ops, plan, 1, req), score_of(ops, plan, 2, req)
    assert np.isfinite([s1, s2]).all() and s1 != s2

    # the scorer's view: the routing file decides per entity, stable, ~30 % canary
    state = lc.load_routing(ops.routing_path)
    targets = [lc.route_target(e, state) for e in range(2000)]
    assert {t[0] for t in targets} == {lc.triton_model_name(ops.model, 1), lc.triton_model_name(ops.model, 2)}
    share = sum(t[1] == 2 for t in targets) / len(targets)
    assert 0.25 < share < 0.35
    entity = next(e for e in range(2000) if lc.route(e, state) == 2)
    assert score_of(ops, plan, lc.route(entity, state), req) == s2

    # ramp the same canary: no reload, same instance
    before = settled_successes(ops, 2)
    r = ops.deploy(2, canary_percent=50)
    assert r["action"] == "ramp" and r["split"] == {1: 50.0, 2: 50.0}
    assert settled_successes(ops, 2) == before

    status = ops.status()
    rows = {row["version"]: row for row in status["versions"]}
    assert rows[1]["role"] == "primary" and rows[2]["role"] == "canary"
    assert rows[2]["traffic_percent"] == 50.0 and rows[2]["triton"] == "READY"
    assert rows[2]["triton_stats"]["success"] >= 4 + 8  # smoke + warm-up went to the canary
    assert rows[1]["fingerprint"] == plan.fingerprint()
    assert status["not_ready_but_routed"] == []

    r = ops.promote()
    assert r["primary"] == 2 and r["unloaded"] == [1]
    assert ops.triton.ready_versions(ops.model).get(1) != "READY"
    assert (ops.repository / lc.triton_model_name(ops.model, 1)).is_dir()  # kept for rollback

    r = ops.rollback()  # back to 1: re-loaded, smoke-tested and warmed before traffic
    assert r["primary"] == 1 and r["unloaded"] == [2] and r["warmup_requests"] == 8
    assert ops.triton.ready_versions(ops.model).get(1) == "READY"
    assert score_of(ops, plan, 1, req) == s1
    final = lc.load_routing(ops.routing_path)
    assert (final.primary, final.canary, final.previous) == (1, None, None)
    assert [h["action"] for h in final.history] == ["deploy", "deploy", "ramp", "promote", "rollback"]


def test_refusals_leave_state_untouched(plan, ops, tmp_path):
    export(plan, ops, tmp_path, seed=1)
    ops.deploy(1)
    baseline = ops.routing_path.read_text()

    # (1) graph-model version skew: a bundle trained for a plan with longer windows
    raw = plan.to_dict()
    raw["distillation"]["real_time_interactions"] = {k: 16 for k in plan.hop_keys}
    skew_dir = export(parse_plan(raw), ops, tmp_path, seed=3)
    with pytest.raises(DeployRefused, match="check 'contract'") as err:
        ops.deploy(int(skew_dir.name), canary_percent=10)
    assert err.value.check == "contract"
    # the export rewrote the shared config.pbtxt for the skewed plan; put the contract's back
    export(plan, ops, tmp_path, seed=4)

    # (2) embeddings older than max_embedding_offset (14 days)
    stale = export(plan, ops, tmp_path, seed=5, snapshot=NOW - 15 * DAY)
    with pytest.raises(DeployRefused, match="check 'embeddings-freshness'.*'customers'"):
        ops.deploy(int(stale.name), canary_percent=10)

    # (3) a bundle that loads but answers NaN fails the smoke inference and is unloaded again
    broken = export(plan, ops, tmp_path, seed=6)
    model_py = broken / "model.py"
    source = model_py.read_text()
    answer = "pb_utils.Tensor(out.name, outputs[out.name])"
    assert answer in source  # the exported model.py answers every output of the plan this way
    model_py.write_text(source.replace(
        answer, 'pb_utils.Tensor(out.name, outputs[out.name] * (float("nan") if out.name == "score" else 1))'))
    with pytest.raises(DeployRefused, match="check 'smoke-inference'.*non-finite"):
        ops.deploy(int(broken.name), canary_percent=10)
    assert ops.triton.ready_versions(ops.model).get(int(broken.name)) != "READY"

    # (4) a transition that is not allowed is refused before anything is loaded
    with pytest.raises(lc.LifecycleError, match="already the primary"):
        ops.deploy(1, canary_percent=10)

    assert ops.routing_path.read_text() == baseline
    assert {v for v, s in ops.triton.ready_versions(ops.model).items() if s == "READY"} == {1}


def test_refresh_embeddings_rolls_out_as_canary(plan, ops, tmp_path):
    v1 = export(plan, ops, tmp_path, seed=1, snapshot=NOW - 13 * DAY)
    ops.deploy(1)
    newer = embeddings(tmp_path / "newer.parquet", plan, NOW - DAY // 2, seed=9)
    r = ops.refresh_embeddings(1, newer)
    v2 = ops.bundle(r["version"]).dir
    assert r["version"] == 2 and r["next"].endswith("deploy 2 --canary 10")
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["derived_from"] == 1 and manifest["version"] == 2
    assert manifest["embeddings_newest_snapshot"] == {"customers": NOW - DAY // 2, "terminals": NOW - DAY // 2}
    assert (v2 / "model.pt").read_bytes() == (v1 / "model.pt").read_bytes()  # same weights
    assert json.loads((v1 / "manifest.json").read_text()).get("derived_from") is None  # source untouched

    ops.deploy(2, canary_percent=10)
    state = lc.load_routing(ops.routing_path)
    assert state.versions[2].source == "refresh-embeddings from 1"
    assert state.versions[2].embeddings_newest_ns == NOW - DAY // 2
    # entity 3 has an embedding in both; snapshot of v1 is 13 d old (admissible), v2's 12 h old
    req = synthetic_requests(plan, 1, NOW, seed=11)[0]
    for key in plan.embedding_keys:
        req[f"{plan.fact_table}.{key.column}"][:] = 3
    outs1, _ = ops.triton.infer(plan, ops.model, 1, req)
    outs2, _ = ops.triton.infer(plan, ops.model, 2, req)
    assert outs1["cold_start"].tolist() == outs2["cold_start"].tolist() == [[0, 0]]
    assert float(outs1["score"][0, 0]) != float(outs2["score"][0, 0])  # new vectors, new score

    bad = tmp_path / "bad.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"entity_type": ["customers"], "entity_id": [1]}), bad)
    from relstream.triton_control import ModelOpsError
    with pytest.raises(ModelOpsError, match="column 'snapshot_time' missing"):
        ops.refresh_embeddings(1, bad)


def test_cli_deploy_status_rollback(plan, stack, tmp_path, capsys):
    import time

    from relstream.cli import main
    from schemas.plan_loading import PLANS_DIR

    model = f"ops_cli_{uuid.uuid4().hex[:6]}"
    emb = embeddings(tmp_path / "emb.parquet", plan, time.time_ns() - DAY)
    for seed in (1, 2):
        export_untrained(plan, stack.model_repository, model, embeddings=emb, seed=seed)
    common = ["--model", model, "--model-repository", str(stack.model_repository),
              "--triton-grpc-url", stack.triton_grpc_url, "--plan", str(PLANS_DIR / "fraud.yaml"),
              "--warmup", "4", "--drain-s", "0"]
    try:
        assert main(["model", "deploy", "1", *common]) == 0
        assert main(["model", "deploy", "2", "--canary", "10", *common]) == 0
        out = capsys.readouterr().out
        assert "traffic: v1: 90%, v2: 10%" in out
        assert main(["model", "status", "--json", *common]) == 0
        status = json.loads(capsys.readouterr().out)
        assert [(r["version"], r["role"], r["traffic_percent"], r["triton"]) for r in status["versions"]] == \
            [(1, "primary", 90.0, "READY"), (2, "canary", 10.0, "READY")]
        assert main(["model", "status", *common]) == 0
        table = capsys.readouterr().out
        assert "canary" in table and "primary" in table
        # a refused step exits 1 with one line naming the rule, no traceback
        assert main(["model", "deploy", "3", "--canary", "10", *common]) == 1
        assert "version 3 of model" in capsys.readouterr().err
        assert main(["model", "rollback", *common]) == 0
        assert "traffic: v1: 100%" in capsys.readouterr().out
    finally:
        ModelOps(stack.model_repository, model, TritonControl(stack.triton_grpc_url)).unload_versions(keep=())


def test_sync_after_triton_restart(plan, stack_factory, tmp_path):
    """A restarted Triton (explicit control) serves nothing; `sync` restores the routed versions."""
    st = stack_factory(components=("triton",))
    triton = TritonControl(st.triton_grpc_url)
    ops = ModelOps(st.model_repository, "fraud", triton, clock=lambda: NOW, sleep=lambda s: None,
                   drain_s=0.0, warmup_requests=2, triton_warmup=1)
    export(plan, ops, tmp_path, seed=1)
    export(plan, ops, tmp_path, seed=2)
    ops.deploy(1)
    ops.deploy(2, canary_percent=20)
    req = synthetic_requests(plan, 1, NOW, seed=3)[0]
    scores = {v: score_of(ops, plan, v, req) for v in (1, 2)}

    st.stop_component("triton")
    st.start_component("triton")
    assert ops.status()["not_ready_but_routed"] == [1, 2]
    r = ops.sync()
    assert r["loaded"] == [1, 2] and r["split"] == {1: 80.0, 2: 20.0}
    assert ops.status()["not_ready_but_routed"] == []
    assert {v: score_of(ops, plan, v, req) for v in (1, 2)} == scores  # same versions, same answers
    assert ops.sync()["loaded"] == []  # idempotent
    triton.close()
