"""The session stack's real servers: Kafka consumer groups, Redis, Triton over HTTP and gRPC."""
from __future__ import annotations

import time

import numpy as np
import pytest

from relstream.stack import SMOKE_MODEL_NAME


def _consume(consumer, n: int, timeout: float = 30.0) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append(msg)
    return got


def test_consumer_group_commits_and_resumes(kafka_client_config, kafka_consumer_config,
                                            new_topic):
    from confluent_kafka import Consumer, Producer
    topic = new_topic("found-group", partitions=2)
    producer = Producer({**kafka_client_config, "enable.idempotence": True})
    for i in range(10):
        producer.produce(topic, key=str(i % 3).encode(), value=f"v{i}".encode())
    assert producer.flush(30) == 0

    group = f"g-{topic}"
    conf = {**kafka_consumer_config, "group.id": group, "enable.auto.commit": False}
    first = Consumer(conf)
    first.subscribe([topic])
    got = _consume(first, 6)
    assert len(got) == 6
    # commit exactly what was processed; the rest must come back after a restart
    first.commit(asynchronous=False)
    committed = first.committed(first.assignment(), timeout=10)
    assert sum(max(tp.offset, 0) for tp in committed) == 6
    first.close()

    producer.produce(topic, key=b"x", value=b"after-restart")
    assert producer.flush(30) == 0
    second = Consumer(conf)
    second.subscribe([topic])
    rest = _consume(second, 5)
    second.close()
    values = sorted(m.value() for m in got + rest)
    assert values == sorted([f"v{i}".encode() for i in range(10)] + [b"after-restart"])
    assert not {m.value() for m in got} & {m.value() for m in rest}


def test_transactions_are_usable(kafka_client_config, kafka_consumer_config, new_topic):
    from confluent_kafka import Consumer, Producer
    topic = new_topic("found-txn")
    producer = Producer({**kafka_client_config, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(30)
    consumer = Consumer({**kafka_consumer_config, "group.id": f"g-{topic}",
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    got = _consume(consumer, 1)
    more = _consume(consumer, 1, timeout=2)
    consumer.close()
    assert [m.value() for m in got + more] == [b"committed"]


def test_redis_round_trip(redis_client):
    redis_client.set("relstream:smoke", b"\x00\x01value")
    pipe = redis_client.pipeline()
    pipe.hset("relstream:h", mapping={"a": 1, "b": 2}).expire("relstream:h", 60)
    pipe.execute()
    assert redis_client.get("relstream:smoke") == b"\x00\x01value"
    assert redis_client.hgetall("relstream:h") == {b"a": b"1", b"b": b"2"}
    assert 0 < redis_client.ttl("relstream:h") <= 60


@pytest.fixture(scope="module")
def smoke_loaded(stack):
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(stack.triton_http_url.removeprefix("http://"))
    client.load_model(SMOKE_MODEL_NAME)
    assert client.is_model_ready(SMOKE_MODEL_NAME)
    yield SMOKE_MODEL_NAME
    client.unload_model(SMOKE_MODEL_NAME)


def test_triton_http_inference(stack, smoke_loaded):
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(stack.triton_http_url.removeprefix("http://"))
    x = np.array([[1.5, -2.0, 0.0]], dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(smoke_loaded, [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + 1)


def test_triton_grpc_inference(stack, smoke_loaded):
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(stack.triton_grpc_url)
    assert client.is_server_ready()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(smoke_loaded, [inp])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + 1)
    client.close()


def test_triton_metrics_endpoint(stack, smoke_loaded):
    import urllib.request
    with urllib.request.urlopen(stack.triton_metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    assert "nv_inference_request_success" in text
