"""A tiny Python-backend model (OUTPUT0 = INPUT0 + 1) that proves Triton serves requests."""
from __future__ import annotations

import shutil
from pathlib import Path

SMOKE_MODEL_NAME = "relstream_smoke"
SMOKE_MODEL_SOURCE = Path(__file__).parent / "smoke_model" / SMOKE_MODEL_NAME


def install_smoke_model(model_repository: Path) -> Path:
    """Copy the smoke model into `model_repository` (load it with explicit model control)."""
    target = Path(model_repository) / SMOKE_MODEL_NAME
    shutil.copytree(SMOKE_MODEL_SOURCE, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target
