"""Bring your own data, end to end: a schema neither built-in dataset has (a bank: six tables,
two fact tables, a window that reads the second fact table) goes from files to a served score
with no code change -- spec -> train-deep -> embed -> distill -> export -> Triton ->
``POST /v1/score`` -- and the served score equals the offline one."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from offline.data.sources import load_tables
from offline.data.spec import load_project
from offline.datasets.synthetic_bank import TINY_BANK, write_bank_project
from offline.distillation.replay import replay_requests
from offline.export.bundle import load_bundle, split_scores
from relstream.cli import main
from rti_store import RedisWindowStore
from schemas.interactions import interactions_of
from tests.scorer.conftest import AUTH, ServerThread, make_app

pytestmark = pytest.mark.timeout(600)

MODEL = "byod_bank"


def test_bank_files_to_served_score(stack, redis_client, tmp_path, capsys):
    spec = write_bank_project(tmp_path / "bank", TINY_BANK)
    project = load_project(spec)
    plan = project.plan
    hop_tables = sorted({h.key.target.table for h in plan.hops})
    assert len(hop_tables) == 2 and plan.fact_table in hop_tables  # a window over the second fact table

    run = ["--project", str(spec), "--no-progress"]
    assert main(["offline", "train-deep", *run, "--epochs", "1", "--max-samples-per-epoch", "2000"]) == 0
    assert main(["offline", "embed", *run]) == 0
    assert main(["offline", "distill", *run, "--epochs", "1"]) == 0
    metrics = json.loads((spec.parent / "runs" / "bank" / "distill.json").read_text())["metrics"]
    assert metrics["n"] > 0 and 0.0 <= metrics["auc_roc"] <= 1.0
    capsys.readouterr()
    assert main(["offline", "export", *run, "--repo", str(stack.model_repository), "--model-name", MODEL,
                 "--check", "--triton-http", stack.triton_http_url, "--triton-grpc", stack.triton_grpc_url]) == 0
    out = capsys.readouterr().out
    check = json.loads(out[out.index("{"):])
    assert check["ok"], check

    # The windows as ingest would hold them: every row of both hop tables, through the contract.
    data = load_tables(project)  # the pipeline's own reading: times as int64 ns
    tables = {t: data.table(t) for t in hop_tables}
    store = RedisWindowStore(plan, redis_client, key_prefix="byod-bank")
    store.mark_complete("byod-bank")
    for t, frame in tables.items():
        items = []
        for rec in frame[list(plan.interaction_columns[t])].to_dict("records"):
            items.extend(interactions_of(plan, t, rec))
        store.append(items)

    payments = tables[plan.fact_table]
    last = payments.sort_values(plan.fact.time_column).tail(5)
    facts = [{c: row[c].item() if hasattr(row[c], "item") else row[c] for c in plan.fact_columns}
             for _, row in last.iterrows()]
    version_dir = sorted((stack.model_repository / MODEL).glob("[0-9]*"), key=lambda p: int(p.name))[-1]
    bundle = load_bundle(version_dir)
    expected = [float(o["score"].reshape(-1)[0])
                for o in split_scores(bundle, replay_requests(plan, tables, facts, prefill=True, progress=False))]
    try:
        with ServerThread(make_app(plan, stack, MODEL, store)) as srv:
            served = []
            for fact in facts:
                r = httpx.post(f"{srv.url}/v1/score", json=fact, headers=AUTH, timeout=30)
                assert r.status_code == 200, r.text
                assert r.json()["degraded"] == []
                served.append(r.json()["score"])
    finally:
        store.close()
    np.testing.assert_allclose(served, expected, atol=1e-5)
