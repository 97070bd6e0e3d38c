"""Checkpoint pairs, exact resume (schedule and loss curve), and write-then-rename on interruption."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from train_helpers import SMALL
from train_helpers import TensorDataset
from train_helpers import trainable_state

import pipeline.checkpoint as checkpoint_module
from pipeline.config import get_preset
from training import state as st
from training.regimes import resolve
from training.trainer import FitOptions
from training.trainer import fit

CPU = torch.device("cpu")
EPOCHS = 5  # milestones int(0.8*5)=4 and int(0.9*5)=4: the lr drops inside the resumed part


def train(out, **kw):
    resolved = resolve(get_preset("tiny"), "unsupervised", model=SMALL)
    model = make_model(SMALL, seed=0)
    opts = FitOptions(epochs=EPOCHS, batch_size=2, out=out, progress=False, feature_cache="off", **kw)
    result = fit(model, TensorDataset(2, SMALL, seed=2), resolved, opts, CPU, log=lambda _m: None)
    return model, result


def test_resume_continues_schedule_and_loss_curve(tmp_path):
    full_model, full = train(tmp_path / "a" / "ck.safetensors")
    out = tmp_path / "b" / "ck.safetensors"
    _, first = train(out, checkpoint_every=1, stop_after=3)  # an interrupted run: 3 of 5 epochs
    assert st.available_epochs(st.checkpoint_dir(out)) == [2, 3]  # the last two pairs are kept
    resumed_model, second = train(out, checkpoint_every=1, resume=True)
    assert first.step_losses + second.step_losses == full.step_losses  # the same curve, exactly
    assert [h["lr"] for h in second.history] == [h["lr"] for h in full.history]
    seg_lr = resolve(get_preset("tiny"), "unsupervised").train.seg_lr
    assert second.history[-1]["lr"][1] == pytest.approx(seg_lr * 0.4 * 0.4)  # both milestones passed
    a, b = trainable_state(full_model), trainable_state(resumed_model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_setup_and_damaged_pairs(tmp_path):
    out = tmp_path / "ck.safetensors"
    train(out, checkpoint_every=1, stop_after=2)
    resolved = resolve(get_preset("tiny"), "unsupervised", model=SMALL)
    other = FitOptions(epochs=EPOCHS, batch_size=3, out=out, resume=True, progress=False, feature_cache="off")
    with pytest.raises(ValueError, match="batch_size: saved 2, now 3"):
        fit(make_model(SMALL), TensorDataset(2, SMALL), resolved, other, CPU, log=lambda _m: None)
    folder = st.checkpoint_dir(out)
    model_2, _ = st.pair_paths(folder, 2)
    model_2.write_bytes(model_2.read_bytes()[:100])  # damaged newest pair: the previous one is used
    path, state = st.load_latest_pair(folder)
    assert state["epoch"] == 1 and path.name == "epoch_0001.safetensors"


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "ck.safetensors"
    model = make_model(SMALL)
    real_save = checkpoint_module.save_file

    def crash_midway(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(64)  # half a file on disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        st.atomic_write(out, lambda tmp: checkpoint_module.save_checkpoint(model, tmp, "random"))
    assert list(tmp_path.iterdir()) == []  # neither a final file nor a leftover temporary
    monkeypatch.setattr(checkpoint_module, "save_file", real_save)
    st.atomic_write(out, lambda tmp: checkpoint_module.save_checkpoint(model, tmp, "random"))
    previous = out.read_bytes()
    monkeypatch.setattr(checkpoint_module, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        st.atomic_write(out, lambda tmp: checkpoint_module.save_checkpoint(model, tmp, "random"))
    assert out.read_bytes() == previous and [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]
