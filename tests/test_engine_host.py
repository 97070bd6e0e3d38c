"""The host side of TensorRT engines, on CPU: timing-cache handling (an injected builder config with TensorRT's
documented return values), the visible GPUs and the TensorRT version read from the libraries (stand-in libraries
compiled here that export the real symbols), and the engine-vs-host rules."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import subprocess
import textwrap

import pytest

from pipeline.deploy import gpu_host
from pipeline.deploy.trt_engine import EngineError
from pipeline.deploy.trt_engine import attach_timing_cache
from pipeline.deploy.trt_engine import engine_problems
from pipeline.deploy.trt_engine import save_timing_cache

BUILT = {"tensorrt": "10.13.3.9", "gpu": "NVIDIA H200", "compute_capability": "9.0"}


class Cache:
    def __init__(self, device: str, entries: bytes = b""):
        self.device, self.entries = device, entries

    def serialize(self) -> bytes:
        return b"cache:" + self.device.encode() + b":" + self.entries + b"+tactics"


class BuilderConfig:
    """IBuilderConfig's timing-cache calls as NVIDIA/TensorRT python/docstrings/infer/pyCoreDoc.h documents them:
    create_timing_cache gives None for bytes it cannot read; set_timing_cache gives False for a cache made on
    another device unless ignore_mismatch; get_timing_cache gives None when no cache is set."""

    def __init__(self, device: str = "H200", empty_cache_fails: bool = False):
        self.device, self.empty_cache_fails, self.cache = device, empty_cache_fails, None

    def create_timing_cache(self, blob: bytes):
        if blob == b"":
            return None if self.empty_cache_fails else Cache(self.device)
        if not blob.startswith(b"cache:"):
            return None
        _, device, entries = blob.split(b":", 2)
        return Cache(device.decode(), entries)

    def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
        if cache.device != self.device and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


def test_timing_cache_new_then_reused(tmp_path):
    path = tmp_path / "timing.cache"
    config = BuilderConfig()
    cache, notes = attach_timing_cache(config, path)
    assert notes == ["new timing.cache"] and config.cache is cache and cache.entries == b""
    assert save_timing_cache(config, path) == [] and path.read_bytes() == b"cache:H200:+tactics"
    config = BuilderConfig()
    cache, notes = attach_timing_cache(config, path)
    assert notes == [f"reused timing.cache ({len(b'cache:H200:+tactics')} bytes)"] and cache.entries == b"+tactics"


@pytest.mark.parametrize(
    ("stored", "reason"),
    [(b"cache:A100:old-tactics", "made on another GPU or TensorRT release"), (b"\x00garbage", "cannot read it")],
    ids=["other-gpu", "unreadable"],
)
def test_timing_cache_refused_by_tensorrt_is_set_aside_and_reported(tmp_path, stored, reason):
    path = tmp_path / "timing.cache"
    path.write_bytes(stored)
    config = BuilderConfig("H200")
    cache, notes = attach_timing_cache(config, path)
    assert notes[0] == "new timing.cache" and reason in notes[1] and "moved to timing.cache.stale" in notes[1]
    assert config.cache is cache and cache.device == "H200" and cache.entries == b""  # a fresh cache is used
    assert (tmp_path / "timing.cache.stale").read_bytes() == stored  # kept, not dropped
    assert not path.exists()
    save_timing_cache(config, path)
    assert path.read_bytes() == b"cache:H200:+tactics"


def test_timing_cache_failures_are_errors_or_notes(tmp_path):
    with pytest.raises(EngineError, match="could not create an empty timing cache"):
        attach_timing_cache(BuilderConfig(empty_cache_fails=True), tmp_path / "timing.cache")
    notes = save_timing_cache(BuilderConfig(), tmp_path / "timing.cache")  # no cache set: get_timing_cache is None
    assert notes == ["TensorRT returned no timing cache after the build; timing.cache not written"]
    assert not (tmp_path / "timing.cache").exists()


@pytest.mark.parametrize(
    ("value", "ids"),
    [(None, None), ("", []), ("2,3", ["2", "3"]), ("GPU-8e1c,1", ["GPU-8e1c", "1"]), ("-1", []), ("1,x,2", ["1"])],
    ids=["unset", "empty", "indices", "uuid", "minus-one", "stops-at-invalid"],
)
def test_nvidia_smi_asks_for_the_visible_devices(value, ids):
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert gpu_host.nvidia_smi_ids(env) == ids


def test_tensorrt_versions_compare_by_release():
    assert gpu_host.parse_tensorrt_version("10.8.0.43-1+cuda12.8") == (10, 8, 0, 43)
    assert gpu_host.same_tensorrt("10.8.0.43", "10.8.0") and gpu_host.same_tensorrt("11.1.0.106", "11.1.0.106")
    assert not gpu_host.same_tensorrt("10.8.0.43", "10.8.0.44") and not gpu_host.same_tensorrt("10.8.0", "10.9.0")
    assert not gpu_host.same_tensorrt(None, "10.8.0") and not gpu_host.same_tensorrt("unknown", "unknown")


def test_every_visible_gpu_must_match():
    two = {"tensorrt": "10.13.3.9", "gpus": [("NVIDIA H200", "9.0"), ("NVIDIA A100-SXM4-80GB", "8.0")]}
    refuse, _ = engine_problems(BUILT, two | {"gpu": "NVIDIA H200", "compute_capability": "9.0"})
    assert refuse == [
        "engine built with TensorRT 10.13.3.9 for NVIDIA H200 (sm 9.0), "
        "but visible GPU 1 NVIDIA A100-SXM4-80GB is sm 8.0"
    ]
    same_arch = {"tensorrt": "10.13.3", "gpus": [("NVIDIA H200", "9.0"), ("NVIDIA H100 80GB HBM3", "9.0")]}
    refuse, warn = engine_problems(BUILT, same_arch)
    assert refuse == [] and "runs on NVIDIA H100 80GB HBM3 (same architecture" in warn[0]


STAND_INS = """
#include <stdlib.h>
#include <string.h>
int getInferLibMajorVersion(void) { return 10; }
int getInferLibMinorVersion(void) { return 13; }
int getInferLibPatchVersion(void) { return 3; }
int getInferLibBuildVersion(void) { return 9; }
static const char *names[] = {"NVIDIA H200", "NVIDIA L40S"};
static const int caps[][2] = {{9, 0}, {8, 9}};
int cuInit(unsigned flags) { return flags; }
int cuDeviceGetCount(int *count) { *count = 2; return 0; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return ordinal > 1; }
int cuDeviceGetName(char *name, int len, int device) { strncpy(name, names[device], len); return 0; }
int cuDeviceGetAttribute(int *value, int attribute, int device) {
    if (attribute != 75 && attribute != 76) return 1;
    *value = caps[device][attribute - 75]; return 0;
}
"""


@pytest.fixture(scope="module")
def stand_in_library(tmp_path_factory):
    """A shared library exporting the symbols gpu_host reads from libnvinfer and libcuda (no CUDA, no TensorRT)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the stand-in libnvinfer/libcuda")
    folder = tmp_path_factory.mktemp("libs")
    (folder / "stand_in.c").write_text(textwrap.dedent(STAND_INS))
    library = folder / "libstand_in.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(folder / "stand_in.c")], check=True)
    return str(library)


def test_versions_and_gpus_read_through_ctypes(stand_in_library, monkeypatch):
    monkeypatch.setattr(gpu_host, "_nvinfer_candidates", lambda: ["libnvinfer.so.404", stand_in_library])
    assert gpu_host.tensorrt_library_version() == "10.13.3.9"
    assert gpu_host.tensorrt_version() == "10.13.3.9"
    assert gpu_host._gpus_from_driver(stand_in_library) == [("NVIDIA H200", "9.0"), ("NVIDIA L40S", "8.9")]


def test_without_the_libraries_nothing_is_found():
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("this host has a CUDA driver")
    except OSError:
        pass
    assert gpu_host._gpus_from_driver() is None and gpu_host.visible_gpus() == []
    loadable = []
    for name in gpu_host._nvinfer_candidates():
        with contextlib.suppress(OSError):
            loadable.append(ctypes.CDLL(name))
    if not loadable:
        assert gpu_host.tensorrt_library_version() is None
