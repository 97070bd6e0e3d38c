"""bench/device_check.sh on a CPU host: each check skips with its reason and the script goes on and exits 0; and
each check's guard names every module its code imports (read from the sources), so a GPU host that lacks one
skips that check instead of failing it."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_check.sh"
PROJECT = {"bench", "kernels", "pipeline", "training"}
TEST_HELPERS = {p.stem for p in (ROOT / "tests").glob("*.py")}
WORDS = {"cuda", "tritonserver"}  # needs that are not modules (bench/device_needs.py)
# what a declared module brings with it (its own requirements)
BRINGS = {"torchvision": {"numpy", "PIL"}, "tritonclient": {"google", "grpc", "numpy"}}
# imports that are never executed by the checks: (importing file, module) for all checks, module per check
NEVER_RUN = {("pipeline/backbone.py", "safetensors"): "backbone weight files only; the checks use random weights"}
NOT_RUN = {
    "tensorrt-engine": {"safetensors": "pipeline/checkpoint.py, reached only through ssn export's command line"},
    "serve-gpu": {"onnx": "--target trt only; the bench deploys --target py", "onnxruntime": "as above"},
    "ensemble-gpu": {"onnxruntime": "export.onnx_parity only, which the test does not call"},
}
NOT_RUN["kernel-tests-gpu"] = {
    "safetensors": "test_engine's served-module test only, which skips without it (importorskip)",
    "nvidia": "pipeline/deploy/serving.py's Predictor (DALI); the tests call anomaly_map_from_logits only",
    "onnx": "pipeline/deploy/serving.py's onnxruntime runtime, not loaded by the tests",
    "onnxruntime": "as onnx",
}
# bench/throughput.py on CUDA: the CPU-only providers (onnxruntime, anomalib) and ONNX export are never selected
THROUGHPUT_NOT_RUN = {
    "onnx": "pipeline/deploy/export.py's export and parity: provider onnxruntime only (CPU)",
    "onnxruntime": "provider onnxruntime only (CPU)",
    "safetensors": "pipeline/checkpoint.py, reached through the onnxruntime provider's checkpoint check only",
    "anomalib": "provider anomalib only (CPU peer, optional extra)",
    "timm": "as anomalib",
}
NOT_RUN |= {
    name: THROUGHPUT_NOT_RUN
    for name in (
        "throughput-mvtec-fp16",
        "throughput-mvtec-fp32",
        "folded-vs-reference-fp16",
        "throughput-kernels-fp16",
    )
}
# files whose imports inside functions run only when a check's command names the word (a provider)
ONLY_WITH = {"bench/stream_grpc.py": "triton-grpc"}


def checks() -> list[tuple[str, list[str], list[str]]]:
    """(name, needs, command) of every `check` line of the script."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.startswith("check "):
            _, name, needs, *command = shlex.split(line, comments=True)
            found.append((name, needs.split(), command))
    return found


