"""Fixtures the offline suites share (a module can override ``plan`` with its own)."""
from __future__ import annotations

import pytest

from offline.datasets.fraud import TINY, generate_dataset
from schemas.plan_loading import builtin_plan


@pytest.fixture(scope="module")
def plan():
    return builtin_plan("fraud")


@pytest.fixture(scope="module")
def tx():
    """The transactions of the tiny fraud simulation (one copy per module: tests may not mutate it)."""
    return generate_dataset(TINY).table("transactions")
