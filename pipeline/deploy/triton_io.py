"""Request/response plumbing shared by the python-backend `model.py` adapters (runs inside tritonserver's stub).

`triton_python_backend_utils` exists only in the stub process, so it is imported inside the functions.
"""

from __future__ import annotations

import json

import numpy as np

from pipeline import protocol
from pipeline.deploy.serving import FrameOutput


def model_parameters(args: dict) -> tuple[dict, dict[str, str]]:
    """(model config as a dict, its `parameters` as plain strings) from `initialize(args)`."""
    config = json.loads(args["model_config"])
    params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    return config, params


def instance_device(args: dict) -> str:
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args['model_instance_device_id']}"
    return "cpu"


def request_map_stride(request, default: int) -> int:
    """The request's `map_stride` (ValueError naming it when invalid); 0 when neither map output is requested."""
    wanted = set(request.requested_output_names())
    params = json.loads(request.parameters() or "{}")
    stride = default
    if protocol.MAP_STRIDE in params:
        stride = protocol.parse_map_stride(params[protocol.MAP_STRIDE], "request parameter")
    return stride if wanted & {protocol.ANOMALY_MAP, protocol.MASK} else 0


def error_response(message: str):
    """An error response for a bad request (INVALID_ARG where the backend has status codes)."""
    import triton_python_backend_utils as pb_utils

    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


def outputs_response(outputs: list[FrameOutput]):
    """One response for the frames of one request (all with the same map stride)."""
    import triton_python_backend_utils as pb_utils

    tensors = {
        protocol.SCORE: np.array([[o.score] for o in outputs], dtype=np.float32),  # [n, 1]
        protocol.LABEL: np.array([[o.label] for o in outputs], dtype=np.int32),  # [n, 1]
        protocol.ANOMALY_MAP: np.stack([o.anomaly_map for o in outputs]),  # [n, h, w]
        protocol.MASK: np.stack([o.mask for o in outputs]),  # [n, h, w]
    }
    return pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in tensors.items()])


def request_frames(requests, responses: list) -> tuple[list[np.ndarray], list[int]]:
    """Every frame (a row of IMAGE [n, nbytes], uint8) of the requests not answered yet, and its request's index."""
    import triton_python_backend_utils as pb_utils

    frames, owners = [], []
    for index, request in enumerate(requests):
        if responses[index] is None:
            for row in pb_utils.get_input_tensor_by_name(request, protocol.INPUT).as_numpy():
                frames.append(row)
                owners.append(index)
    return frames, owners


def answer_requests(responses: list, owners: list[int], results: list, respond) -> None:
    """Fill `responses` from per-frame `results` (in the order of `owners`): a request with a bad frame (an
    exception among its results) gets an error naming that frame, the others `respond(their results)`."""
    per_request: dict[int, list] = {}
    for owner, result in zip(owners, results):
        per_request.setdefault(owner, []).append(result)
    for index, mine in per_request.items():
        bad = [(k, r) for k, r in enumerate(mine) if isinstance(r, Exception)]
        if bad:
            k, err = bad[0]
            responses[index] = error_response(f"frame {k} of {len(mine)} in request: {err}")
        else:
            responses[index] = respond(mine)
    for index, response in enumerate(responses):
        if response is None:
            responses[index] = error_response(f"input {protocol.INPUT!r} holds no frame")
