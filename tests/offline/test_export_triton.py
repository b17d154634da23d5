"""The export checks itself on the real Triton of the local stack (HTTP via curl, gRPC, errors)."""
import json

import numpy as np
import pytest

from offline.embeddings import random_embeddings, write_embeddings_parquet
from offline.export import check_export, export_untrained, load_in_triton, synthetic_requests
from offline.export.self_check import _curl_infer
from schemas.plan_loading import parse_plan
from schemas.tensors import to_triton_json

T = 1_710_000_000_000_000_000
DAY = 86_400 * 10**9


def test_export_answers_like_offline_over_http_and_grpc(stack, plan, tmp_path):
    types, ids, snaps, vecs = random_embeddings(plan, {"customers": np.arange(0, 50, 2), "terminals": np.arange(50)},
                                                [T - 3 * DAY], dim=8)
    write_embeddings_parquet(tmp_path / "emb.parquet", types, ids, snaps, vecs)
    vdir = export_untrained(plan, stack.model_repository, model_name="relstream_check",
                            embeddings=tmp_path / "emb.parquet")
    requests = synthetic_requests(plan, n=8, anchor_time=T, seq_lens=(3, 0, 7, 32, 1))
    report = check_export(vdir, stack.triton_http_url, stack.triton_grpc_url, requests)
    assert report["ok"] and report["max_abs_diff_http"] <= 1e-5 and report["max_abs_diff_grpc"] <= 1e-5
    assert report["max_abs_diff_multi_row"] <= 1e-5
    assert report["empty_history_requests"] >= 1  # [1, 0, 1] tensors are accepted and scored
    assert "missing required input" in report["error_paths"]["missing_tensor"]["error"]
    assert "expects 'INT64'" in report["error_paths"]["wrong_dtype"]["error"]

    # The seed's example: customer 42 has an embedding in the bundle, customer 43 does not.
    req = synthetic_requests(plan, n=1, anchor_time=T)[0]
    req["transactions.customer_id"] = np.array([[42]], np.int64)
    code, body = _curl_infer(stack.triton_http_url, "relstream_check", to_triton_json(plan, req))
    assert code == 200, body
    cold = {o["name"]: o["data"] for o in body["outputs"]}["cold_start"]
    assert cold == [0, 0]
    req["transactions.customer_id"] = np.array([[43]], np.int64)
    code, body = _curl_infer(stack.triton_http_url, "relstream_check", to_triton_json(plan, req))
    assert {o["name"]: o["data"] for o in body["outputs"]}["cold_start"] == [1, 0]

    # A mismatched seq_len within one hop gets a clear error naming the tensor.
    bad = to_triton_json(plan, req)
    hop_inputs = [i for i in bad["inputs"] if i["name"].startswith(plan.hop_keys[0] + ":")]
    hop_inputs[0]["shape"] = [1, hop_inputs[0]["shape"][1] - 1, 1]
    hop_inputs[0]["data"] = hop_inputs[0]["data"][:-1]
    code, body = _curl_infer(stack.triton_http_url, "relstream_check", bad)
    assert code == 400, body
    assert hop_inputs[1]["name"] in body["error"] and "seq_len" in body["error"]


def test_new_export_is_a_new_version_served_after_reload(stack, plan, tmp_path):
    v1 = export_untrained(plan, stack.model_repository, model_name="relstream_versions", seed=1)
    load_in_triton(stack.triton_http_url, "relstream_versions")
    v2 = export_untrained(plan, stack.model_repository, model_name="relstream_versions", seed=2)
    report = check_export(v2, stack.triton_http_url, stack.triton_grpc_url)  # reloads: latest version
    assert (v1.name, v2.name, report["version"]) == ("1", "2", 2)
    req = synthetic_requests(plan, n=1)[0]
    _, b1 = _curl_infer(stack.triton_http_url, "relstream_versions", to_triton_json(plan, req))
    assert b1["model_version"] == "2"


def test_string_columns_as_bytes_end_to_end(stack, plan):
    raw = plan.to_dict()
    raw["tables"]["transactions"]["columns"]["channel"] = "string"
    raw["fact_columns"].append("channel")
    for cols in raw["distillation"]["real_time_columns"].values():
        cols.append("channel")
    p = parse_plan(raw)
    vdir = export_untrained(p, stack.model_repository, model_name="relstream_bytes")
    report = check_export(vdir, stack.triton_http_url, stack.triton_grpc_url, synthetic_requests(p, n=3))
    assert report["ok"]
