"""relstream's contract: the serving plan, event schemas and the tensor builder.

Every other package imports these; nothing redefines plan fields, tensor names or window bounds.
"""

from schemas.interactions import Interaction, Window, interactions_of, window_keys
from schemas.plan import PlanError, ServingPlan
from schemas.plan_loading import builtin_plan, load_plan, parse_plan
from schemas.tensors import build_tensors
from schemas.values import RowError

__all__ = [
    "Interaction", "PlanError", "RowError", "ServingPlan", "Window", "build_tensors", "builtin_plan",
    "interactions_of", "load_plan", "parse_plan", "window_keys",
]
