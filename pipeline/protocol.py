"""What a client of the served models sends and gets back (no torch, no numpy: the camera side imports it).

Both served entry points, the ensemble `supersimplenet` (DALI -> TensorRT -> postprocess) and the portable
`supersimplenet_py` (python backend), have the same interface:

    input   IMAGE        UINT8 [-1]       the encoded file bytes of one frame (JPEG, PNG, ...); client shape
                                          [1, nbytes] per frame; ragged batching merges single-frame requests
    output  SCORE        FP32  [1]        defect probability (sigmoid of the score logit)
            LABEL        INT32 [1]        1 defect / 0 good (SCORE >= image threshold); -1 without a threshold
            ANOMALY_MAP  FP32  [h, w]     per-pixel defect probability at the model's image size, or smaller;
                                          [0, 0] when map_stride is 0
            MASK         UINT8 [h, w]     1 where ANOMALY_MAP >= pixel threshold; [0, 0] without a pixel
                                          threshold or when map_stride is 0

Request parameter `map_stride` (int; default: the model's `map_stride` config parameter, itself 1 unless set by
`ssn deploy --map-stride`): 1 = full resolution; k > 1 = the max over each k x k block (ceil), so a defect above
the pixel threshold stays above it; 0 = empty ANOMALY_MAP and MASK, and no map work. On `supersimplenet_py`,
asking only for SCORE/LABEL (`outputs=[...]`) also skips computing them; the ensemble asks its steps for every
output whatever the client requested (core `src/ensemble_scheduler/ensemble_scheduler.cc`), so there map_stride 0 is
what skips the map op. Through the ensemble, request parameters reach the steps on Triton >= 23.10 (core PR #261).
Request ids are echoed; the models are not decoupled, so a gRPC stream returns responses in request order.
"""

from __future__ import annotations

INPUT = "IMAGE"
SCORE = "SCORE"
LABEL = "LABEL"
ANOMALY_MAP = "ANOMALY_MAP"
MASK = "MASK"
OUTPUTS = (SCORE, LABEL, ANOMALY_MAP, MASK)
MAP_STRIDE = "map_stride"  # request and config parameter
NO_LABEL = -1

ENSEMBLE_MODEL = "supersimplenet"
PYTHON_MODEL = "supersimplenet_py"


def parse_map_stride(value: object, source: str) -> int:
    """A map stride from a request/config parameter; ValueError naming `source` when invalid."""
    try:
        stride = int(value)
    except (TypeError, ValueError):
        stride = -1
    if stride < 0 or stride > 64 or str(value).strip() not in (str(stride), f"{stride}.0"):
        raise ValueError(f"{source} {MAP_STRIDE}={value!r} is invalid: use 0 (no map), 1 (full size) or 2..64")
    return stride
