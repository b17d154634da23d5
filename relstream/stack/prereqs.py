"""Checks for what the local stack needs, each with the command that installs it."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterable

from .components import pytriton_server_dir
from .kafka_jars import KAFKA_VERSION, kafka_home, verify


class PrerequisiteError(RuntimeError):
    """Something the stack needs is missing; the message names it and how to install it."""


@dataclass(frozen=True)
class Missing:
    what: str
    install: str

    def __str__(self) -> str:
        return f"{self.what} is missing; install it with: {self.install}"


PIP_INSTALL = "make setup   (a virtualenv .venv with relstream[all])"
STACK_INSTALL = "make setup, or in an existing environment: pip install 'relstream[stack]'"


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def _kafka_jars_cached() -> bool:
    home = kafka_home(KAFKA_VERSION)
    return home.is_dir() and not verify(home, KAFKA_VERSION)


def _module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_for(components: Iterable[str]) -> list[Missing]:
    components = set(components)
    missing: list[Missing] = []
    if "kafka" in components:
        java = shutil.which("java")
        if java is None:
            missing.append(Missing("Java 17+ (`java`, needed by the Kafka broker)",
                                   "sudo apt-get install -y default-jre-headless"))
        else:
            major = _java_major(java)
            if major is not None and major < 17:
                missing.append(Missing(f"Java 17+ (found Java {major})",
                                       "sudo apt-get install -y default-jre-headless"))
        if shutil.which("mvn") is None and not _kafka_jars_cached():
            missing.append(Missing("Maven (`mvn`, resolves the Kafka broker jars)",
                                   "sudo apt-get install -y maven   (then: make setup)"))
        if not _module("confluent_kafka"):
            missing.append(Missing("Python package confluent-kafka", PIP_INSTALL))
    if "redis" in components:
        if shutil.which("redis-server") is None:
            missing.append(Missing("`redis-server`", "sudo apt-get install -y redis-server"))
        if not _module("redis"):
            missing.append(Missing("Python package redis", PIP_INSTALL))
    if "triton" in components:
        if not _module("pytriton"):
            missing.append(Missing("Triton Inference Server (Python package nvidia-pytriton)",
                                   STACK_INSTALL))
        else:
            server = pytriton_server_dir()
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            if not (server / "bin" / "tritonserver").is_file():
                missing.append(Missing(f"tritonserver binary under {server}",
                                       f"{sys.executable} -m pip install --force-reinstall "
                                       f"'nvidia-pytriton>=0.5'   (or: rm -rf .venv && make setup)"))
            if not (server / "python_backend_stubs" / version).is_dir():
                missing.append(Missing(f"Triton Python backend stub for Python {version} "
                                       f"(nvidia-pytriton ships 3.8-3.13)",
                                       "use a Python version the wheel supports"))
    return missing


def require(components: Iterable[str]) -> None:
    missing = missing_for(components)
    if missing:
        lines = "\n".join(f"  - {m}" for m in missing)
        raise PrerequisiteError(f"the local stack cannot start:\n{lines}")
