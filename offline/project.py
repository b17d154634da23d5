"""What every ``relstream offline`` command shares: the error type, the run manifest, torch
threads, and opening a project (``--project SPEC``) with its run directory.

Commands import from here (never from each other), so ``offline/cli*.py`` form no cycle.
Torch-free at import: the CLI registers its parsers cheaply.

Run directory: ``--run-dir`` or, by default, ``runs/<project name>`` next to the spec file. Every
command merges its entry (inputs, config, seed, git commit, metrics, outputs) into
``RUN/manifest.json`` under its own name.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class OfflineCliError(RuntimeError):
    pass


def error(msg: str):
    """Fail a command with a clean one-line message (the app prints it without a traceback:
    ``offline.cli.EXPECTED_ERRORS``)."""
    raise OfflineCliError(msg) from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "offline"],
                               capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def update_manifest(run_dir: Path, step: str, entry: dict) -> Path:
    path = Path(run_dir) / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"run_dir": str(run_dir), "steps": {}}
    manifest["steps"][step] = {"git_commit": git_commit(),
                               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "argv": sys.argv, **entry}
    from offline.evaluate import write_json  # pandas/sklearn: only when a command runs

    write_json(path, manifest)
    return path


class torch_threads:
    """Set torch's CPU thread count for one command, restoring it afterwards (in-process use)."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        error(f"--device {device}: no CUDA device available")


@dataclass
class ProjectRun:
    project: object  # offline.data.spec.Project
    spec_path: Path
    run_dir: Path

    def load_tables(self):
        from offline.data.sources import load_tables
        from offline.data.spec import SpecError

        try:
            return load_tables(self.project)
        except SpecError as exc:
            error(f"--project {self.spec_path}: {exc}")


def add_project_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", required=True, metavar="SPEC", help="project spec (YAML; see docs/byod.md)")
    p.add_argument("--run-dir", help="outputs and manifest.json (default: runs/<project name> next to the spec)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def open_project(args) -> ProjectRun:
    """Validate ``--project`` (errors name the field) and create the run directory."""
    from offline.data.spec import SpecError, load_project

    spec_path = Path(args.project)
    try:
        project = load_project(spec_path)
    except SpecError as exc:
        error(f"--project {spec_path}: {exc}")
    run_dir = Path(args.run_dir) if getattr(args, "run_dir", None) else spec_path.parent / "runs" / project.name
    run_dir.mkdir(parents=True, exist_ok=True)
    return ProjectRun(project, spec_path, run_dir)
