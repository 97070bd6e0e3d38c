"""What this host offers a TensorRT engine: the CUDA devices this process sees, and the TensorRT library version.

Standard library only (ctypes): it runs in the tritonserver container, which has the CUDA driver and the TensorRT
libraries but neither torch nor the `tensorrt` Python package.

- GPUs: the CUDA driver API (`libcuda.so.1`: cuInit, cuDeviceGet, cuDeviceGetName, cuDeviceGetAttribute) lists
  the devices in CUDA's own order after CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, the order TensorRT and Triton
  use. Without the driver library, `nvidia-smi` is asked for the devices CUDA_VISIBLE_DEVICES names (nvidia-smi
  ignores that variable itself; its indices follow the PCI bus order, as CUDA's do with CUDA_DEVICE_ORDER=PCI_BUS_ID).
- TensorRT: `getInferLib{Major,Minor,Patch,Build}Version()` of `libnvinfer.so.N`, the library Triton's TensorRT
  backend loads (NVIDIA/TensorRT `include/NvInferRuntime.h`, since 10.0); the `tensorrt` module only where no
  library is found.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75  # cuda.h, CUdevice_attribute
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
TENSORRT_MAJORS = (11, 10)  # libnvinfer.so.N sonames this project's engines can come from

Gpu = tuple[str, str]  # (name, compute capability "9.0")


def visible_gpus() -> list[Gpu]:
    """The CUDA devices this process sees, device 0 first (the one TensorRT builds on); [] without a GPU."""
    gpus = _gpus_from_driver()
    return gpus if gpus is not None else _gpus_from_nvidia_smi(os.environ)


def _gpus_from_driver(library: str = "libcuda.so.1") -> list[Gpu] | None:
    """None when the driver library is missing or fails to initialize (then nvidia-smi is asked)."""
    try:
        cuda = ctypes.CDLL(library)
    except OSError:
        return None
    count = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return None
    gpus = []
    for ordinal in range(count.value):
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        if (
            cuda.cuDeviceGet(ctypes.byref(device), ordinal)
            or cuda.cuDeviceGetName(name, len(name), device)
            or cuda.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
            or cuda.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
        ):
            return None
        gpus.append((name.value.decode(errors="replace"), f"{major.value}.{minor.value}"))
    return gpus


def nvidia_smi_ids(env: dict[str, str]) -> list[str] | None:
    """The `nvidia-smi --id` values of the devices CUDA_VISIBLE_DEVICES leaves visible, in its order; None: all.

    CUDA's rules: a comma-separated list of indices or GPU-/MIG- UUIDs; an empty value hides every device, and the
    list stops at the first invalid entry (so "-1" hides them all)."""
    if "CUDA_VISIBLE_DEVICES" not in env:
        return None
    ids = []
    for entry in (e.strip() for e in env["CUDA_VISIBLE_DEVICES"].split(",")):
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        ids.append(entry)
    return ids


def _gpus_from_nvidia_smi(env: dict[str, str]) -> list[Gpu]:
    ids = nvidia_smi_ids(env)
    if ids == [] or not shutil.which("nvidia-smi"):
        return []
    command = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"]
    if ids is not None:
        command.append("--id=" + ",".join(ids))
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20, check=True).stdout
        return [tuple(s.strip() for s in line.split(",", 1)) for line in out.strip().splitlines() if "," in line]
    except (OSError, subprocess.SubprocessError):
        return []


def parse_tensorrt_version(text: str | None) -> tuple[int, ...] | None:
    """(major, minor, patch[, build]) from "10.8.0.43", "10.8.0" or "10.8.0.43-1+cuda12.8"; None if unreadable."""
    match = re.match(r"\s*(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in match.groups() if g is not None) if match else None


def same_tensorrt(a: str | None, b: str | None) -> bool:
    """Same TensorRT release: major.minor.patch equal, and the build number too where both give it."""
    va, vb = parse_tensorrt_version(a), parse_tensorrt_version(b)
    if va is None or vb is None:
        return False
    n = min(len(va), len(vb))
    return va[:n] == vb[:n]


def _nvinfer_candidates() -> list[str]:
    names = [f"libnvinfer.so.{major}" for major in TENSORRT_MAJORS]
    spec = importlib.util.find_spec("tensorrt_libs")  # the pip wheels' library folder (not imported)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            names = [str(Path(folder) / name) for name in names if (Path(folder) / name).is_file()] + names
    return names


def tensorrt_library_version() -> str | None:
    """The version (MAJOR.MINOR.PATCH.BUILD) of the first libnvinfer this process can load; None without one."""
    for name in _nvinfer_candidates():
        try:
            lib = ctypes.CDLL(name)
            parts = [getattr(lib, f"getInferLib{p}Version")() for p in ("Major", "Minor", "Patch", "Build")]
        except (OSError, AttributeError):
            continue
        return ".".join(str(p) for p in parts)
    return None


def tensorrt_version() -> str | None:
    """The TensorRT a server on this host would load: the library first, else the `tensorrt` module's."""
    version = tensorrt_library_version()
    if version is not None:
        return version
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__
