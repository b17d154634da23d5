"""Throwaway Python-backend test model for the scorer tests (same inputs/outputs as the export).

It is deterministic and depends on every kind of input, so a test can compare the scorer's
answer with a direct Triton call: score = sigmoid(0.01 * amount + per hop (0.1 * length +
0.001 * mean of the first numeric column over real positions) + per embedding key the entity's
embedding, or the cold-start value when the id is not in ``embedded_ids.json``).
Padding is recognised by PAD_TIME in each hop's time column, exactly as the contract says.
"""
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

PAD_TIME = np.iinfo(np.int64).min
COLD_VALUE = -0.2


def _embedding(entity_id: int) -> float:
    return ((entity_id * 2654435761) % 1000) / 1000.0 - 0.5


class TritonPythonModel:
    def initialize(self, args):
        spec = json.loads((Path(__file__).parent / "spec.json").read_text())
        self.fact_value = spec["fact_value"]
        self.embedding_inputs = spec["embedding_inputs"]
        self.hops = spec["hops"]  # [{"time": name, "value": name}]
        self.embedded = {int(i) for i in spec["embedded_ids"]}

    def execute(self, requests):
        responses = []
        for request in requests:
            amount = pb_utils.get_input_tensor_by_name(request, self.fact_value).as_numpy()
            z = 0.01 * amount.reshape(-1).astype(np.float64)
            for hop in self.hops:
                times = pb_utils.get_input_tensor_by_name(request, hop["time"]).as_numpy()[..., 0]
                values = pb_utils.get_input_tensor_by_name(request, hop["value"]).as_numpy()[..., 0]
                real = times != PAD_TIME
                n = real.sum(axis=1)
                total = np.where(real, values.astype(np.float64), 0.0).sum(axis=1)
                z = z + 0.1 * n + 0.001 * total / np.maximum(n, 1)
            cold = np.zeros((z.shape[0], len(self.embedding_inputs)), dtype=np.int8)
            for k, name in enumerate(self.embedding_inputs):
                ids = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
                for b, entity in enumerate(ids):
                    if int(entity) in self.embedded:
                        z[b] += _embedding(int(entity))
                    else:
                        z[b] += COLD_VALUE
                        cold[b, k] = 1
            score = (1.0 / (1.0 + np.exp(-z))).astype(np.float32).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("score", score), pb_utils.Tensor("cold_start", cold)]))
        return responses
