"""Which NGC tritonserver release (YY.MM) a `--target trt` repository is written for, and what that release allows.

Triton reads config.pbtxt strictly (core `src/filesystem/api.cc` ReadTextProto: protobuf TextFormat::ParseFromString
fails on an unknown field), so a field newer than the server makes the model fail to load:
- `ensemble_scheduling.max_inflight_requests` (backpressure on the ensemble) is in model_config.proto from release
  25.11 on (common 6a318ca, 2025-11-03; in branch r25.11, not r25.10). For older releases `ssn deploy` leaves it out.
- The python steps import this package, which needs Python >= 3.11; the tritonserver images are Ubuntu 24.04
  (Python 3.12) from 24.11 on (server r24.11 `build.py` takes its CUDA repository for ubuntu2404, r24.10 for
  ubuntu2204, Python 3.10) [derived from the build scripts, not from a running image]. Hence the minimum 24.11.
Inside the NGC image the release is in the environment (server `build.py`: ENV NVIDIA_TRITON_SERVER_VERSION
${TRITON_CONTAINER_VERSION}); the tritonserver bundled in nvidia-pytriton 0.7.0 is Triton 2.51.0 = release 24.10.
"""

from __future__ import annotations

import os
import re

MINIMUM = "24.11"
MAX_INFLIGHT_REQUESTS = "25.11"  # first release whose model_config.proto has the ensemble field
BUNDLED = "24.10"  # nvidia-pytriton 0.7.0's tritonserver 2.51.0 (server r24.10 TRITON_VERSION)
RELEASE_ENV = "NVIDIA_TRITON_SERVER_VERSION"


class ReleaseError(ValueError):
    pass


def parse_release(text: str, source: str = "--triton-release") -> tuple[int, int]:
    """(year, month) of an NGC release "YY.MM"; ReleaseError naming `source` otherwise."""
    match = re.fullmatch(r"\s*(\d{2})\.(\d{2})\s*", str(text))
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ReleaseError(f"{source} {text!r} is not an NGC release: use YY.MM, e.g. {MAX_INFLIGHT_REQUESTS}")
    return int(match.group(1)), int(match.group(2))


def deploy_release(given: str | None) -> str:
    """The release a `--target trt` repository is written for: `given`, else the one of the NGC image this runs in;
    ReleaseError when neither, or when it is older than MINIMUM."""
    release = given or os.environ.get(RELEASE_ENV)
    if not release:
        raise ReleaseError(
            f"--triton-release YY.MM is required for --target trt: the NGC tritonserver release that will serve "
            f"the repository (minimum {MINIMUM}; {MAX_INFLIGHT_REQUESTS} or later for the ensemble's backpressure)"
        )
    if parse_release(release) < parse_release(MINIMUM):
        raise ReleaseError(
            f"tritonserver {release} is older than the minimum {MINIMUM}: its image has Python 3.10, and the python "
            "steps import this package (Python >= 3.11)"
        )
    return release.strip()


def allows_max_inflight_requests(release: str) -> bool:
    return parse_release(release) >= parse_release(MAX_INFLIGHT_REQUESTS)


def server_release(bundled: bool) -> str | None:
    """The release of the tritonserver `ssn serve` starts, where it can be told (bundled, or in an NGC image)."""
    return BUNDLED if bundled else os.environ.get(RELEASE_ENV)


def config_problems(configs: dict, release: str) -> list[str]:
    """Fields of these model configs that tritonserver `release` cannot parse."""
    problems = []
    for name, config in configs.items():
        if config.ensemble_scheduling.max_inflight_requests and not allows_max_inflight_requests(release):
            problems.append(
                f"model {name!r} sets ensemble_scheduling.max_inflight_requests, which tritonserver {release} cannot "
                f"parse (added in {MAX_INFLIGHT_REQUESTS}): redeploy with --triton-release {release}"
            )
    return problems
