"""Seeds, RNG states, atomic files and the resumable training state.

Periodic checkpoints are pairs in `<out>.ckpts/`:
    epoch_0010.safetensors   the model after 10 epochs (pipeline/checkpoint.py; loadable by ssn infer / eval)
    epoch_0010.state.pt      optimizer, scheduler, RNG states, sampler state, history, configs, and the SHA-256
                             of the model file; plain containers and tensors only, read with weights_only=True
Every file is written to a temporary name in the same folder and renamed (os.replace), so an interrupted run
leaves either the previous file or the new one, never half of one; a pair is used only when both files exist and
the hash matches. The final checkpoint `--out` is written the same way, once, at the end.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import atomic_write
from pipeline.checkpoint import file_sha256

STATE_FORMAT = "supersimplenet-train-state/1"
_PAIR = re.compile(r"^epoch_(\d+)\.state\.pt$")


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (all devices) seeded; cuDNN deterministic (the authors' setup)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".ckpts")


def pair_paths(folder: Path, epoch: int) -> tuple[Path, Path]:
    return folder / f"epoch_{epoch:04d}.safetensors", folder / f"epoch_{epoch:04d}.state.pt"


def scheduler_state(scheduler) -> dict:
    state = dict(scheduler.state_dict())
    if isinstance(state.get("milestones"), Counter):
        state["milestones"] = dict(state["milestones"])
    return state


def load_scheduler_state(scheduler, state: dict) -> None:
    state = dict(state)
    if "milestones" in state:
        state["milestones"] = Counter(state["milestones"])
    scheduler.load_state_dict(state)


def save_pair(
    folder: Path,
    epoch: int,
    write_model: Callable[[Path], object],
    state: dict,
    keep: int = 2,
) -> tuple[Path, Path]:
    """Model file, then the state naming the model's hash; older pairs beyond `keep` are removed.
    write_model(path) writes the model file (save_checkpoint: write, then rename)."""
    model_path, state_path = pair_paths(folder, epoch)
    write_model(model_path)
    payload = {"format": STATE_FORMAT, "epoch": epoch, "model_sha256": file_sha256(model_path), **state}
    atomic_write(state_path, lambda tmp: torch.save(payload, tmp))
    for old in sorted(available_epochs(folder))[:-keep]:
        for p in pair_paths(folder, old):
            p.unlink(missing_ok=True)
    return model_path, state_path


def available_epochs(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _PAIR.match(p.name)))


def load_latest_pair(folder: Path) -> tuple[Path, dict]:
    """(model file, state) of the newest complete pair; errors name the folder and what was found."""
    epochs = available_epochs(folder)
    if not epochs:
        raise FileNotFoundError(f"nothing to resume: no epoch_NNNN.state.pt in {str(folder)!r}")
    problems = []
    for epoch in reversed(epochs):
        model_path, state_path = pair_paths(folder, epoch)
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or foreign file: try the previous pair
            problems.append(f"{state_path.name}: unreadable ({err})")
            continue
        if state.get("format") != STATE_FORMAT:
            problems.append(f"{state_path.name}: format {state.get('format')!r}, want {STATE_FORMAT!r}")
        elif not model_path.is_file():
            problems.append(f"{model_path.name}: missing")
        elif file_sha256(model_path) != state.get("model_sha256"):
            problems.append(f"{model_path.name}: does not match its state file (hash)")
        else:
            return model_path, state
    raise RuntimeError(f"no complete checkpoint pair in {str(folder)!r}: " + "; ".join(problems))
