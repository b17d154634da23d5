"""Fixtures of the scorer tests: the fraud plan, a test model loaded in the session Triton, a
Redis window store, and helpers to build fact rows with a known window state."""
from __future__ import annotations

import pytest

from schemas.plan_loading import builtin_plan

TEST_MODEL = "relstream_scorer_test"
BASE_T = 1_700_000_000_000_000_000  # ns
SECOND = 1_000_000_000


@pytest.fixture(scope="session")
def plan():
    return builtin_plan("fraud")


def load_test_model(plan, stack, name: str = TEST_MODEL) -> str:
    import tritonclient.http as httpclient

    from tests.scorer.model_repo import write_test_model
    write_test_model(plan, stack.model_repository, name=name)
    client = httpclient.InferenceServerClient(stack.triton_http_url.split("://")[1])
    client.load_model(name)
    assert client.is_model_ready(name)
    client.close()
    return name


@pytest.fixture(scope="session")
def test_model(plan, stack) -> str:
    """The throwaway model (same inputs/outputs as the export) loaded in the session Triton."""
    return load_test_model(plan, stack)


@pytest.fixture
def window_store(plan, redis_client):
    from rti_store import RedisWindowStore
    store = RedisWindowStore(plan, redis_client, key_prefix="scorer-test")
    store.mark_complete("scorer-test")  # filled by the tests directly, not by ingest
    yield store
    store.close()


def fact_row(i: int, *, customer: int = 7, terminal: int = 11, t: int | None = None, amount: float = 10.0) -> dict:
    return {"transaction_id": i, "tx_datetime": BASE_T + i * SECOND if t is None else t,
            "customer_id": customer, "terminal_id": terminal, "tx_amount": amount}


def history(plan, rows):
    """Window appends for fact rows (the facts are also the interactions of the fraud plan)."""
    from schemas.interactions import interactions_of
    items = []
    for r in rows:
        items.extend(interactions_of(plan, plan.fact_table, r))
    return items


class ServerThread:
    """A real uvicorn server for an ASGI app, on a free loopback port, in a thread."""

    def __init__(self, app):
        import threading

        import uvicorn

        from relstream.stack import free_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", loop="asyncio"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        import time
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


TOKEN = "test-token-0123456789"


def make_app(plan, stack, model_name, store, **settings):
    from scorer.http import ServeDeps, create_app
    from scorer.settings import ServeSettings
    from scorer.triton import AsyncTritonScorer
    # exact-score tests must not race the 20 ms production deadline on a loaded machine
    s = ServeSettings(**{"window_deadline_ms": 2000, **settings})
    triton = AsyncTritonScorer(plan, stack.triton_grpc_url, model_name, timeout_s=s.triton_timeout_s)
    ping = (lambda: store.client.ping()) if store is not None else None
    deps = ServeDeps(plan=plan, triton=triton, store=store, settings=s, token=TOKEN, store_ping=ping,
                     on_close=[triton.close])
    return create_app(deps)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def codec(tmp_path):
    from schemas.registry import AvroCodec, FileSchemaRegistry, load_builtin_schemas
    registry = FileSchemaRegistry(tmp_path / "schema-registry")
    load_builtin_schemas(registry)
    return AvroCodec(registry)


def produce_facts(kafka_client_config, topic, codec, rows, raw: list[bytes] = ()) -> None:
    from confluent_kafka import Producer
    producer = Producer({**kafka_client_config, "enable.idempotence": True, "linger.ms": 2})
    for r in rows:
        producer.produce(topic, key=str(r["customer_id"]).encode(),
                         value=codec.encode("transactions-value", r))
    for value in raw:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0


def consume_all(kafka_consumer_config, topic, n: int, timeout: float = 30.0, committed: bool = True,
                settle: float = 0.0) -> list:
    """Up to ``n`` messages (then ``settle`` more seconds, to catch duplicates)."""
    import time
    import uuid

    from confluent_kafka import Consumer
    consumer = Consumer({**kafka_consumer_config, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False,
                         "isolation.level": "read_committed" if committed else "read_uncommitted"})
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    settle_until = None
    try:
        while time.monotonic() < deadline:
            if settle_until is None and len(got) >= n:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    got.append(msg)
    finally:
        consumer.close()
    return got


def scorer_for(plan, stack_or_url, model_name, *, consumer_config, client_config, codec, store, topics,
               group, txn_id, **kw):
    """An in-process KafkaScorer with real clients."""
    from confluent_kafka import Consumer, Producer

    from scorer.fallbacks import WindowFallback
    from scorer.kafka_service import KafkaScorer
    from scorer.triton import TritonScorer
    url = stack_or_url if isinstance(stack_or_url, str) else stack_or_url.triton_grpc_url
    consumer = Consumer({**consumer_config, "group.id": group, "enable.auto.commit": False,
                         "enable.auto.offset.store": False, "isolation.level": "read_committed",
                         "fetch.wait.max.ms": 10})
    producer = Producer({**client_config, "transactional.id": txn_id, "linger.ms": 1})
    facts, scores, dlq = topics
    fallback = WindowFallback(plan, store, deadline_s=kw.pop("deadline_s", 0.2), cooldown_s=kw.pop("cooldown_s", 0.0))
    return KafkaScorer(plan, consumer=consumer, producer=producer, codec=codec,
                       triton=TritonScorer(plan, url, model_name, timeout_s=kw.pop("triton_timeout_s", 5.0)),
                       fallback=fallback, facts_topics=[facts], scores_topic=scores, dlq_topic=dlq, store=store,
                       group_id=group, **kw)
