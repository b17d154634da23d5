"""The scorer against the real export (offline.export.export_untrained: torch model in the Python
backend, embeddings looked up inside the model): HTTP and Kafka scores equal a direct Triton call on
build_tensors output, and cold starts come from the model's own `cold_start` output."""
from __future__ import annotations

import httpx
import numpy as np
import pytest

from schemas.tensors import build_tensors
from scorer.triton import TritonScorer
from tests.scorer.conftest import (AUTH, BASE_T, ServerThread, consume_all, fact_row, history, make_app,
                                   produce_facts, scorer_for)

pytestmark = pytest.mark.timeout(240)
DAY = 86_400 * 10**9


@pytest.fixture(scope="module")
def exported_model(plan, stack, tmp_path_factory):
    import tritonclient.http as httpclient

    from offline.embeddings import write_embeddings_parquet
    from offline.export import export_untrained
    name = "relstream_scorer_export"
    emb = tmp_path_factory.mktemp("emb") / "embeddings.parquet"
    # customer 7 and terminal 11 have a snapshot one day before BASE_T; everyone else is cold
    write_embeddings_parquet(emb, ["customers", "terminals"], [7, 11], [BASE_T - DAY, BASE_T - DAY],
                             np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32))
    export_untrained(plan, stack.model_repository, model_name=name, embeddings=emb, seed=3)
    client = httpclient.InferenceServerClient(stack.triton_http_url.split("://")[1], network_timeout=300)
    client.load_model(name)
    assert client.is_model_ready(name)
    client.close()
    return name


def test_scores_from_the_real_export(plan, stack, exported_model, window_store, codec, new_topic,
                                     kafka_client_config, kafka_consumer_config):
    past = [fact_row(i, customer=7 + (i % 2) * 100, terminal=11, amount=4.0 * i) for i in range(1, 12)]
    window_store.append(history(plan, past))
    rows = [fact_row(50, customer=7, terminal=11, amount=12.0), fact_row(51, customer=107, terminal=11),
            fact_row(52, customer=7, terminal=99, amount=1.0)]
    direct = TritonScorer(plan, stack.triton_grpc_url, exported_model)
    expected = []
    for r in rows:
        windows = {h.key.key: window_store.read(h.key.key, e, r["tx_datetime"])
                   for h, e in zip(plan.hops, (r["customer_id"], r["terminal_id"]))}
        out = direct.infer(build_tensors(plan, r, windows))
        expected.append((float(out.scores[0]), out.cold_start[0].tolist()))
    direct.close()
    assert [c for _, c in expected] == [[0, 0], [1, 0], [0, 1]]

    with ServerThread(make_app(plan, stack, exported_model, window_store)) as srv:
        replies = [httpx.post(f"{srv.url}/v1/score", json=r, headers=AUTH, timeout=30) for r in rows]
    for r, (score, _) in zip(replies, expected):
        assert r.status_code == 200, r.text
        assert r.json()["score"] == pytest.approx(score, abs=1e-5)
    assert [r.json()["cold_start"] for r in replies] == [[], ["customer_id"], ["terminal_id"]]

    facts, scores, dlq = new_topic("facts"), new_topic("scores"), new_topic("dlq")
    produce_facts(kafka_client_config, facts, codec, rows)
    scorer = scorer_for(plan, stack, exported_model, consumer_config=kafka_consumer_config,
                        client_config=kafka_client_config, codec=codec, store=window_store,
                        topics=(facts, scores, dlq), group=f"g-{facts}", txn_id=f"tx-{facts}")
    scorer.start()
    assert scorer.run(idle_exit_s=2.0).scored == 3
    scorer.close()
    got = {rec["event_id"]: rec for rec in (codec.decode(m.value())[1]
                                            for m in consume_all(kafka_consumer_config, scores, 3))}
    for r, (score, _) in zip(rows, expected):
        rec = got[str(r["transaction_id"])]
        assert rec["score"] == pytest.approx(score, abs=1e-5)
        assert rec["model_name"] == exported_model and rec["model_version"] == "1"
