"""Training progress and the metrics log of the one loop (pyica.training.loop): a row per epoch (and every
``log_every`` steps) in a JSONL file, kept free of duplicates across a crash and a resume; a progress bar
with a total; TensorBoard scalars when it imports, nothing when it does not."""

from __future__ import annotations

import json
import math
import re
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from pyica.metrics import srcc
from pyica.training import loop
from pyica.training.loop import Batch, LoopSettings
from pyica.training.resume import CheckpointFile, FitCheckpoints

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
EPOCH_KEYS = {"fit", "key", "kind", "epoch", "step", "loss", "lr", "val_srcc", "best_epoch", "seconds"}


class LinearTask:
    """A tiny TrainingTask: a linear model fitted to a noisy linear target by SGD; 24 samples in batches
    of 4, 6 steps an epoch, the order of epoch e drawn from e alone; validation = SRCC on 12 more."""

    def __init__(self, seed: int = 0, fail_at_step: int | None = None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(36, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(36, generator=g)
        torch.manual_seed(seed)
        self.module = nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.05)
        self.steps_per_epoch, self.fail_at_step, self.steps = 6, fail_at_step, 0

    def epoch_batches(self, epoch, dist, skip=0):  # noqa: ARG002
        order = torch.randperm(24, generator=torch.Generator().manual_seed(epoch))
        for i in range(skip, self.steps_per_epoch):
            idx = order[4 * i:4 * i + 4]
            yield Batch(idx, len(idx), len(idx))

    def loss(self, net, batch):
        self.steps += 1
        if self.fail_at_step is not None and self.steps == self.fail_at_step:
            raise KeyboardInterrupt("killed")  # a crash in the middle of an epoch
        pred = net(self.x[batch.data]).squeeze(1)
        loss = ((pred - self.y[batch.data]) ** 2).mean()
        return loss, {"loss": float(loss.detach()), "mse_x2": 2 * float(loss.detach())}

    def learning_rate(self, step, epoch):  # noqa: ARG002
        return 0.05 / (1 + step / 10)

    def validate(self):
        with torch.no_grad():
            pred = self.module(self.x[24:]).squeeze(1).numpy()
        return float(srcc(pred, self.y[24:].numpy()))

    def trainable_state(self):
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_trainable_state(self, state):
        self.module.load_state_dict(state)


def _rows(path, kind=None):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def _stable(rows):  # what a resumed run must repeat exactly: all but the timings
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]


def test_metrics_log_has_a_row_per_epoch_and_step_rows_every_n(tmp_path):
    log_path = tmp_path / "run" / "metrics.jsonl"
    task = LinearTask()
    fit = loop.run(task, LoopSettings(epochs=3, metrics_log=log_path, log_every=4, description="toy"), device=CPU)
    epochs = _rows(log_path, "epoch")
    assert len(epochs) == 3 == len(fit.history)
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and [r["step"] for r in epochs] == [6, 12, 18]
    for row, hist in zip(epochs, fit.history):
        assert EPOCH_KEYS - {"key"} <= set(row) and row["fit"] == "toy" and "key" not in row
        assert math.isfinite(row["loss"]) and math.isfinite(row["val_srcc"]) and row["seconds"] >= 0
        assert row["loss"] == hist["loss"] and row["val_srcc"] == hist["val_srcc"]
        assert row["mse_x2"] == pytest.approx(2 * row["loss"])
    assert epochs[-1]["loss"] < epochs[0]["loss"]  # it learns
    assert epochs[-1]["best_epoch"] == fit.best_epoch >= 1
    steps = _rows(log_path, "step")
    assert [r["step"] for r in steps] == [4, 8, 12, 16]
    assert [r["epoch"] for r in steps] == [1, 2, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["lr"] == pytest.approx(0.05 / (1 + (r["step"] - 1) / 10))
               and r["images_per_s"] > 0 for r in steps)


