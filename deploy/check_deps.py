"""Exit 0 when every requirement of relstream[dev] in pyproject.toml is installed and
satisfied and `relstream` is importable; 1 otherwise. Lets `make setup` skip pip quickly."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare interpreter: let pip install everything
    print("[setup] python package `packaging` missing")
    sys.exit(1)


def unsatisfied(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    bad = []
    for raw in reqs:
        req = Requirement(raw)
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            bad.append(f"{req.name} not installed")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            bad.append(f"{req.name} {version} does not satisfy {req.specifier}")
    if importlib.util.find_spec("relstream") is None:
        bad.append("relstream itself not installed")
    return bad


if __name__ == "__main__":
    problems = unsatisfied(Path(__file__).resolve().parent.parent / "pyproject.toml")
    for p in problems:
        print(f"[setup] {p}")
    sys.exit(1 if problems else 0)
