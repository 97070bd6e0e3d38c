"""The synthetic defect dataset: the embedded default for the demo, the tests and the benchmarks.

`ssn synth --out DIR` writes a small MVTec-layout dataset of textured surfaces (thirteen families: brushed metal,
woven fabric, wood grain, speckled stone, leather, carpet, hairline metal, twill, concrete, perforated plate,
marble, wire mesh, halftone print; training/data/synthetic_textures.py) with scratches, spots, cracks and stains of
wide size, contrast and colour (training/data/synthetic_defects.py), each with its exact mask, as PNG files. Every
image comes from its own numpy Generator seeded by (seed, category, split, number), so the same seed gives
byte-identical files, and choosing fewer categories does not change the others.

    DIR/<category>/train/good/000.png
    DIR/<category>/train/<defect>/train_000.png               (labelled defects: the supervised regimes)
    DIR/<category>/test/good/000.png
    DIR/<category>/test/<defect>/000.png
    DIR/<category>/ground_truth/<defect>/000_mask.png          (0 good, 255 defect)
    DIR/<category>/ground_truth/<defect>/train_000_mask.png
    DIR/synthetic.json                                        (the generation parameters)

Like a production line with a few inspected rejects (KSDD2), the train split also holds labelled defective images
(`train_defects`, default 32: eight of each kind, drawn apart from the test ones). The unsupervised regime ignores
them; the MVTec AD reader, pointed at the same tree, reads train/good only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.synthetic_defects import DEFECTS
from training.data.synthetic_defects import apply_defect
from training.data.synthetic_defects import make_defect
from training.data.synthetic_textures import TEXTURES
from training.data.synthetic_textures import to_uint8

CATEGORIES = tuple(TEXTURES)  # metal, fabric, wood, stone, leather, ... (order fixes each category's seed)
DEFAULT_CATEGORY = "metal"
DEFAULTS = {"seed": 0, "size": 128, "train": 64, "test": 32, "train_defects": 32}
VERSION = 3  # 2: labelled training defects; 3: eleven families, a look per (seed, family), wider defects (mesh
# and halftone came later: a family's bytes depend only on its own index, so the others stayed as they were)
MANIFEST = "synthetic.json"
TREE = """\
ROOT/                                  (written by `ssn synth --out ROOT`; generated on first use when absent)
├── synthetic.json                     the generation parameters (version 3)
└── <category>/                        metal, fabric, wood, stone, leather, carpet, hairline, twill, concrete,
    │                                  perforated, marble, mesh, halftone
    ├── train/good/*.png               defect-free training images
    ├── train/<defect>/train_NNN.png   labelled defective training images (scratch, spot, crack, stain)
    ├── test/good/*.png
    ├── test/<defect>/NNN.png
    └── ground_truth/<defect>/<stem>_mask.png   masks of the test and training defects (0 good, 255 defect)"""
_SPLIT_IDS = {"train": 0, "test": 1, "train_defect": 2}


def image_rng(seed: int, category: str, split: str, number: int) -> np.random.Generator:
    return np.random.default_rng([seed, CATEGORIES.index(category), _SPLIT_IDS[split], number])


def look_rng(seed: int, category: str) -> np.random.Generator:
    """The line's look: the same draws for every image of (seed, category)."""
    return np.random.default_rng([seed, CATEGORIES.index(category), len(_SPLIT_IDS)])


def make_sample(
    seed: int, category: str, split: str, number: int, size: int, defect: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean uint8 [S, S, 3], image uint8 [S, S, 3], mask bool [S, S]); image == clean when defect is None."""
    rng = image_rng(seed, category, split, number)
    clean = TEXTURES[category](look_rng(seed, category), rng, size)
    mask = np.zeros((size, size), dtype=bool)
    image = clean
    if defect is not None:
        mask = make_defect(rng, size, defect)
        image = apply_defect(rng, clean, mask, defect)
    return to_uint8(clean), to_uint8(image), mask


def defect_cycle(count: int) -> list[str]:
    """`count` defect kinds cycling scratch, spot, crack, stain (the labelled training defects)."""
    kinds = list(DEFECTS)
    return [kinds[j % len(kinds)] for j in range(count)]


def test_plan(count: int) -> list[str | None]:
    """Defect kind per test image: the first half good (None), the rest cycling scratch, spot, crack, stain."""
    good = count // 2
    return [None] * good + defect_cycle(count - good)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", optimize=False)


def write_category(out: Path, category: str, seed: int, size: int, train: int, test: int, train_defects: int) -> None:
    root = out / category
    for number in range(train):
        _, image, _ = make_sample(seed, category, "train", number, size, None)
        _save_png(image, root / "train" / "good" / f"{number:03}.png")
    for number, defect in enumerate(defect_cycle(train_defects)):
        _, image, mask = make_sample(seed, category, "train_defect", number, size, defect)
        stem = f"train_{number:03}"
        _save_png(image, root / "train" / defect / f"{stem}.png")
        _save_png(mask.astype(np.uint8) * 255, root / "ground_truth" / defect / f"{stem}_mask.png")
    counters: dict[str, int] = {}
    for number, defect in enumerate(test_plan(test)):
        _, image, mask = make_sample(seed, category, "test", number, size, defect)
        folder = defect or "good"
        stem = f"{counters.setdefault(folder, 0):03}"
        counters[folder] += 1
        _save_png(image, root / "test" / folder / f"{stem}.png")
        if defect is not None:
            _save_png(mask.astype(np.uint8) * 255, root / "ground_truth" / defect / f"{stem}_mask.png")


def parameters(seed: int, size: int, train: int, test: int, train_defects: int) -> dict:
    if size < 32 or train < 1 or test < 2 or train_defects < 0:
        raise ValueError(
            f"synthetic size={size} must be >= 32, train={train} >= 1, test={test} >= 2 and "
            f"train_defects={train_defects} >= 0"
        )
    return {
        "seed": seed,
        "size": size,
        "train": train,
        "test": test,
        "train_defects": train_defects,
        "version": VERSION,
    }


def check_categories(categories) -> list[str]:
    cats = list(CATEGORIES if categories is None else categories)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"synthetic categories {unknown} are unknown; accepted: {', '.join(CATEGORIES)}")
    return cats


def add_categories(root: Path, categories, params: dict) -> None:
    """Write the categories missing under `root`, each in a staging folder renamed into place when complete (a
    category folder is there whole or not at all; two processes adding the same one both succeed)."""
    for category in check_categories(categories):
        if (root / category).is_dir():
            continue
        staging = Path(tempfile.mkdtemp(prefix=f".{category}.", dir=root))
        try:
            write_category(staging, category, **{k: params[k] for k in DEFAULTS})
            try:
                os.replace(staging / category, root / category)
            except OSError:
                if not (root / category).is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def generate(
    out: str | Path,
    seed: int = 0,
    size: int = 128,
    train: int = 64,
    test: int = 32,
    categories=None,
    train_defects: int = 32,
) -> Path:
    """Write the dataset (`categories`, default all) to `out`, which must not exist or be empty; returns `out`."""
    params = parameters(seed, size, train, test, train_defects)
    categories = check_categories(categories)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output folder {str(out)!r} is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target and renamed at the end: an interrupted run leaves no half dataset under `out`
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        add_categories(staging, categories, params)
        (staging / MANIFEST).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def default_root(seed: int, size: int, train: int, test: int, train_defects: int) -> Path:
    """Per generator version and parameters, so datasets of other versions (other checkouts) never collide."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "supersimplenet" / f"synthetic-v{VERSION}-s{seed}-{size}px-{train}+{train_defects}x{test}"


def ensure(root: str | Path | None = None, category: str = DEFAULT_CATEGORY, **wanted) -> Path:
    """The dataset at `root` (default: a per-parameter folder under ~/.cache) holding `category`, which is
    generated first if absent (only the categories used are generated).

    `wanted` holds seed/size/train/test/train_defects; those given (not None) must match an existing dataset's
    manifest, and a dataset written by an older generator version is refused (regenerate it).
    """
    given = {k: v for k, v in wanted.items() if v is not None}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic parameter(s) {sorted(unknown)}; accepted: {', '.join(DEFAULTS)}")
    params = {**DEFAULTS, **given}
    root = Path(root) if root is not None else default_root(**params)
    manifest = root / MANIFEST
    if not manifest.is_file():
        try:
            return generate(root, categories=[category], **params)
        except (OSError, ValueError):
            if not manifest.is_file():
                raise
            # another process created the dataset meanwhile (other categories, same folder): add ours below
    found = json.loads(manifest.read_text())
    if found.get("version") != VERSION:
        raise ValueError(
            f"{str(root)!r} holds a synthetic dataset of generator version {found.get('version')}, this code "
            f"writes version {VERSION}: delete the folder or choose a new one"
        )
    differ = {k: (v, found.get(k)) for k, v in given.items() if found.get(k) != v}
    if differ:
        shown = ", ".join(f"{k}={want} (found {have})" for k, (want, have) in differ.items())
        raise ValueError(f"{str(root)!r} holds a synthetic dataset made with other parameters: {shown}")
    add_categories(root, [category], {k: found[k] for k in DEFAULTS})
    return root


def build(
    root: Path | None,
    split: str,
    config,
    category: str | None = None,
    seed: int | None = None,
    size: int | None = None,
    train: int | None = None,
    test: int | None = None,
    train_defects: int | None = None,
    **common,
):
    """Dataset factory entry: generates the category on first use, then reads it as MVTec AD.

    `category` defaults to DEFAULT_CATEGORY; seed/size/train/test/train_defects default to DEFAULTS when generating.
    """
    from training.data.base import DefectDataset
    from training.data.base import require_category
    from training.data.mvtec import mvtec_mask_stems
    from training.data.mvtec import scan_mvtec_like

    category = category or DEFAULT_CATEGORY
    if category not in CATEGORIES:
        raise ValueError(f"synthetic category {category!r} is unknown; accepted: {', '.join(CATEGORIES)}")
    root = ensure(root, category, seed=seed, size=size, train=train, test=test, train_defects=train_defects)
    category_root = require_category(root, category, "train/good", TREE)
    records = scan_mvtec_like(category_root, split, TREE, mvtec_mask_stems, "synthetic (MVTec AD)", train_defects=True)
    hint = f"in {category_root / 'ground_truth'}/<defect>/<stem>_mask.png"
    return DefectDataset(records, config, split, source=f"synthetic/{category}", mask_hint=hint, **common)


def configure_synth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) folder to write the dataset to")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="generator seed; same seed = same bytes")
    parser.add_argument(
        "--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES, help="surface categories to write"
    )
    parser.add_argument("--size", type=int, default=DEFAULTS["size"], help="image side in pixels (square images)")
    parser.add_argument("--train", type=int, default=DEFAULTS["train"], help="good training images per category")
    parser.add_argument(
        "--test", type=int, default=DEFAULTS["test"], help="test images per category (half good, half defective)"
    )
    parser.add_argument(
        "--train-defects",
        type=int,
        default=DEFAULTS["train_defects"],
        help="labelled defective training images per category, with masks (the supervised regimes; 0: none)",
    )


def run_synth(args: argparse.Namespace) -> int:
    out = generate(args.out, args.seed, args.size, args.train, args.test, args.categories, args.train_defects)
    per_category = args.train + args.train_defects + args.test
    print(f"wrote {len(args.categories)} categories x {per_category} images ({args.size}x{args.size}) to {out}")
    print(f"categories: {', '.join(args.categories)}; defects: {', '.join(DEFECTS)}; seed {args.seed}")
    return 0
