"""Nothing to register: the distilled ranker is trained, scored and exported by the plan-driven
``relstream offline distill | quality | export --plan recsys`` (``offline/cli_stage2.py``). This
module only keeps ``offline/cli.py``'s registration call working."""


def register_ranker(sub) -> None:
    """Registers no command (see the module docstring)."""
