"""Statistics of a stream run: the live terminal table and the final summary (rich), image AUROC of the verdicts.

Per camera: frames answered per second, latency percentiles (first send -> answer), frames labelled defective,
dropped, errors, stream reconnections, and with ground truth (synthetic cameras, labelled folders) the image AUROC
of the streamed scores. Numpy only (the camera side does without scikit-learn).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from dataclasses import field

import numpy as np

from pipeline.stream.sinks import Record

FPS_WINDOW_S = 5.0


def auroc(scores, truths) -> float | None:
    """Area under the ROC curve of `scores` for `truths` (1 positive, 0 negative): the Mann-Whitney statistic
    with average ranks for ties. None when one class is missing."""
    scores, truths = np.asarray(scores, np.float64), np.asarray(truths)
    positives, negatives = int((truths == 1).sum()), int((truths == 0).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):  # average rank (1-based) of each run of ties
        ranks[order[start:end]] = (start + end + 1) / 2
    rank_sum = ranks[truths == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def percentile(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


@dataclass
class CameraStats:
    records: int = 0
    answered: int = 0
    errors: int = 0
    dropped: int = 0
    unanswered: int = 0
    defects: int = 0
    latencies: list[float] = field(default_factory=list)
    recent: deque = field(default_factory=deque)  # time.monotonic() of recent answers
    scores: list[float] = field(default_factory=list)  # answered frames with ground truth
    truths: list[int] = field(default_factory=list)
    first: float | None = None
    last: float | None = None


class Stats:
    """Fed by the sink thread (`add`), read by the table and the summary."""

    def __init__(self, cameras: list[str]):
        self.lock = threading.Lock()
        self.cameras = {name: CameraStats() for name in cameras}
        self.started = time.monotonic()

    def add(self, record: Record) -> None:
        now = time.monotonic()
        with self.lock:
            s = self.cameras.setdefault(record.camera, CameraStats())
            s.records += 1
            if record.status == "dropped":
                s.dropped += 1
                return
            if record.status == "unanswered":
                s.unanswered += 1
                return
            s.first, s.last = s.first or now, now
            s.recent.append(now)
            if record.status == "error":
                s.errors += 1
            else:
                s.answered += 1
                s.defects += record.label == 1
                if record.truth is not None:
                    s.scores.append(record.score)
                    s.truths.append(record.truth)
            if record.latency_ms is not None:
                s.latencies.append(record.latency_ms)

    def rows(self, extra: dict[str, dict] | None = None) -> list[dict]:
        """One dict per camera (and `extra[camera]` merged in: reconnects, server, ...)."""
        now = time.monotonic()
        out = []
        with self.lock:
            for name, s in self.cameras.items():
                while s.recent and now - s.recent[0] > FPS_WINDOW_S:
                    s.recent.popleft()
                span = min(FPS_WINDOW_S, now - self.started)
                out.append(
                    {
                        "camera": name,
                        "frames": s.answered + s.errors,
                        "fps_now": len(s.recent) / span if span > 0 else 0.0,
                        "fps": (s.answered + s.errors) / max(now - self.started, 1e-9),
                        "p50_ms": percentile(s.latencies, 50),
                        "p95_ms": percentile(s.latencies, 95),
                        "p99_ms": percentile(s.latencies, 99),
                        "defects": s.defects,
                        "dropped": s.dropped,
                        "errors": s.errors,
                        "unanswered": s.unanswered,
                        "auroc": auroc(s.scores, s.truths),
                        **(extra or {}).get(name, {}),
                    }
                )
        return out

    def totals(self, elapsed: float) -> dict:
        with self.lock:
            stats = list(self.cameras.values())
        latencies = [x for s in stats for x in s.latencies]
        frames = sum(s.answered + s.errors for s in stats)
        return {
            "frames": frames,
            "answered": sum(s.answered for s in stats),
            "errors": sum(s.errors for s in stats),
            "dropped": sum(s.dropped for s in stats),
            "unanswered": sum(s.unanswered for s in stats),
            "defects": sum(s.defects for s in stats),
            "frames_per_s": frames / max(elapsed, 1e-9),
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99),
            "auroc": auroc([x for s in stats for x in s.scores], [t for s in stats for t in s.truths]),
            "frames_with_truth": sum(len(s.truths) for s in stats),
            "seconds": elapsed,
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


COLUMNS = ("camera", "server", "frames", "fps", "p50", "p95", "p99", "defects", "dropped", "errors", "reconn.")


def table(rows: list[dict], title: str, live: bool = True):
    from rich.table import Table

    grid = Table(title=f"{title} (latency in ms)", title_justify="left")
    for column in COLUMNS:
        grid.add_column(column, justify="left" if column in ("camera", "server") else "right")
    for r in rows:
        fps = r["fps_now"] if live else r["fps"]
        grid.add_row(
            r["camera"],
            r.get("server", "-"),
            str(r["frames"]),
            f"{fps:.1f}",
            _ms(r["p50_ms"]),
            _ms(r["p95_ms"]),
            _ms(r["p99_ms"]),
            str(r["defects"]),
            str(r["dropped"]),
            str(r["errors"]),
            str(r.get("reconnects", 0)),
        )
    return grid


def summary_lines(totals: dict) -> list[str]:
    lines = [
        f"{totals['frames']} frames answered in {totals['seconds']:.1f} s: {totals['frames_per_s']:.1f} frames/s; "
        f"latency p50 {_ms(totals['p50_ms'])} ms, p95 {_ms(totals['p95_ms'])} ms, p99 {_ms(totals['p99_ms'])} ms",
        f"labelled defective: {totals['defects']}; frame errors: {totals['errors']}; dropped: {totals['dropped']}; "
        f"unanswered: {totals['unanswered']}",
    ]
    if totals["frames_with_truth"]:
        value = "n/a (one class only)" if totals["auroc"] is None else f"{100 * totals['auroc']:.1f}"
        lines.append(f"streamed image AUROC against the ground truth: {value} ({totals['frames_with_truth']} frames)")
    return lines
