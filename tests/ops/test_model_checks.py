"""Deploy safety checks and config rewriting as pure functions (no servers)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from offline.embeddings import write_embeddings_parquet
from offline.export import render_config
from relstream import model_bundles, model_checks, model_metrics, model_ops, triton_control
from relstream.model_checks import DeployRefused
from schemas.plan_loading import builtin_plan, parse_plan

DAY = 86_400 * 10**9
NOW = 1_790_000_000 * 10**9


@pytest.fixture(scope="module")
def plan():
    return builtin_plan("fraud")


def skewed(plan, **dist_changes):
    raw = plan.to_dict()
    raw["distillation"].update(dist_changes)
    return parse_plan(raw)


def test_contract_accepts_same_plan_and_refuses_skew(plan):
    model_checks.check_contract(plan, plan, {"plan_fingerprint": plan.fingerprint()})
    longer = skewed(plan, real_time_interactions={k: 64 for k in plan.hop_keys})
    with pytest.raises(DeployRefused, match="check 'contract'.*fingerprint") as err:
        model_checks.check_contract(plan, longer, {})
    assert err.value.check == "contract"
    with pytest.raises(DeployRefused, match="manifest.json plan_fingerprint"):
        model_checks.check_contract(plan, plan, {"plan_fingerprint": "0000"})


def test_tensor_schema_matches_rendered_config(plan):
    sig = model_bundles.config_signature(model_bundles.parse_model_config(render_config(plan, "m")))
    model_checks.check_tensor_schema(plan, sig)
    model_checks.check_tensor_schema(plan, sig, running_signature=sig)


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace("TYPE_FP32\n    dims: [ 1 ]\n  }", "TYPE_FP64\n    dims: [ 1 ]\n  }", 1), "tx_amount"),
    (lambda t: t.replace('name: "anchor_time"', 'name: "anchor_ts"'), "lacks input 'anchor_time'"),
    (lambda t: t.replace('name: "score"', 'name: "prob"'), "lacks output 'score'"),
    (lambda t: t.replace("dims: [ -1, 1 ]", "dims: [ 32, 1 ]", 1), "dims"),
    (lambda t: "name: {{{", "does not parse"),
])
def test_tensor_schema_refusals_name_the_tensor(plan, edit, match):
    text = edit(render_config(plan, "m"))
    with pytest.raises(DeployRefused, match=match) as err:
        model_checks.check_tensor_schema(plan, model_bundles.config_signature(model_bundles.parse_model_config(text)))
    assert err.value.check == "tensor-schema"


def test_tensor_schema_refuses_change_against_running_config(plan):
    sig = model_bundles.config_signature(model_bundles.parse_model_config(render_config(plan, "m")))
    running = {"inputs": dict(sig["inputs"]), "outputs": {**sig["outputs"], "extra": ("FP32", (1,))}}
    with pytest.raises(DeployRefused, match="differs from the config Triton is serving.*extra"):
        model_checks.check_tensor_schema(plan, sig, running_signature=running)


def test_json_and_text_signatures_agree(plan):
    from google.protobuf import json_format
    cfg = model_bundles.parse_model_config(render_config(plan, "m"))
    as_json = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    assert model_bundles.json_config_signature(as_json) == model_bundles.config_signature(cfg)


def _emb(path, snaps_by_type):
    types, ids, snaps = [], [], []
    for etype, snap in snaps_by_type.items():
        for i in range(3):
            types.append(etype)
            ids.append(i)
            snaps.append(snap - i)
    write_embeddings_parquet(path, types, ids, snaps, np.ones((len(ids), 4), np.float32))
    return path


def test_embeddings_freshness(plan, tmp_path):
    fresh = _emb(tmp_path / "fresh.parquet", {"customers": NOW, "terminals": NOW - 2 * DAY})
    newest = model_checks.newest_snapshots(fresh)
    assert newest == {"customers": NOW, "terminals": NOW - 2 * DAY}
    model_checks.check_embeddings_fresh(plan, newest, NOW)
    model_checks.check_embeddings_fresh(plan, newest, NOW + 12 * DAY)  # terminals 14 d old: still admissible
    # 14 days max offset: at NOW + 13 d the terminals snapshot is 15 days old, customers' 13
    with pytest.raises(DeployRefused, match="embeddings-freshness.*'terminals' snapshot is 360.0 h old"):
        model_checks.check_embeddings_fresh(plan, newest, NOW + 13 * DAY)
    only_customers = model_checks.newest_snapshots(_emb(tmp_path / "c.parquet", {"customers": NOW}))
    with pytest.raises(DeployRefused, match="no snapshot for entity type 'terminals'"):
        model_checks.check_embeddings_fresh(plan, only_customers, NOW)
    with pytest.raises(DeployRefused, match="embeddings-freshness.*not found"):
        model_checks.newest_snapshots(tmp_path / "missing.parquet")


def test_smoke_output_checks():
    ok = {"score": np.array([[0.3]], np.float32)}
    model_checks.check_smoke_outputs(ok, "2", 2, batch=1)
    with pytest.raises(DeployRefused, match="asked version 2"):
        model_checks.check_smoke_outputs(ok, "1", 2, batch=1)
    with pytest.raises(DeployRefused, match="non-finite"):
        model_checks.check_smoke_outputs({"score": np.array([[math.nan]], np.float32)}, "2", 2, batch=1)
    with pytest.raises(DeployRefused, match="shape"):
        model_checks.check_smoke_outputs({"score": np.zeros((2, 1), np.float32)}, "2", 2, batch=1)
    with pytest.raises(DeployRefused, match="no 'score'"):
        model_checks.check_smoke_outputs({}, "2", 2, batch=1)


def test_slot_config_pins_one_version_and_adds_warmup(plan):
    text = model_bundles.slot_config(render_config(plan, "m"), "m__v3", 3, warmup_count=5)
    cfg = model_bundles.parse_model_config(text)
    assert cfg.name == "m__v3"
    assert list(cfg.version_policy.specific.versions) == [3]
    assert text.startswith("# Generated by")  # provenance comment kept
    assert [w.name for w in cfg.model_warmup] == [f"relstream_warmup_len{n}" for n in (0, 4, 32)]
    full = cfg.model_warmup[2]
    assert full.count == 5 and set(full.inputs) == set(plan.tensor_names)
    rti = next(t for t in plan.tensors if t.kind == "rti")
    assert list(full.inputs[rti.name].dims) == [32, 1]
    assert list(full.inputs["anchor_time"].dims) == [1]
    assert model_bundles.config_signature(cfg) == model_bundles.config_signature(model_bundles.parse_model_config(render_config(plan, "m")))


def test_synthetic_requests_are_valid_plan_requests(plan):
    from schemas.tensors import check_tensors
    reqs = model_checks.synthetic_requests(plan, 8, NOW)
    lengths = set()
    for r in reqs:
        check_tensors(plan, r)
        assert int(r["anchor_time"][0, 0]) == NOW
        for hop in plan.hops:
            t = r[f"{hop.key.key}:{plan.interaction_table(hop).time_column}"].reshape(-1)
            lo, hi = plan.rti_bounds(NOW)
            assert ((t >= lo) & (t < hi)).all() and (np.diff(t) >= 0).all()
            lengths.add(len(t))
    assert {0, 1, 32} <= lengths


def test_version_histograms_and_quantiles():
    text = "\n".join([
        "# TYPE relstream_scorer_score histogram",
        *[f'relstream_scorer_score_bucket{{path="kafka",model_version="{v}",le="{le}"}} {c}'
          for v, rows in {"1": [(0.25, 10), (0.5, 50), (1.0, 100), ("+Inf", 100)],
                          "2": [(0.25, 0), (0.5, 2), (1.0, 10), ("+Inf", 10)]}.items() for le, c in rows],
        'relstream_scorer_score_count{path="kafka",model_version="1"} 100',
        'relstream_scorer_score_sum{path="kafka",model_version="1"} 45',
        'relstream_scorer_score_count{path="kafka",model_version="2"} 10',
        'relstream_scorer_score_sum{path="kafka",model_version="2"} 7',
    ]) + "\n"
    h = model_metrics.parse_version_histograms(text)
    assert h["1"]["count"] == 100 and h["1"]["mean"] == pytest.approx(0.45)
    assert h["2"]["mean"] == pytest.approx(0.7)
    assert model_metrics.histogram_quantile(0.5, h["1"]["buckets"]) == pytest.approx(0.5)
    assert model_metrics.histogram_quantile(0.5, h["2"]["buckets"]) == pytest.approx(0.5 + 0.5 * 3 / 8)


def test_one_operation_per_model_at_a_time(tmp_path):
    import fcntl

    ops = model_ops.ModelOps(tmp_path, "m", triton_control.TritonControl("127.0.0.1:1"))
    lock = tmp_path / "m" / "routing.json.lock"
    lock.parent.mkdir()
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(triton_control.ModelOpsError, match="another `relstream model` operation"):
            ops.promote()
    with pytest.raises(triton_control.ModelOpsError, match="version 1 of model 'm' not found"):
        ops.deploy(1)  # lock free again: the operation itself runs (and finds no bundle)
    ops.triton.close()
