"""Export layout: config.pbtxt inputs are exactly the plan's tensors; versions; a self-contained bundle."""
import json
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from offline.export.bundle import load_bundle, split_scores
from offline.embeddings import random_embeddings, write_embeddings_parquet
from offline.export import export_untrained, render_config, synthetic_requests
from schemas.plan_loading import parse_plan

T = 1_710_000_000_000_000_000


def _parse(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_config_inputs_are_exactly_the_plan_tensors(plan):
    cfg = _parse(render_config(plan, "fraud_model", max_batch_size=128))
    assert cfg.name == "fraud_model" and cfg.backend == "python" and cfg.max_batch_size == 128
    got = [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.allow_ragged_batch) for i in cfg.input]
    want = [(t.name, f"TYPE_{t.triton_dtype}", t.dims, t.kind == "rti") for t in plan.tensors]
    assert all(t.triton_dtype != "BYTES" for t in plan.tensors)
    assert got == want
    assert [(o.name, model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output] == [
        ("score", "TYPE_FP32", [1]), ("cold_start", "TYPE_INT8", [len(plan.embedding_keys)])]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0


def test_string_columns_travel_as_bytes(plan):
    raw = plan.to_dict()
    raw["tables"]["transactions"]["columns"]["channel"] = "string"
    raw["fact_columns"].append("channel")
    for cols in raw["distillation"]["real_time_columns"].values():
        cols.append("channel")
    p = parse_plan(raw)
    cfg = _parse(render_config(p))
    types = {i.name: model_config_pb2.DataType.Name(i.data_type) for i in cfg.input}
    assert types["transactions.channel"] == "TYPE_STRING"  # Triton's config name for BYTES
    hop = p.hop_keys[0]
    assert types[f"{hop}:channel"] == "TYPE_STRING"


def test_export_layout_versions_and_manifest(plan, tmp_path):
    v1 = export_untrained(plan, tmp_path / "repo", model_name="m", emb_dim=8)
    v2 = export_untrained(plan, tmp_path / "repo", model_name="m", emb_dim=8, seed=1)
    assert (v1.name, v2.name) == ("1", "2") and v1.parent == v2.parent
    names = {p.name for p in v2.iterdir()}
    assert {"model.py", "model.pt", "embeddings.parquet", "plan.yaml", "manifest.json", "vendor"} <= names
    assert not [p for p in v2.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["plan_fingerprint"] == plan.fingerprint()
    assert manifest["version"] == 2 and manifest["trained"] is False
    assert [t["name"] for t in manifest["tensors"]] == list(plan.tensor_names)
    assert manifest["git_commit"]
    _parse((v2.parent / "config.pbtxt").read_text())


def test_bundle_runs_from_its_vendored_code_alone(plan, tmp_path):
    """Isolated interpreter (-I: no PYTHONPATH, no cwd) with only vendor/ on sys.path, as in Triton."""
    types, ids, snaps, vecs = random_embeddings(plan, {"customers": np.arange(50), "terminals": np.arange(50)},
                                                [T - 2 * 86_400 * 10**9], dim=8)
    write_embeddings_parquet(tmp_path / "emb.parquet", types, ids, snaps, vecs)
    vdir = export_untrained(plan, tmp_path / "repo", embeddings=tmp_path / "emb.parquet")
    reqs = synthetic_requests(plan, n=4, anchor_time=T)
    expected = np.concatenate([o["score"].reshape(-1) for o in split_scores(load_bundle(vdir), reqs)])
    np.savez(tmp_path / "reqs.npz", **{f"{i}|{k}": v for i, r in enumerate(reqs) for k, v in r.items()})
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(vdir / 'vendor')!r})
from offline.export.bundle import load_bundle, split_scores
import offline.export.bundle, schemas.plan
assert offline.export.bundle.__file__.startswith({str(vdir)!r}), offline.export.bundle.__file__
assert schemas.plan.__file__.startswith({str(vdir)!r}), schemas.plan.__file__
z = np.load({str(tmp_path / 'reqs.npz')!r}, allow_pickle=True)
reqs = [dict() for _ in range(4)]
for key in z.files:
    i, name = key.split('|', 1)
    reqs[int(i)][name] = z[key]
out = split_scores(load_bundle({str(vdir)!r}), reqs)
print(' '.join(repr(float(o['score'][0, 0])) for o in out))
print(out[0]['cold_start'].tolist())
"""
    res = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    np.testing.assert_allclose([float(x) for x in lines[0].split()], expected, atol=1e-6)
    assert lines[1] == "[[0, 0]]"  # customer/terminal ids < 50 have an admissible snapshot


def test_bundle_can_carry_only_recent_snapshots(plan, tmp_path):
    import pyarrow.parquet as pq

    from offline.export import export_model
    from offline.distillation.shallow_model import build_model

    day = 86_400 * 10**9
    types, ids, snaps, vecs = random_embeddings(plan, {"customers": np.arange(3)}, [T - d * day for d in range(30)], dim=4)
    write_embeddings_parquet(tmp_path / "emb.parquet", types, ids, snaps, vecs)
    vdir = export_model(plan, tmp_path / "repo", build_model(plan, 4), tmp_path / "emb.parquet",
                        embeddings_last_days=14)
    kept = pq.read_table(vdir / "embeddings.parquet").column("snapshot_time").to_numpy()
    assert kept.min() == T - 14 * day and kept.max() == T and len(kept) == 3 * 15
