"""`make mutants`: mutation testing (mutmut 3) of the modules where a silent bug costs a user most, each module with
only the tests that cover it. Not part of CI; results and survivors go to tests/MUTANTS.md by hand.

    python tests/mutation.py                      # every module, fresh
    python tests/mutation.py metrics frames       # some of them
    python tests/mutation.py --keep metrics       # reuse the last run's work folder (only changed code is redone)
    python tests/mutation.py --survivors metrics  # after adding tests: retest only the last run's survivors
    python tests/mutation.py --list               # the modules and their tests

mutmut reads its settings from the pyproject.toml of the folder it runs in and copies the sources into `mutants/`
there; each module therefore runs in its own folder, mutants/<module>/ (git-ignored): links to the packages and
tests, and this project's pyproject.toml with a [tool.mutmut] section for that module. The tests import the copy
(mutmut puts it first on sys.path; tests/checkout.py pins subprocesses to it too). A mutant survives when every
test that calls its function still passes. Each run prints its wall time, the CPU time of mutmut and its workers
(wall time on a quiet machine is about CPU time / workers) and the load average, and writes
mutants/<module>/summary.json and survivors.txt (the diff of every mutant not killed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants"
PACKAGES = ("pipeline", "training", "kernels")  # copied by mutmut; only the module under test is mutated
EXTRA = ("tests", "bench", "model_repository")  # copied as they are


@dataclass(frozen=True)
class Target:
    source: str
    tests: tuple[str, ...]  # pytest arguments selecting the tests that cover it (fast ones)


# Test selections: the module's own fast tests. Left out: tests that reach the module only through a subprocess or
# the server (mutmut cannot see what a subprocess calls, and a server per mutant is too slow), the report tests'
# overlay rendering (seconds each, no metric checked), and the slower duplicate geometries of the folded graph.
FOLDED = "tests/test_folded.py::"
METRIC_TESTS = ("tests/test_metrics.py", "tests/test_aupro.py")
TARGETS = {
    "metrics": Target("training/metrics.py", (*METRIC_TESTS, "-k", "not bench_metrics_script")),
    "aupro": Target("training/aupro.py", (*METRIC_TESTS, "-k", "not bench_metrics_script")),
    "losses": Target("training/losses.py", ("tests/test_losses.py",)),
    "generator": Target(
        "training/generator.py",
        ("tests/test_anomaly_generator.py", "tests/test_training_settings.py", "-k", "not every_sample and not step"),
    ),
    "folding": Target(
        "pipeline/folding.py",
        (
            FOLDED + "test_folded_equals_reference_float64[ac-true-icpr-(64, 96)]",
            FOLDED + "test_folded_equals_reference_float64[ac-false-jims-(72, 100)]",
            FOLDED + "test_training_mode_and_unsupported_models_are_refused",
            FOLDED + "test_every_preset_folds_and_runs_on_meta",
        ),
    ),
    "serving": Target("pipeline/deploy/serving.py", ("tests/test_serving_outputs.py",)),
    "frames": Target(
        "pipeline/frames.py",
        ("tests/test_frames.py", "tests/test_preprocess.py", "tests/test_serving_outputs.py")
        + ("-k", "test_frames or check_frame or pixel or bad_frame or webp"),
    ),
}


def mutmut_section(target: Target, workers: int) -> str:
    def toml_list(items) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return "\n".join(
        [
            "",
            "[tool.mutmut]  # written by tests/mutation.py",
            f"source_paths = {toml_list(PACKAGES)}",
            f"only_mutate = {toml_list([target.source])}",
            f"also_copy = {toml_list(EXTRA)}",
            f"pytest_add_cli_args_test_selection = {toml_list(target.tests)}",
            'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
            'process_isolation = "forkserver"  # torch and DALI are not fork-safe once used',
            "use_git_change_detection = false",
            "",
        ]
    )


def prepare(name: str, target: Target, workers: int, keep: bool) -> Path:
    folder = WORK / name
    if folder.exists() and not keep:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in (*PACKAGES, *EXTRA):
        link = folder / entry
        if not link.exists():
            link.symlink_to(ROOT / entry, target_is_directory=True)
    pyproject = (ROOT / "pyproject.toml").read_text()
    (folder / "pyproject.toml").write_text(pyproject + mutmut_section(target, workers))
    return folder


def summarize(name: str, target: Target, folder: Path) -> dict:
    from mutmut.stats import status_by_exit_code

    meta = json.loads((folder / "mutants" / f"{target.source}.meta").read_text())
    statuses = {key: status_by_exit_code[code] for key, code in meta["exit_code_by_key"].items()}
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tested = killed + counts.get("survived", 0)
    survivors = sorted(k for k, s in statuses.items() if s != "killed" and s != "timeout")
    return {
        "module": target.source,
        "mutants": len(statuses),
        "counts": counts,
        "score": round(killed / tested, 4) if tested else None,
        "score_all": round(killed / len(statuses), 4) if statuses else None,
        "not_killed": {k: statuses[k] for k in survivors},
    }


def show(folder: Path, mutants: list[str]) -> str:
    texts = []
    for mutant in mutants:
        out = subprocess.run(
            [sys.executable, "-m", "mutmut", "show", mutant], cwd=folder, capture_output=True, text=True, timeout=120
        )
        texts.append(f"# {mutant}\n{out.stdout.strip() or out.stderr.strip()}\n")
    return "\n".join(texts)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(name: str, target: Target, workers: int, keep: bool, survivors: bool = False) -> dict:
    retest = []
    if survivors:
        last = WORK / name / "summary.json"
        if not last.is_file():
            raise SystemExit(f"--survivors {name}: no earlier run in {last.parent}")
        retest = list(json.loads(last.read_text())["not_killed"])
    folder = prepare(name, target, workers, keep or survivors)
    what = f"{len(retest)} earlier survivors" if survivors else "all mutants"
    print(f"== {name}: {target.source}, {what}, with {' '.join(target.tests)} (load before: {load()})", flush=True)
    t0, cpu0 = time.monotonic(), os.times()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    mutmut = [sys.executable, "-m", "mutmut", "run", "--max-children", str(workers), *retest]
    done = subprocess.run(mutmut, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds, cpu1 = time.monotonic() - t0, os.times()
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    (folder / "mutmut.log").write_text(done.stdout)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-40:])
        raise SystemExit(f"mutmut failed for {name} (exit {done.returncode}); {folder / 'mutmut.log'}:\n{tail}")
    summary = summarize(name, target, folder) | {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1)}
    summary |= {"load_after": load(), "workers": workers, "retested": len(retest) if survivors else "all"}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "survivors.txt").write_text(show(folder, list(summary["not_killed"])))
    c = summary["counts"]
    print(
        f"   {summary['mutants']} mutants: {c.get('killed', 0)} killed, {c.get('timeout', 0)} timeout, "
        f"{c.get('survived', 0)} survived, {c.get('no tests', 0)} no tests; score {summary['score']}; "
        f"{seconds / 60:.1f} min, CPU {cpu / 60:.1f} min (load after: {summary['load_after']}); "
        f"survivors: {folder / 'survivors.txt'}",
        flush=True,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"default: all ({', '.join(TARGETS)})")
    parser.add_argument("--keep", action="store_true", help="reuse the last run's work folder")
    parser.add_argument("--survivors", action="store_true", help="retest only the last run's survivors (keeps it)")
    parser.add_argument("--workers", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests, run nothing")
    args = parser.parse_args(argv)
    names = args.modules or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; accepted: {', '.join(TARGETS)}")
    if args.list:
        for name in names:
            print(f"{name:<10} {TARGETS[name].source:<30} {' '.join(TARGETS[name].tests)}")
        return 0
    summaries = {name: run(name, TARGETS[name], args.workers, args.keep, args.survivors) for name in names}
    (WORK / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    print("\n| module | mutants | killed | survived | no tests | score | minutes | CPU minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summaries.values():
        c = s["counts"]
        killed = c.get("killed", 0) + c.get("timeout", 0)
        print(
            f"| {s['module']} | {s['mutants']} | {killed} | {c.get('survived', 0)} | {c.get('no tests', 0)} | "
            f"{s['score']} | {s['seconds'] / 60:.1f} | {s['cpu_seconds'] / 60:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
