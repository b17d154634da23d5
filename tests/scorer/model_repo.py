"""Write the throwaway test model repository for a plan (until/besides the real export)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from schemas.plan import ServingPlan

MODEL_SOURCE = Path(__file__).parent / "fixture_model" / "model.py"


def write_test_model(plan: ServingPlan, repository: Path, *, name: str = "relstream",
                     version: int = 1, embedded_ids=range(1, 1000), max_batch_size: int = 512) -> Path:
    """A Python-backend model with exactly the plan's inputs and the export's outputs."""
    model_dir = Path(repository) / name
    vdir = model_dir / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODEL_SOURCE, vdir / "model.py")
    inputs = []
    for spec in plan.tensors:
        dims = ", ".join(str(d) for d in spec.dims)
        ragged = "\n    allow_ragged_batch: true" if spec.kind == "rti" else ""
        inputs.append(f'  {{\n    name: "{spec.name}"\n    data_type: TYPE_{spec.triton_dtype}\n'
                      f'    dims: [ {dims} ]{ragged}\n  }}')
    k = len(plan.embedding_keys)
    (model_dir / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        f'input [\n' + ",\n".join(inputs) + '\n]\n'
        f'output [\n  {{ name: "score" data_type: TYPE_FP32 dims: [ 1 ] }},\n'
        f'  {{ name: "cold_start" data_type: TYPE_INT8 dims: [ {k} ] }}\n]\n'
        'instance_group [ { count: 1, kind: KIND_CPU } ]\n'
        'dynamic_batching { max_queue_delay_microseconds: 0 }\n')
    fact_value = next(t.name for t in plan.tensors if t.kind == "fact" and t.dtype.startswith("float"))
    hops = []
    for hop in plan.hops:
        table = plan.interaction_table(hop)
        value_col = next(c for c in hop.columns if table.columns[c].startswith("float"))
        hops.append({"time": f"{hop.key.key}:{table.time_column}", "value": f"{hop.key.key}:{value_col}"})
    spec = {"fact_value": fact_value, "hops": hops,
            "embedding_inputs": [f"{plan.fact_table}.{k.column}" for k in plan.embedding_keys],
            "embedded_ids": list(embedded_ids)}
    (vdir / "spec.json").write_text(json.dumps(spec))
    return model_dir
