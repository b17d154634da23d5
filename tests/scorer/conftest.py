"""Fixtures of the scorer tests: the fraud plan, a test model loaded in the session Triton, a
Redis window store, and helpers to build fact rows with a known window state."""
from __future__ import annotations

import pytest

from schemas.plan import builtin_plan

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
    yield store
    store.close()


def fact_row(i: int, *, customer: int = 7, terminal: int = 11, t: int | None = None, amount: float = 10.0) -> dict:
    return {"transaction_id": i, "tx_datetime": BASE_T + i * SECOND if t is None else t,
            "customer_id": customer, "terminal_id": terminal, "tx_amount": amount}


def history(plan, rows):
    """Window appends for fact rows (the facts are also the interactions of the fraud plan)."""
    from schemas.tensors import interactions_of
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
    s = ServeSettings(**settings)
    triton = AsyncTritonScorer(plan, stack.triton_grpc_url, model_name, timeout_s=s.triton_timeout_s)
    ping = (lambda: store.client.ping()) if store is not None else None
    deps = ServeDeps(plan=plan, triton=triton, store=store, settings=s, token=TOKEN, store_ping=ping,
                     on_close=[triton.close])
    return create_app(deps)


AUTH = {"Authorization": f"Bearer {TOKEN}"}
