"""Deploy safety checks and config rewriting as pure functions (no servers)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from offline.embeddings import write_embeddings_parquet
from offline.export import render_config
from relstream import model_ops as mo
from relstream.model_ops import DeployRefused
from schemas.plan import builtin_plan, parse_plan

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
    mo.check_contract(plan, plan, {"plan_fingerprint": plan.fingerprint()})
    longer = skewed(plan, real_time_interactions={k: 64 for k in plan.hop_keys})
    with pytest.raises(DeployRefused, match="check 'contract'.*fingerprint") as err:
        mo.check_contract(plan, longer, {})
    assert err.value.check == "contract"
    with pytest.raises(DeployRefused, match="manifest.json plan_fingerprint"):
        mo.check_contract(plan, plan, {"plan_fingerprint": "0000"})


def test_tensor_schema_matches_rendered_config(plan):
    sig = mo.config_signature(mo.parse_model_config(render_config(plan, "m")))
    mo.check_tensor_schema(plan, sig)
    mo.check_tensor_schema(plan, sig, running_signature=sig)


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
        mo.check_tensor_schema(plan, mo.config_signature(mo.parse_model_config(text)))
    assert err.value.check == "tensor-schema"


def test_tensor_schema_refuses_change_against_running_config(plan):
    sig = mo.config_signature(mo.parse_model_config(render_config(plan, "m")))
    running = {"inputs": dict(sig["inputs"]), "outputs": {**sig["outputs"], "extra": ("FP32", (1,))}}
    with pytest.raises(DeployRefused, match="differs from the config Triton is serving.*extra"):
        mo.check_tensor_schema(plan, sig, running_signature=running)


def test_json_and_text_signatures_agree(plan):
    from google.protobuf import json_format
    cfg = mo.parse_model_config(render_config(plan, "m"))
    as_json = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    assert mo.json_config_signature(as_json) == mo.config_signature(cfg)


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
    newest = mo.newest_snapshots(fresh)
    assert newest == {"customers": NOW, "terminals": NOW - 2 * DAY}
    mo.check_embeddings_fresh(plan, newest, NOW)
    mo.check_embeddings_fresh(plan, newest, NOW + 12 * DAY)  # terminals 14 d old: still admissible
    # 14 days max offset: at NOW + 13 d the terminals snapshot is 15 days old, customers' 13
    with pytest.raises(DeployRefused, match="embeddings-freshness.*'terminals' snapshot is 360.0 h old"):
        mo.check_embeddings_fresh(plan, newest, NOW + 13 * DAY)
    only_customers = mo.newest_snapshots(_emb(tmp_path / "c.parquet", {"customers": NOW}))
    with pytest.raises(DeployRefused, match="no snapshot for entity type 'terminals'"):
        mo.check_embeddings_fresh(plan, only_customers, NOW)
    with pytest.raises(DeployRefused, match="embeddings-freshness.*not found"):
        mo.newest_snapshots(tmp_path / "missing.parquet")


def test_smoke_output_checks():
    ok = {"score": np.array([[0.3]], np.float32)}
    mo.check_smoke_outputs(ok, "2", 2, batch=1)
    with pytest.raises(DeployRefused, match="asked version 2"):
        mo.check_smoke_outputs(ok, "1", 2, batch=1)
    with pytest.raises(DeployRefused, match="non-finite"):
        mo.check_smoke_outputs({"score": np.array([[math.nan]], np.float32)}, "2", 2, batch=1)
    with pytest.raises(DeployRefused, match="shape"):
        mo.check_smoke_outputs({"score": np.zeros((2, 1), np.float32)}, "2", 2, batch=1)
    with pytest.raises(DeployRefused, match="no 'score'"):
        mo.check_smoke_outputs({}, "2", 2, batch=1)


def test_slot_config_pins_one_version_and_adds_warmup(plan):
    text = mo.slot_config(render_config(plan, "m"), "m__v3", 3, warmup_count=5)
    cfg = mo.parse_model_config(text)
    assert cfg.name == "m__v3"
    assert list(cfg.version_policy.specific.versions) == [3]
    assert text.startswith("# Generated by")  # provenance comment kept
    assert [w.name for w in cfg.model_warmup] == [f"relstream_warmup_len{n}" for n in (0, 4, 32)]
    full = cfg.model_warmup[2]
    assert full.count == 5 and set(full.inputs) == set(plan.tensor_names)
    rti = next(t for t in plan.tensors if t.kind == "rti")
    assert list(full.inputs[rti.name].dims) == [32, 1]
    assert list(full.inputs["anchor_time"].dims) == [1]
    assert mo.config_signature(cfg) == mo.config_signature(mo.parse_model_config(render_config(plan, "m")))


def test_synthetic_requests_are_valid_plan_requests(plan):
    from schemas.tensors import check_tensors
    reqs = mo.synthetic_requests(plan, 8, NOW)
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
    h = mo.parse_version_histograms(text)
    assert h["1"]["count"] == 100 and h["1"]["mean"] == pytest.approx(0.45)
    assert h["2"]["mean"] == pytest.approx(0.7)
    assert mo.histogram_quantile(0.5, h["1"]["buckets"]) == pytest.approx(0.5)
    assert mo.histogram_quantile(0.5, h["2"]["buckets"]) == pytest.approx(0.5 + 0.5 * 3 / 8)


def test_one_operation_per_model_at_a_time(tmp_path):
    import fcntl

    ops = mo.ModelOps(tmp_path, "m", mo.TritonControl("127.0.0.1:1"))
    lock = tmp_path / "m" / "routing.json.lock"
    lock.parent.mkdir()
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(mo.ModelOpsError, match="another `relstream model` operation"):
            ops.promote()
    with pytest.raises(mo.ModelOpsError, match="version 1 of model 'm' not found"):
        ops.deploy(1)  # lock free again: the operation itself runs (and finds no bundle)
    ops.triton.close()
