"""Ops the Triton GPU kernels fuse, with their plain-PyTorch references (`kernels/reference.py`).

Depends on torch (and later triton) only; knows nothing of pipeline/, training/ or serving.
"""
