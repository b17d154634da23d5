"""The expected failure of a command: printed as ``relstream: error: <message>``, exit code 1."""
from __future__ import annotations


class CliError(RuntimeError):
    """An expected failure: printed as `relstream: error: <message>`, exit code 1."""