def test_bare_interpreter_skips_every_check_and_exits_0(tmp_path):
    """An interpreter without torch, torchvision, tqdm, onnx, tensorrt (a bare venv): one skip line per check, the
    summary says so, exit 0. Then this project's interpreter (torch, no CUDA here): the CUDA need is what is
    missing."""
    venv.create(tmp_path / "bare", with_pip=False)
    bare = tmp_path / "bare" / "bin" / "python"
    out = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(bare)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    names = [name for name, _, _ in checks()]
    skips = [line for line in out.stdout.splitlines() if line.startswith("skip: ")]
    assert [line.split()[1] for line in skips] == names
    assert all(re.fullmatch(r"skip: \S+ \(missing: \w.*\)", line) for line in skips), skips
    by_name = dict(zip(names, skips))
    assert "tqdm" in by_name["train-cuda-bf16"] and "onnx, onnxscript" in by_name["tensorrt-engine"]
    assert "tensorrt" in by_name["tensorrt-library-version"]
    assert "skip: cuda-device (missing: torch)" in skips
    assert f"device_check: {len(names)} checks: 0 passed, 0 failed, {len(names)} skipped" in out.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(s["check"], s["result"]) for s in summary] == [(name, "skipped") for name in names]
    assert "missing: torch, torchvision" in (tmp_path / "out" / "summary.md").read_text()
    cuda = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "device_needs.py"), "torch", "cuda"], capture_output=True, text=True
    )
    assert cuda.returncode == 1 and cuda.stdout.strip() == "missing: a CUDA device (torch.cuda.is_available() is False)"


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    base = ROOT / "tests" if parts[0] in TEST_HELPERS else ROOT
    path = base.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _optional(tree: ast.AST) -> set[int]:
    """ids of the nodes under `try: ... except ImportError` and `if TYPE_CHECKING:` (not needed to run)."""
    skipped = set()
    for node in ast.walk(tree):
        body = []
        if isinstance(node, ast.Try):
            caught = [h.type for h in node.handlers if h.type is not None]
            names = {n.id for t in caught for n in ast.walk(t) if isinstance(n, ast.Name)}
            body = node.body if names & {"ImportError", "ModuleNotFoundError"} else []
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            body = node.body
        skipped |= {id(n) for stmt in body for n in ast.walk(stmt)}
    return skipped


def _module_level(tree: ast.Module) -> set[int]:
    """ids of the nodes outside every function body."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return {id(n) for n in ast.walk(tree)} - inside


def imported_modules(sources: list[str], words: frozenset[str] = frozenset()) -> dict[str, set[str]]:
    """{top-level name: importing files} of the third-party modules that these sources and the project modules they
    import (at any depth, at module level or inside functions) import, leaving out optional imports, and the imports
    inside functions of the ONLY_WITH files whose word is not among `words`."""
    todo, seen, third_party = list(sources), set(), {}
    while todo:
        source = todo.pop()
        if source in seen:
            continue
        seen.add(source)
        tree = ast.parse(Path(source).read_text() if source.endswith(".py") else source)
        optional = _optional(tree)
        relative = Path(source).relative_to(ROOT).as_posix() if source.endswith(".py") else "-c"
        not_run = set()
        if ONLY_WITH.get(relative, "") not in words | {""}:
            not_run = {id(n) for n in ast.walk(tree)} - _module_level(tree)
        for node in ast.walk(tree):
            if id(node) in not_run:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if (top in PROJECT or top in TEST_HELPERS) and id(node) not in optional:
                    parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)]
                    todo += [str(f) for f in map(_module_file, parents) if f is not None]
                elif top not in sys.stdlib_module_names and top != "__future__" and id(node) not in optional:
                    third_party.setdefault(top, set()).add(relative)
    return third_party


def _sources(command: list[str]) -> list[str]:
    args = command[command.index("$PY") + 1 :]  # after wrappers (env VAR=..., timeout N) and "$PY"
    if args[:2] == ["-m", "pytest"]:
        return [str(ROOT / a) for a in args if a.endswith(".py")] + [str(ROOT / "tests" / "conftest.py")]
    if args[0] == "-c":
        return [args[1]]
    return [str(ROOT / args[0])]


def test_each_guard_names_what_its_check_imports():
    for name, needs, command in checks():
        declared = {part.split(".")[0] for need in needs for part in need.split("|")} - WORDS
        brought = set().union(*(BRINGS.get(d, set()) for d in declared))
        imported = imported_modules(_sources(command), frozenset(command))
        never_run = {m for m, files in imported.items() if all((f, m) in NEVER_RUN for f in files)}
        unguarded = set(imported) - declared - brought - never_run - set(NOT_RUN.get(name, {}))
        assert not unguarded, f"check {name}: add {sorted(unguarded)} to its modules in bench/device_check.sh"
        stale = set(NOT_RUN.get(name, {})) - set(imported)
        assert not stale, f"check {name}: {sorted(stale)} no longer imported; drop them from NOT_RUN"
