"""Every metric the Grafana dashboard queries is exported by the running services.

The real `relstream ingest`, `relstream score` and `relstream serve` run as subprocesses on the
session stack, with a model deployed as primary + canary through the control plane, and score
real traffic; then their /metrics and Triton's /metrics are scraped. The same run checks the
canary wiring end to end: every score record carries the version the routing state assigns to
its customer, and both versions scored.
"""
from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from pathlib import Path


from offline.export import export_untrained
from relstream import lifecycle as lc
from relstream.model_ops import ModelOps
from relstream.triton_control import TritonControl
from schemas.plan_loading import builtin_plan
from tests.ops import services as svc
from tests.ops.test_model_lifecycle_triton import DAY, embeddings

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "relstream.json"
METRIC = re.compile(r"\b((?:relstream|nv)_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count"),
            "gauge": ("",), "untyped": ("",)}


def dashboard_metrics() -> dict[str, list[str]]:
    """{metric name: [panel titles]} for every metric name in every panel query."""
    dash = json.loads(DASHBOARD.read_text())
    out: dict[str, list[str]] = {}
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            for name in METRIC.findall(target["expr"]):
                out.setdefault(name, []).append(panel["title"])
    return out


def exported_names(text: str) -> tuple[set[str], set[str]]:
    """(names a query may use: every family with its type's sample suffixes, names with samples)."""
    from prometheus_client.parser import text_string_to_metric_families
    declared, sampled = set(), set()
    for fam in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(fam.type, ("",)):
            declared.add(fam.name + suffix)
        if fam.type == "counter":
            declared.add(fam.name)  # Triton's counters carry no _total suffix
        sampled.update(s.name for s in fam.samples)
    return declared | sampled, sampled


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("latency", "per second", "errors", "lag", "freshness", "batch size", "version"):
        assert topic in titles, topic
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    for p in dash["panels"]:
        for t in p.get("targets", []):
            for var in re.findall(r"\$\{?(\w+)\}?", t["expr"]):
                assert var in variables or var.startswith("__"), (p["title"], var)
    prov = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "provisioning"
    import yaml
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert ds["uid"] == "prometheus" and ds["type"] == "prometheus"
    board = yaml.safe_load((prov / "dashboards" / "relstream.yaml").read_text())["providers"][0]
    compose = yaml.safe_load((prov.parents[2] / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{board['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_every_dashboard_metric_is_exported_by_the_running_services(stack, tmp_path):
    plan = builtin_plan("fraud")
    model = f"ops_dash_{uuid.uuid4().hex[:6]}"
    now = time.time_ns()
    for seed in (1, 2):
        export_untrained(plan, stack.model_repository, model, seed=seed,
                         embeddings=embeddings(tmp_path / f"e{seed}.parquet", plan, now - DAY, n=60, seed=seed))
    triton = TritonControl(stack.triton_grpc_url)
    ops = ModelOps(stack.model_repository, model, triton, sleep=lambda s: None, drain_s=0.0,
                   warmup_requests=2, triton_warmup=1)
    cfg = svc.ServiceConfig(stack, tmp_path / "svc", model_name=model)
    config = cfg.write()
    started: list[svc.Service] = []
    try:
        ops.deploy(1)
        ops.deploy(2, canary_percent=50)
        topics = cfg.topics
        svc.create_topics(stack.kafka_bootstrap, [topics["facts"], topics["scores"], topics["dlq"]], partitions=2)
        ingest, ingest_port = svc.start_ingest(config, tmp_path)
        score, score_port = svc.start_score(config, tmp_path)
        serve, serve_port = svc.start_serve(config, tmp_path)
        started += [ingest, score, serve]
        for s, port in ((ingest, ingest_port), (score, score_port)):
            s.wait_http(svc.metrics_url(port), timeout=90)
        serve.wait_http(f"http://127.0.0.1:{serve_port}/healthz", timeout=90)

        codec = svc.codec_for(cfg)
        n = 60
        rows = svc.transaction_rows(n, now - 120 * 10**9, customers=40)
        rows.append({**rows[0], "transaction_id": 10**6, "tx_amount": 10.0})
        svc.produce_transactions(stack.kafka_bootstrap, topics["facts"], codec, rows)
        from confluent_kafka import Producer
        p = Producer({"bootstrap.servers": stack.kafka_bootstrap})
        p.produce(topics["facts"], value=b"not avro")  # one dead letter: the DLQ series exist
        p.flush(10)
        del p
        got = svc.read_topic(stack.kafka_bootstrap, topics["scores"], n + 1, timeout=120)
        assert len(got) == n + 1, f"{len(got)} scores of {n + 1}\n{score.tail()}"

        for r in rows[:6]:
            req = urllib.request.Request(f"http://127.0.0.1:{serve_port}/v1/score", method="POST",
                                         data=json.dumps(r).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = json.loads(resp.read())
            state = lc.load_routing(ops.routing_path)
            assert body["model_version"] == str(lc.route(r["customer_id"], state))
            assert body["model_name"] == model

        # canary wiring on the Kafka path: every record made by the version routing assigns
        state = lc.load_routing(ops.routing_path)
        versions = set()
        for msg in got:
            _subject, rec = codec.decode(msg.value())
            want = lc.route(rec["entity_ids"]["customer_id"], state)
            assert rec["model_version"] == str(want) and rec["model_name"] == model
            versions.add(rec["model_version"])
        assert versions == {"1", "2"}

        # window freshness / lag are set after the ingest commits its batch
        deadline = time.monotonic() + 30
        while "relstream_ingest_consumer_lag{" not in scrape(svc.metrics_url(ingest_port)):
            assert time.monotonic() < deadline, ingest.tail()
            time.sleep(0.5)

        texts = {"ingest": scrape(svc.metrics_url(ingest_port)), "score": scrape(svc.metrics_url(score_port)),
                 "serve": scrape(f"http://127.0.0.1:{serve_port}/metrics"), "triton": scrape(stack.triton_metrics_url)}
        declared, sampled = set(), set()
        for text in texts.values():
            d, s = exported_names(text)
            declared |= d
            sampled |= s
        wanted = dashboard_metrics()
        assert len(wanted) >= 25
        missing = {m: panels for m, panels in wanted.items() if m not in declared}
        assert not missing, f"dashboard queries metrics nobody exports: {missing}"
        # and the core series really have data after this traffic
        for core in ("relstream_scorer_scored_total", "relstream_scorer_stage_seconds_bucket",
                     "relstream_scorer_score_bucket", "relstream_scorer_batch_size_bucket",
                     "relstream_ingest_records_total", "relstream_ingest_consumer_lag",
                     "relstream_ingest_window_freshness_seconds", "relstream_scorer_dead_letters_total",
                     "nv_inference_request_success", "nv_inference_exec_count"):
            assert core in sampled or f"{core}_total" in sampled, core  # the parser may add _total
        assert f'model="{lc.triton_model_name(model, 2)}"' in texts["triton"]

        # `relstream model status` reads the same endpoints: per-version score distributions
        status = ops.status([svc.metrics_url(score_port), f"http://127.0.0.1:{serve_port}/metrics"])
        rows_by_v = {r["version"]: r for r in status["versions"]}
        assert rows_by_v[1]["scores"]["count"] > 0 and rows_by_v[2]["scores"]["count"] > 0
        assert rows_by_v[2]["triton_stats"]["success"] > 0
    finally:
        for s in started:
            s.stop()
        ops.unload_versions(keep=())
        triton.close()
