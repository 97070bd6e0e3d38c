"""A few training steps of the tiny preset on an in-memory dataset; run by tests/test_ddp.py.

    torchrun --nproc-per-node 2 tests/ddp_fit.py OUT --batch 2      # 2 processes, per-process batch 2
    python tests/ddp_fit.py OUT --batch 4                            # 1 process, the same global batch

Each process writes OUT/rank<r>.pt: the trainable state (heads, adaptor, BN buffers) and the per-step global losses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_helpers import TensorDataset  # noqa: E402
from train_helpers import trainable_state  # noqa: E402

from pipeline.config import get_preset  # noqa: E402
from training import distributed  # noqa: E402
from training.model_init import build_model  # noqa: E402
from training.regimes import resolve  # noqa: E402
from training.trainer import FitOptions  # noqa: E402
from training.trainer import fit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="folder for rank<r>.pt")
    parser.add_argument("--batch", type=int, required=True, help="per-process batch size")
    parser.add_argument("--images", type=int, default=8, help="dataset size")
    parser.add_argument("--epochs", type=int, default=2, help="epochs")
    parser.add_argument("--supervision", default="unsupervised", help="regime")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    info = distributed.init_distributed(device)
    resolved = resolve(get_preset("tiny"), args.supervision)
    model, _ = build_model(resolved.model, "random", resolved.train.seed, impl="fast-cpu")
    defects = args.images // 2 if resolved.regime.uses_defects else 0
    data = TensorDataset(args.images, resolved.model, n_defect=defects, seed=5)
    init = trainable_state(model)
    opts = FitOptions(epochs=args.epochs, batch_size=args.batch, progress=False, feature_cache="off")
    result = fit(model, data, resolved, opts, device, info, log=lambda _m: None)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"init": init, "state": trainable_state(model), "losses": result.step_losses}, args.out / f"rank{info.rank}.pt"
    )
    distributed.shutdown(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
