"""The scorers' routed Triton client on the real Triton: each row scored by its routed version."""
from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from offline.export import export_untrained
from relstream import lifecycle as lc
from relstream.model_checks import synthetic_requests
from relstream.model_ops import ModelOps
from relstream.triton_control import TritonControl
from relstream.model_routing import (AsyncRoutedTritonScorer, RoutedTritonScorer, entity_tensor,
                                     route_rows)
from schemas.plan_loading import builtin_plan
from schemas.tensors import stack_requests
from tests.ops.test_model_lifecycle_triton import DAY, NOW, embeddings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def plan():
    return builtin_plan("fraud")


@pytest.fixture(scope="module")
def deployed(plan, stack, tmp_path_factory):
    """Two versions of one model, 1 primary and 2 canary at 40 %."""
    tmp = tmp_path_factory.mktemp("routing")
    model = f"ops_route_{uuid.uuid4().hex[:6]}"
    triton = TritonControl(stack.triton_grpc_url)
    ops = ModelOps(stack.model_repository, model, triton, clock=lambda: NOW, sleep=lambda s: None,
                   drain_s=0.0, warmup_requests=2, triton_warmup=1)
    for seed in (1, 2):
        export_untrained(plan, stack.model_repository, model, seed=seed,
                         embeddings=embeddings(tmp / f"e{seed}.parquet", plan, NOW - DAY, seed=seed))
    ops.deploy(1)
    ops.deploy(2, canary_percent=40)
    yield ops
    ops.unload_versions(keep=())
    triton.close()


def batch(plan, n=64):
    reqs = synthetic_requests(plan, n, NOW, seed=5)
    col = entity_tensor(plan)
    for i, r in enumerate(reqs):
        r[col][:] = 1000 + i  # distinct customers
    return stack_requests(plan, reqs)


def per_version_scores(plan, ops, tensors, version):
    from scorer.triton import TritonScorer
    t = TritonScorer(plan, ops.triton.url, lc.triton_model_name(ops.model, version), str(version))
    try:
        return t.infer(tensors).scores
    finally:
        t.close()


def test_sync_routed_scorer_splits_by_entity(plan, stack, deployed):
    from scorer.triton import TritonScorer

    ops = deployed
    tensors = batch(plan)
    base = TritonScorer(plan, stack.triton_grpc_url, ops.model)  # the plain model is not even loaded
    routed = RoutedTritonScorer(base, plan, ops.routing_path,
                                lambda name, v: TritonScorer(plan, stack.triton_grpc_url, name, v))
    try:
        out = routed.infer(tensors)
        state = lc.load_routing(ops.routing_path)
        want = route_rows(tensors, entity_tensor(plan), state)
        assert out.row_versions == tuple(str(v) for v in want) and set(want) == {1, 2}
        assert out.model_name == ops.model and out.model_version == "mixed"
        assert out.version_at(0) == str(want[0])
        s1, s2 = per_version_scores(plan, ops, tensors, 1), per_version_scores(plan, ops, tensors, 2)
        expect = np.where(want == 1, s1, s2)
        np.testing.assert_allclose(out.scores, expect, rtol=0, atol=1e-6)
        assert out.cold_start.shape == (64, 2)
        assert routed.ready() == (True, "ok")
        assert routed.max_batch_size() >= 1
    finally:
        routed.close()


def test_async_routed_scorer_and_passthrough_without_routing(plan, stack, deployed, tmp_path):
    from scorer.triton import AsyncTritonScorer, TritonUnavailable

    ops = deployed
    tensors = batch(plan, 16)

    async def run():
        base = AsyncTritonScorer(plan, stack.triton_grpc_url, ops.model)
        routed = AsyncRoutedTritonScorer(base, plan, ops.routing_path,
                                         lambda name, v: AsyncTritonScorer(plan, stack.triton_grpc_url, name, v))
        try:
            out = await routed.infer(tensors)
            ok = await routed.ready()
        finally:
            await routed.close()
        # no routing file: the wrapped client answers (here: the unloaded plain model -> unavailable)
        base2 = AsyncTritonScorer(plan, stack.triton_grpc_url, ops.model)
        plain = AsyncRoutedTritonScorer(base2, plan, tmp_path / "none.json", lambda *a: None)
        try:
            with pytest.raises(TritonUnavailable):
                await plain.infer(tensors)
        finally:
            await plain.close()
        return out, ok

    out, ok = asyncio.run(run())
    want = route_rows(tensors, entity_tensor(plan), lc.load_routing(ops.routing_path))
    assert out.row_versions == tuple(str(v) for v in want)
    assert ok == (True, "ok")
