"""Config loading: YAML + env layers, strict types, secrets only from the environment."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from relstream.config import (KAFKA_CLIENT_DEFAULTS, Config, ConfigError, kafka_client_config, load_config,
                              redis_client, section, triton_client, validate)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relstream.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert cfg.redis.url == "redis://127.0.0.1:6379/0"
    assert cfg.triton.url == "http://127.0.0.1:8000" and cfg.triton.protocol == "http"
    assert cfg.topics.interactions == ["relstream.interactions"]
    assert cfg.stack.ports.kafka == 0
    assert cfg.source is None


def test_yaml_file_and_env_overrides(tmp_path):
    path = write(tmp_path, """
run_dir: /tmp/somewhere
kafka:
  bootstrap_servers: broker-1:9093,broker-2:9093
  client:
    security.protocol: SASL_SSL
    sasl.mechanism: SCRAM-SHA-512
    linger.ms: 5
triton: {url: "grpc://triton:8001", model_name: fraud}
topics: {facts: tx, interactions: [tx, logins]}
ingest: {batch_size: 500}
""")
    env = {"RELSTREAM__TOPICS__SCORES": "scores.v2",
           "RELSTREAM__STACK__PORTS__REDIS": "6390",
           "RELSTREAM__KAFKA__CLIENT__SSL_CA_LOCATION": "/etc/ca.pem",
           "RELSTREAM__TRITON__MODEL_NAME": "0042",  # str field: kept verbatim, not an int
           "RELSTREAM_KAFKA_SASL_USERNAME": "svc",
           "RELSTREAM_KAFKA_SASL_PASSWORD": "s3cret",
           "RELSTREAM_REDIS_PASSWORD": "r3dis",
           "UNRELATED": "x"}
    cfg = load_config(path, env=env)
    assert cfg.run_dir == Path("/tmp/somewhere")
    assert cfg.topics.scores == "scores.v2" and cfg.topics.interactions == ["tx", "logins"]
    assert cfg.stack.ports.redis == 6390
    assert cfg.triton.protocol == "grpc" and cfg.triton.host_port == "triton:8001"
    assert cfg.triton.model_name == "0042"
    assert cfg.ingest == {"batch_size": 500}
    assert cfg.redis.password.get_secret_value() == "r3dis"
    assert "r3dis" not in repr(cfg)
    conf = kafka_client_config(cfg, **{"group.id": "g"})
    assert conf == {"bootstrap.servers": "broker-1:9093,broker-2:9093",
                    "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                    "linger.ms": 5, "ssl.ca.location": "/etc/ca.pem",
                    "sasl.username": "svc", "sasl.password": "s3cret", "group.id": "g",
                    **KAFKA_CLIENT_DEFAULTS}  # relstream's own librdkafka defaults (overridable)
    overridden = kafka_client_config(cfg, **{"metadata.recovery.strategy": "rebootstrap"})
    assert overridden["metadata.recovery.strategy"] == "rebootstrap"


def test_config_file_from_env_variable(tmp_path):
    path = write(tmp_path, "topics: {dlq: my.dlq}\n")
    assert load_config(env={"RELSTREAM_CONFIG": str(path)}).topics.dlq == "my.dlq"
    with pytest.raises(ConfigError, match="not found"):
        load_config(env={"RELSTREAM_CONFIG": str(tmp_path / "nope.yaml")})


@pytest.mark.parametrize("text, key", [
    ("kafka: {bootstrap: x}\n", "kafka.bootstrap: unknown key"),
    ("kafka: {bootstrap_servers: 9092}\n", "kafka.bootstrap_servers"),
    ("stack: {ports: {kafka: '9092'}}\n", "stack.ports.kafka"),
    ("stack: {ports: {kafak: 1}}\n", "stack.ports.kafak: unknown key"),
    ("stack: {redis_persistence: 'yes'}\n", "stack.redis_persistence"),
    ("stack: {components: [kafka, zookeeper]}\n", "stack.components"),
    ("topics: {interactions: tx}\n", "topics.interactions"),
    ("triton: {url: 'ftp://x'}\n", "triton.url"),
    ("redis: {url: 'http://x'}\n", "redis.url"),
    ("bogus_section: {}\n", "bogus_section: unknown key"),
    ("ingest: [1, 2]\n", "ingest"),
    ("kafka: {client: {bootstrap.servers: x}}\n", "kafka.client"),
])
def test_bad_yaml_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    assert key in str(err.value)


def test_bad_env_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="stack.ports.kafka"):
        load_config(env={"RELSTREAM__STACK__PORTS__KAFKA": "abc"}, use_local_stack=False)
    with pytest.raises(ConfigError, match="kafka.nope: unknown key"):
        load_config(env={"RELSTREAM__KAFKA__NOPE": "1"}, use_local_stack=False)


@pytest.mark.parametrize("text, env_name", [
    ("kafka: {client: {sasl.password: hunter2}}\n", "RELSTREAM_KAFKA_SASL_PASSWORD"),
    ("redis: {password: hunter2}\n", "RELSTREAM_REDIS_PASSWORD"),
    ("redis: {url: 'redis://:hunter2@host:6379/0'}\n", "RELSTREAM_REDIS_PASSWORD"),
])
def test_secrets_in_the_file_are_refused(tmp_path, text, env_name):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    assert env_name in str(err.value) and "hunter2" not in str(err.value)


def test_not_a_mapping_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "kafka: {\n"), env={})


def test_local_stack_addresses_are_the_lowest_layer(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stack.json").write_text(json.dumps({"config": {
        "kafka": {"bootstrap_servers": "127.0.0.1:40001"},
        "redis": {"url": "redis://127.0.0.1:40002/0"},
        "triton": {"url": "http://127.0.0.1:40003"}}}))
    env = {"RELSTREAM__RUN_DIR": str(run_dir)}
    cfg = load_config(env=env)
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:40001"
    assert cfg.triton.url == "http://127.0.0.1:40003"
    cfg = load_config(env={**env, "RELSTREAM__REDIS__URL": "rediss://prod:6380/1"})
    assert cfg.redis.url == "rediss://prod:6380/1"
    assert load_config(env=env, use_local_stack=False).kafka.bootstrap_servers == "127.0.0.1:9092"


def test_free_section_validated_by_its_package():
    class IngestSettings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        batch_size: int = 100

    cfg = validate({"ingest": {"batch_size": 7}})
    assert section(cfg, "ingest", IngestSettings).batch_size == 7
    with pytest.raises(ConfigError, match="ingest.batch_sise: unknown key"):
        section(validate({"ingest": {"batch_sise": 7}}), "ingest", IngestSettings)


def test_client_factories_respect_tls_and_password():
    cfg = validate({"redis": {"url": "rediss://cache.example:6380/2", "password": "pw",
                              "options": {"ssl_cert_reqs": "none"}},
                    "triton": {"url": "grpcs://triton.example:443"}})
    client = redis_client(cfg)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == "pw" and kwargs["host"] == "cache.example"
    assert kwargs["port"] == 6380 and kwargs["db"] == 2
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    import tritonclient.grpc as grpcclient
    tc = triton_client(cfg)
    assert isinstance(tc, grpcclient.InferenceServerClient)
    tc.close()
    assert validate({"triton": {"url": "http://h:8000"}}).triton.protocol == "http"


def test_config_object_is_immutable():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.run_dir = Path("/x")
