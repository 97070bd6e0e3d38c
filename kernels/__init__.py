"""Ops the Triton GPU kernels fuse: plain-PyTorch references (`reference.py`) and one Triton kernel per op
(`seg_head.py`, `cls_head.py`, `anomaly_map.py`, registered as `torch.ops.ssn.*`), their shared helpers
(`common.py`) and ahead-of-time compilation for absent GPUs (`aot.py`).

Depends on torch and triton only; knows nothing of pipeline/, training/ or serving.
"""
