"""Fixtures of the ingestion tests: the fraud plan, a file schema registry and its codec."""
from __future__ import annotations

import pytest

from schemas.plan_loading import builtin_plan
from schemas.registry import AvroCodec, DecodeError, FileSchemaRegistry, load_builtin_schemas


@pytest.fixture(scope="session")
def plan():
    return builtin_plan("fraud")


@pytest.fixture
def registry_dir(tmp_path):
    path = tmp_path / "schema-registry"
    load_builtin_schemas(FileSchemaRegistry(path))
    return path


@pytest.fixture
def codec(registry_dir):
    return AvroCodec(FileSchemaRegistry(registry_dir))


@pytest.fixture(scope="session")
def decode_errors():
    return (DecodeError,)


def _load_helpers():
    # --import-mode=importlib: test directories are not packages, so load the sibling by path
    import importlib.util
    import sys
    from pathlib import Path

    name = "relstream_tests_ingest_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("ingest_helpers.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def ih():
    """The ingestion test helpers module (see ingest_helpers.py)."""
    return _load_helpers()
