"""docker-compose.yml cannot run here; check its topology agrees with the config defaults."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from relstream.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def published(service: dict) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for spec in service.get("ports", []):
        host, container = str(spec).split(":")[-2:]
        out[int(container)] = int(host)
    return out


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1]) if "://" not in address else urlparse(address).port


def test_services_present(compose):
    assert {"kafka", "redis", "triton", "ingest", "score", "serve", "prometheus",
            "grafana"} <= set(compose["services"])
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert compose["services"]["triton"]["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert compose["services"]["triton"]["image"].endswith("-py3")


def test_published_ports_match_config_defaults(compose):
    defaults = Config()
    services = compose["services"]
    kafka_port = port_of(defaults.kafka.bootstrap_servers)
    assert published(services["kafka"]).get(kafka_port) == kafka_port
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"localhost:{kafka_port}" in advertised
    redis_port = port_of(defaults.redis.url)
    assert published(services["redis"]).get(redis_port) == redis_port
    http = port_of(defaults.triton.url)
    triton_ports = published(services["triton"])
    assert triton_ports.get(http) == http
    assert {8000, 8001, 8002} <= set(triton_ports)
    cmd = services["triton"]["command"]
    for port, flag in zip((8000, 8001, 8002), ("--http-port", "--grpc-port", "--metrics-port")):
        assert f"{flag}={port}" in cmd


def test_kafka_is_kraft_single_node(compose):
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert int(env[key]) == 1
    assert any(v.endswith(":/var/lib/kafka/data") for v in compose["services"]["kafka"]["volumes"])


def test_triton_serves_the_model_repository_volume_with_explicit_control(compose):
    triton = compose["services"]["triton"]
    repo_mounts = [v.split(":")[1] for v in triton["volumes"]]
    assert "/models" in repo_mounts
    assert "--model-repository=/models" in triton["command"]
    assert "--model-control-mode=explicit" in triton["command"]


@pytest.mark.parametrize("name", ["ingest", "score", "serve"])
def test_relstream_services_point_at_compose_servers(compose, name):
    services = compose["services"]
    svc = services[name]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / svc["build"]["dockerfile"]).is_file()
    env = {k: str(v) for k, v in svc["environment"].items() if "${" not in str(v)}
    cfg = load_config(env=env, use_local_stack=False)  # the compose env is a valid config
    host, port = cfg.kafka.bootstrap_servers.split(":")
    assert host == "kafka" and f"INTERNAL://kafka:{port}" in \
        services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert urlparse(cfg.redis.url).hostname == "redis"
    assert urlparse(cfg.redis.url).port in published(services["redis"])
    assert urlparse(cfg.triton.url).hostname == "triton"
    assert urlparse(cfg.triton.url).port in published(services["triton"])
    # both sides see the same model repository
    assert str(cfg.model_repository) == "/models"
    assert any(v.startswith("./models:/models") for v in svc["volumes"])
    assert svc["command"] == [name]


def test_prometheus_scrapes_triton_and_services(compose):
    prom = compose["services"]["prometheus"]
    mount = next(v for v in prom["volumes"] if v.endswith("prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert "triton:8002" in targets
    for name in ("ingest", "score", "serve"):
        ports = published(compose["services"][name])
        assert any(t.split(":")[0] == name and int(t.split(":")[1]) in ports for t in targets)
    assert published(compose["services"]["grafana"]).get(3000) == 3000
