"""Start, watch and stop a local Triton Inference Server (`ssn serve`; the tests and bench/serve.py use it too).

Which binary: a `tritonserver` on PATH (or in /opt/tritonserver/bin, as in the NGC container), otherwise the one
shipped in the `nvidia-pytriton` wheel (Triton 2.51, python backend only). The bundled one needs (deployment.md §3):
- the python backend stub built for this interpreter next to `libtriton_python.so`: the backend folder is copied
  once, idempotently, into a writable cache (`$SSN_CACHE_DIR`, else `$XDG_CACHE_HOME/supersimplenet`, else
  `~/.cache/supersimplenet`), never into site-packages;
- the interpreter's libpython and the wheel's libraries on LD_LIBRARY_PATH, this environment's `bin/` first on
  PATH (the stub runs the model in the python found there), numpy < 2 in that environment.
The project root goes in $SSN_PROJECT_ROOT so the repository's `model.py` adapters import this very `pipeline/`
(the stub's embedded interpreter ignores PYTHONPATH; without the variable they import the installed package).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_ROOT_ENV = "SSN_PROJECT_ROOT"
HOST_BINARIES = ("/opt/tritonserver/bin/tritonserver",)


class ServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls) -> Ports:
        return cls(*free_ports(3))


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on the loopback interface."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cache_dir() -> Path:
    if os.environ.get("SSN_CACHE_DIR"):
        return Path(os.environ["SSN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "supersimplenet"


def bundled_root() -> Path:
    try:
        import pytriton
    except ImportError as err:
        raise ServerError(
            "no tritonserver on PATH and nvidia-pytriton is not installed; `pip install nvidia-pytriton==0.7.0` "
            "(it ships a CPU-capable tritonserver) or run inside the NGC tritonserver container"
        ) from err
    return Path(pytriton.__file__).parent / "tritonserver"


def prepare_bundled_backends(root: Path | None = None) -> Path:
    """Backends folder for the bundled server, with the python stub of this interpreter; built once, reused."""
    root = root or bundled_root()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the bundled tritonserver has no python backend stub for Python {version} ({stub})")
    target = cache_dir() / f"tritonserver-{_pytriton_version()}-py{version}" / "backends"
    if (target / "python" / "triton_python_backend_stub").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f"backends.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(root / "backends", staging, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
    try:
        os.replace(staging, target)  # atomic: a concurrent preparer either wins or finds it done
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "python" / "triton_python_backend_stub").is_file():
            raise
    return target


def _pytriton_version() -> str:
    from importlib.metadata import version

    return version("nvidia-pytriton")


def find_server(prefer_bundled: bool = False) -> tuple[Path, Path | None]:
    """(tritonserver binary, backend directory or None for the binary's own default)."""
    if not prefer_bundled:
        found = shutil.which("tritonserver") or next((p for p in HOST_BINARIES if Path(p).is_file()), None)
        if found and Path(found).resolve() != (bundled_root_or_none() / "bin" / "tritonserver").resolve():
            return Path(found), None
    root = bundled_root()
    return root / "bin" / "tritonserver", prepare_bundled_backends(root)


def bundled_root_or_none() -> Path:
    try:
        return bundled_root()
    except ServerError:
        return Path("/nonexistent")


def server_env(bundled: bool) -> dict[str, str]:
    env = dict(os.environ)
    env[PROJECT_ROOT_ENV] = str(PROJECT_ROOT)  # the stub's interpreter ignores PYTHONPATH; model.py reads this
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    if bundled:
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        soname = f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
        if not (Path(libdir) / soname).is_file():
            raise ServerError(
                f"the python backend stub needs {soname}, not found in {libdir!r}: use a Python built with "
                "--enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)"
            )
        libs = bundled_root().parent.parent / "nvidia_pytriton.libs"
        extra = [libdir, str(libs)]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (*extra, env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def server_command(
    binary: Path,
    repository: Path,
    ports: Ports,
    host: str = "127.0.0.1",
    backend_dir: Path | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    cmd = [
        str(binary),
        f"--model-repository={repository}",
        f"--http-address={host}",
        f"--http-port={ports.http}",
        f"--grpc-address={host}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-address={host}",
        f"--metrics-port={ports.metrics}",
        "--allow-metrics=true",
        "--strict-readiness=true",
        "--exit-timeout-secs=10",
    ]
    if backend_dir is not None:
        cmd.append(f"--backend-directory={backend_dir}")
    return cmd + list(extra or [])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the parent dies, so a killed `ssn serve` leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass  # not Linux: the server outlives a killed parent


class TritonProcess:
    """A running tritonserver: `with TritonProcess(repo, ports) as server: ...` waits for readiness, always stops."""

    def __init__(
        self,
        repository: str | Path,
        ports: Ports | None = None,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
        log_path: str | Path | None = None,
        prefer_bundled: bool = False,
    ):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {str(self.repository)!r} is not a folder")
        self.ports = ports or Ports.free()
        self.host = host
        self.binary, backend_dir = find_server(prefer_bundled)
        self.bundled = backend_dir is not None
        self.command = server_command(self.binary, self.repository, self.ports, host, backend_dir, extra_args)
        self.env = server_env(self.bundled)
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{self.client_host}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.ports.metrics}/metrics"

    def start(self) -> TritonProcess:
        """Start the process; its log goes to `log_path`, or to this process's stdout without one."""
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        out = self._log
        # own process group: Ctrl-C in a terminal reaches us, and we stop the server ourselves
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} while starting{self._tail()}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.is_file():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"; last log lines ({self.log_path}):\n" + "\n".join(text)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (tritonserver unloads models and exits), then SIGKILL of the group if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log:
            self._log.close()
            self._log = None
        return self.process.returncode

    def __enter__(self) -> TritonProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------------------
# `ssn serve`


def configure_serve(parser) -> None:
    d = Ports()
    parser.add_argument("--model-repository", required=True, help="folder written by `ssn deploy`")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all interfaces)")
    parser.add_argument("--http-port", type=int, default=d.http, help="HTTP/REST port (KServe v2)")
    parser.add_argument("--grpc-port", type=int, default=d.grpc, help="gRPC port (KServe v2 + streaming)")
    parser.add_argument("--metrics-port", type=int, default=d.metrics, help="Prometheus metrics port")
    parser.add_argument(
        "--bundled", action="store_true", help="use nvidia-pytriton's tritonserver even if one is on PATH"
    )
    parser.add_argument(
        "--skip-engine-check",
        action="store_true",
        help="serve TensorRT engines whose metadata does not match this host (they may fail to load)",
    )
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for all models")
    parser.add_argument("--log", help="write the server log to this file instead of the terminal")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra tritonserver flag, e.g. --server-arg=--backend-config=python,shm-default-byte-size=16777216",
    )


def run_serve(args) -> int:
    from pipeline.deploy.repository import serving_problems

    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
    server = TritonProcess(args.model_repository, ports, args.host, args.server_arg, args.log, args.bundled)
    problems, warnings = serving_problems(server.repository, server.bundled)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    engine_only = all("rebuild it on this host" in p for p in problems)
    if problems and not (args.skip_engine_check and engine_only):
        raise ServerError("refusing to serve " + str(server.repository) + ":\n  " + "\n  ".join(problems))
    print(f"starting {server.binary} ({'bundled, python backend' if server.bundled else 'host'})", flush=True)

    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.start()
        server.wait_ready(args.ready_timeout)
        print(
            f"ready: gRPC {server.grpc_url}  HTTP http://{server.http_url}  metrics {server.metrics_url}\n"
            "Ctrl-C stops the server.",
            flush=True,
        )
        code = server.process.wait()
        print(f"tritonserver exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping tritonserver...", flush=True)
        return 0 if server.stop() in (0, None) else 1
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