def test_default_log_is_the_run_folder_beside_the_checkpoints_and_none_without(tmp_path):
    fits = FitCheckpoints(tmp_path / "out" / "checkpoints", resume=False)
    loop.run(LinearTask(), LoopSettings(epochs=2, description="toy"), device=CPU, checkpoint=fits.file("k1"))
    loop.run(LinearTask(seed=1), LoopSettings(epochs=2, description="toy"), device=CPU, checkpoint=fits.file("k2"))
    rows = _rows(tmp_path / "out" / loop.METRICS_LOG, "epoch")
    assert [(r["key"], r["epoch"]) for r in rows] == [("k1", 1), ("k1", 2), ("k2", 1), ("k2", 2)]
    fits.remove()  # the checkpoints go when the weights are written; the log stays
    assert (tmp_path / "out" / loop.METRICS_LOG).exists() and not (tmp_path / "out" / "checkpoints").exists()

    bare = tmp_path / "bare"
    bare.mkdir()
    loop.run(LinearTask(), LoopSettings(epochs=1), device=CPU)  # no checkpoint, no metrics_log: no file
    assert list(bare.iterdir()) == [] and not (tmp_path / loop.METRICS_LOG).exists()


def test_a_resumed_fit_keeps_the_log_of_an_uninterrupted_one(tmp_path, capsys):
    settings = dict(epochs=4, log_every=2, description="toy")
    whole = tmp_path / "whole.jsonl"
    loop.run(LinearTask(), LoopSettings(**settings, metrics_log=whole), device=CPU)
    expected = _rows(whole)

    log_path, ck = tmp_path / "crash.jsonl", tmp_path / "fit.pt"
    other = {"fit": "other", "kind": "epoch", "epoch": 9, "step": 99, "loss": 1.0}
    log_path.write_text(json.dumps(other) + "\n")  # another fit's row: never touched
    # killed at step 15 (epoch 3), after the step rows of steps 14 and the checkpoint of epoch 2 (step 12)
    with pytest.raises(KeyboardInterrupt):
        loop.run(LinearTask(fail_at_step=15), LoopSettings(**settings, metrics_log=log_path), device=CPU,
                 checkpoint=CheckpointFile(ck, resume=False, key="fit-a"))
    mine = [r for r in _rows(log_path) if r["fit"] == "toy"]
    assert max(r["step"] for r in mine) == 14 and [r["epoch"] for r in mine if r["kind"] == "epoch"] == [1, 2]
    capsys.readouterr()

    fit = loop.run(LinearTask(), LoopSettings(**settings, metrics_log=log_path, progress=True), device=CPU,
                   checkpoint=CheckpointFile(ck, resume=True, key="fit-a"))
    assert fit.resumed_after_epoch == 2
    rows = _rows(log_path)
    assert rows[0] == other
    mine = [r for r in rows[1:] if r["fit"] == "toy"]
    assert [r["epoch"] for r in mine if r["kind"] == "epoch"] == [1, 2, 3, 4]  # no duplicate epoch
    steps = [r["step"] for r in mine if r["kind"] == "step"]
    assert steps == sorted(set(steps)) == list(range(2, 25, 2))  # no duplicate step either
    assert _stable([{k: v for k, v in r.items() if k != "key"} for r in mine]) == _stable(expected)
    err = capsys.readouterr().err
    assert "24/24" in err and "toy epoch 4/4" in err  # the bar went on from 12/24 to its total

    # the same fit started afresh (no resume) replaces its rows; the other fit's stay
    loop.run(LinearTask(), LoopSettings(**settings, metrics_log=log_path), device=CPU,
             checkpoint=CheckpointFile(ck, resume=False, key="fit-a"))
    rows = _rows(log_path)
    assert rows[0] == other and [r["epoch"] for r in rows if r["kind"] == "epoch" and r["fit"] == "toy"] == [1, 2, 3, 4]


