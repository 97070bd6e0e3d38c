"""The authors' published numbers (training/reference/*.json, unchanged copies) for the evaluation report.

`paper_rows(dataset, category, regime, ratio) -> list[PaperRow]`: the rows comparable with one evaluation, in this
order: ICPR 2024 (only for the regime the ICPR paper used on that dataset), then JIMS 2025 for the given regime
and ratio; for each, the category's row (when the JSON has that category) and the dataset total (the mean over
categories, as the authors' ResultsWriter computes it). An unknown dataset gives no rows.

Regimes are named as `ssn train --supervision`; the JIMS JSON keys them `unsup`, `full`, `mixed`, `weak`, each with
a ratio key: the number (KSDD2) or fraction (Sensum) of segmented defect images, `"1"` for MVTec/VisA, `"unsup"`
for unsupervised KSDD2/Sensum. Without `ratio` the default is the regime's usual one; mixed without a ratio lists
every published ratio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REFERENCE_DIR = Path(__file__).parent / "reference"
PAPER_DATASETS = ("mvtec", "visa", "ksdd2", "sensum")
JIMS_REGIME = {"unsupervised": "unsup", "supervised": "full", "mixed": "mixed", "weak": "weak"}
ICPR_REGIME = {"mvtec": "unsupervised", "visa": "unsupervised", "ksdd2": "supervised", "sensum": "supervised"}
ICPR_SETTING = {"mvtec": "unsupervised", "visa": "unsupervised", "ksdd2": "N246, fully supervised", "sensum": "M100"}
DEFAULT_RATIO = {
    ("unsup", "mvtec"): "1",
    ("unsup", "visa"): "1",
    ("unsup", "ksdd2"): "unsup",
    ("unsup", "sensum"): "unsup",
    ("full", "ksdd2"): "246",
    ("full", "sensum"): "1",
    ("weak", "ksdd2"): "0",
    ("weak", "sensum"): "0",
}


@dataclass(frozen=True)
class PaperRow:
    source: str  # e.g. "ICPR 2024 (unsupervised)" or "JIMS 2025 mixed, ratio 16"
    category: str  # a category key of the JSON, or "total"
    mean: dict[str, float]  # metric name -> fraction in [0, 1]
    std: dict[str, float]  # metric name -> std over 5 runs

    def label(self) -> str:
        return f"{self.source}, {self.category}"


@cache
def load_reference(variant: str) -> dict:
    """variant: "icpr" or "jims" -> the parsed JSON."""
    path = REFERENCE_DIR / f"paper_results_{variant}.json"
    if not path.is_file():
        raise FileNotFoundError(f"paper results {str(path)!r} are missing (they ship with the repository)")
    return json.loads(path.read_text())


def _rows(avg: dict, std: dict, source: str, category: str | None) -> list[PaperRow]:
    metrics = [m for m, values in avg.items() if m not in ("ratio", "fold") and isinstance(values, dict)]
    available = avg[metrics[0]]
    keys = [c for c in (category, "total") if c is not None and c in available]
    if category in available and len(available) == 2:  # a one-category dataset (KSDD2): its total repeats it
        keys = [category]
    return [
        PaperRow(source, key, {m: avg[m][key] for m in metrics}, {m: std[m][key] for m in metrics if m in std})
        for key in dict.fromkeys(keys)
    ]


def paper_rows(
    dataset: str, category: str | None = None, regime: str = "unsupervised", ratio: str | None = None
) -> list[PaperRow]:
    """The published rows comparable with an evaluation of `dataset`/`category` trained under `regime`."""
    if dataset not in PAPER_DATASETS:
        return []
    if regime not in JIMS_REGIME:
        raise ValueError(f"unknown supervision regime {regime!r}; expected one of {sorted(JIMS_REGIME)}")
    rows: list[PaperRow] = []
    if ICPR_REGIME[dataset] == regime and ratio in (None, DEFAULT_RATIO.get((JIMS_REGIME[regime], dataset))):
        icpr = load_reference("icpr")
        source = f"ICPR 2024 ({ICPR_SETTING[dataset]})"
        rows += _rows(icpr["avg"][dataset], icpr["std"][dataset], source, category)
    jims = load_reference("jims").get(JIMS_REGIME[regime], {})
    default = DEFAULT_RATIO.get((JIMS_REGIME[regime], dataset))
    ratios = [str(ratio)] if ratio is not None else [default] if default else list(jims)
    for key in ratios:
        entry = jims.get(key)
        if entry is None or dataset not in entry["avg"]:
            continue
        source = f"JIMS 2025 ({regime}" + (")" if regime == "unsupervised" else f", ratio {key})")
        rows += _rows(entry["avg"][dataset], entry["std"][dataset], source, category)
    return rows
