"""relstream distilled model for Triton's Python backend (copied into every export version, either kind).

The version directory holds everything this file needs: ``vendor/`` (the exact ``schemas`` and
``offline`` modules the model was trained with), ``model.pt`` (state dict + head configuration),
``embeddings.parquet``, ``plan.yaml`` and, for ranking plans, ``catalog.parquet``. Only torch,
numpy, pyarrow and pyyaml must be installed, as in a stock Triton container with the Python backend.

``execute()`` receives the requests the dynamic batcher grouped (``allow_ragged_batch``: RTI
lengths and candidate counts differ between requests; a request may itself carry a batch dim > 1,
padded with ``PAD_TIME`` / ``PAD_CANDIDATE``). It checks each request, stacks the good ones with
``stack_requests`` (the same function the scorer and the distillation use), looks the embeddings
up, runs one forward pass and answers per request the plan's outputs: ``score`` ([b, 1], or
[b, n] per candidate with padded candidates ``-inf``), ``cold_start`` [b, K] and, for ranking
plans, ``candidate_cold_start`` [b, n].
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VENDOR = os.path.join(HERE, "vendor")
if VENDOR not in sys.path:
    sys.path.insert(0, VENDOR)  # the bundle's own copy wins over anything installed

import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from offline.export.bundle import load_bundle, request_error, split_scores  # noqa: E402


def _invalid_argument(message):
    """A client error (HTTP 400 / gRPC INVALID_ARGUMENT), not an internal one."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("torch_threads") or 1))
        self.bundle = load_bundle(HERE)  # with a TorchScript trace of the forward, checked against eager
        self.plan = self.bundle.plan
        logger = getattr(pb_utils, "Logger", None)
        if logger is not None:
            logger.log_info(f"relstream model: {'traced' if self.bundle.traced is not None else 'eager'} forward, "
                            f"torch threads {torch.get_num_threads()}")

    def execute(self, requests):
        plan = self.plan
        responses = [None] * len(requests)
        good, arrays = [], []
        for i, request in enumerate(requests):
            tensors = {}
            for spec in plan.tensors:
                t = pb_utils.get_input_tensor_by_name(request, spec.name)
                if t is None:  # Triton rejects missing inputs before execute(); keep a guard
                    tensors = f"{spec.name}: missing tensor"
                    break
                tensors[spec.name] = t.as_numpy()
            problem = tensors if isinstance(tensors, str) else request_error(plan, tensors)
            if problem:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_invalid_argument(problem))
            else:
                good.append(i)
                arrays.append(tensors)
        if good:
            try:
                per_request = split_scores(self.bundle, arrays)
            except Exception as exc:  # a failure of the batch is reported on each request
                for i in good:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"relstream model: {exc}"))
                return responses
            for i, outputs in zip(good, per_request):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(out.name, outputs[out.name]) for out in plan.outputs])
        return responses

    def finalize(self):
        self.bundle = None