def test_progress_has_a_total_an_epoch_count_and_a_line_per_epoch(tmp_path, capsys, caplog):
    loop.run(LinearTask(), LoopSettings(epochs=3, progress=True, description="toy"), device=CPU)
    err = capsys.readouterr().err
    assert "18/18" in err and "toy epoch 3/3" in err and ("step/s" in err or "s/step" in err)
    assert re.search(r"18/18 \[\d\d:\d\d<\d\d:\d\d", err)  # elapsed<ETA
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("toy epoch ") and ": loss " in line]
    assert [line.split(":")[0] for line in lines] == ["toy epoch 1/3", "toy epoch 2/3", "toy epoch 3/3"]
    assert all("val_srcc" in line and "lr" in line for line in lines)
    # without a bar the same line goes to the log
    with caplog.at_level("INFO", logger="pyica.training.loop"):
        loop.run(LinearTask(), LoopSettings(epochs=2, description="quiet"), device=CPU)
    assert "quiet epoch 2/2: loss" in caplog.text and "18/18" not in capsys.readouterr().err


def test_tensorboard_scalars_when_it_imports_and_nothing_when_it_does_not(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("open", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    loop.run(LinearTask(), LoopSettings(epochs=2, metrics_log=tmp_path / "m.jsonl", log_every=3, description="toy"),
             device=CPU)
    assert calls[0] == ("open", str(tmp_path / "tensorboard" / "toy"), None) and calls[-1] == ("close",)
    epoch_loss = [(v, s) for tag, *rest in calls[1:-1] if tag == "epoch/loss" for v, s in [rest]]
    rows = _rows(tmp_path / "m.jsonl", "epoch")
    assert epoch_loss == [(r["loss"], r["step"]) for r in rows]
    assert {t for t, *_ in calls[1:-1]} >= {"epoch/val_srcc", "epoch/lr", "step/loss", "step/images_per_s"}

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed: import fails
    loop.run(LinearTask(), LoopSettings(epochs=1, metrics_log=tmp_path / "n" / "m.jsonl"), device=CPU)
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["m.jsonl"]


def test_probe_trainer_writes_the_run_log_beside_its_checkpoints(tmp_path):
    from test_clicv2_probe import make_probe, recipe, tiny_config, toy_dataset

    from pyica.models.clicv2_probe import random_encoder
    from pyica.training.probe import ProbeTrainer

    encoder = random_encoder(tiny_config(), seed=0, arch="vit_tiny")
    ds = toy_dataset(tmp_path / "data", n=16, categories=("a", "b"))
    trainer = ProbeTrainer(lambda: make_probe(encoder, "linear"), recipe(epochs=3, batch_size=4, lr=0.1,
                           lr_grid=(0.05, 0.2)), checkpoint_dir=tmp_path / "out" / "checkpoints")
    trainer.fit_dataset(ds.subset(np.arange(10)), ds.subset(np.arange(10, 16)))
    rows = _rows(tmp_path / "out" / loop.METRICS_LOG, "epoch")
    keys = sorted({r["key"] for r in rows})
    assert len(keys) == 2  # one fit per learning rate of the grid
    for key in keys:
        mine = [r for r in rows if r["key"] == key]
        assert [r["epoch"] for r in mine] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in mine)
        assert EPOCH_KEYS <= set(mine[0]) and [r["step"] for r in mine] == [3, 6, 9]


def test_pretraining_log_is_the_loops_log_and_a_resume_keeps_it_consistent(tmp_path):
    from test_pretrain import _build_toy, toy_pretrain_config

    from pyica.training import pretrain as pt

    cfg = toy_pretrain_config(tmp_path)
    run = dict(build_model=_build_toy, device="cpu", num_workers=0, progress=False)
    pt.pretrain(cfg, max_steps=5, **run)  # stops in epoch 2 (3 steps an epoch), checkpoint at step 5
    pt.pretrain(cfg, resume=True, **run)
    rows = _rows(tmp_path / "out" / pt.LOG)
    assert {r["fit"] for r in rows} == {"pretraining"}
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["contrastive"]) for r in rows)  # the toy's one loss part
    assert all(math.isfinite(r["loss"]) for r in rows if r["kind"] == "step")
