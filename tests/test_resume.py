"""Crash-safe training: a fit killed after epoch k and resumed ends with exactly the weights of an
uninterrupted fit (CPU, bit for bit), for the probe trainer, the CM-SSA trainer and
``pyica train CONFIG --resume``. The "kill" is an exception raised right after a checkpoint is
written, so the epoch in progress is lost as it would be."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyica.training import loop
from pyica.training.resume import CHECKPOINT_FORMAT, CheckpointFile, FitCheckpoints


class _Crash(Exception):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")


def crash_after_saves(monkeypatch, n: int) -> list[dict]:
    """Make the ``n``-th checkpoint write raise after writing; returns the states written."""
    original, written = CheckpointFile.save, []

    def save(self, state):
        original(self, state)
        written.append(state)
        if len(written) == n:
            raise _Crash(f"killed after checkpoint {n} (epoch {state['epoch']})")

    monkeypatch.setattr(CheckpointFile, "save", save)
    return written


def fit_then_crash(trainer, train, val, checkpoint_dir, monkeypatch, saves: int):
    """An uninterrupted fit (trainer and result), then the same fit with checkpoints in ``checkpoint_dir``
    killed after its ``saves``-th checkpoint write; returns them and the states written before the kill."""
    whole = trainer()
    expected = whole.fit_dataset(train, val)
    written = crash_after_saves(monkeypatch, saves)
    with pytest.raises(_Crash):
        trainer(checkpoint_dir=checkpoint_dir).fit_dataset(train, val)
    monkeypatch.undo()
    return whole, expected, written


def _rows(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# --- probes --------------------------------------------------------------------------------------------

def test_probe_resumed_after_a_crash_ends_exactly_like_an_uninterrupted_fit(tmp_path, monkeypatch):
    from test_clicv2_probe import make_probe, recipe, tiny_config, toy_dataset

    from pyica.models.clicv2_probe import random_encoder
    from pyica.training.probe import ProbeTrainer, TokenCache

    encoder = random_encoder(tiny_config(), seed=0, arch="vit_tiny")
    ds = toy_dataset(tmp_path / "data", n=16, categories=("a", "b"))
    train, val = ds.subset(np.arange(10)), ds.subset(np.arange(10, 16))
    r = recipe(epochs=5, batch_size=4, lr=0.1, lr_grid=(0.05, 0.2))  # two fits, one checkpoint file each
    cache = TokenCache()

    def trainer(**kw):
        return ProbeTrainer(lambda: make_probe(encoder, "linear"), r, cache=cache, **kw)

    # 4 epoch checkpoints + 1 finished for lr 0.05, then lr 0.2 is killed after its epoch 2
    whole, expected, written = fit_then_crash(trainer, train, val, tmp_path / "ck", monkeypatch, 7)
    assert [s["finished"] for s in written] == [False] * 4 + [True, False, False]
    files = FitCheckpoints(tmp_path / "ck").files()
    assert len(files) == 2
    for f in files:  # plain tensors and containers only
        assert torch.load(f, weights_only=True)["format"] == CHECKPOINT_FORMAT

    resumed = trainer(checkpoint_dir=tmp_path / "ck", resume=True)
    got = resumed.fit_dataset(train, val)
    state, want = resumed.model.head.state_dict(), whole.model.head.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    assert _rows(got["history"]) == _rows(expected["history"])
    assert (got["lr"], got["best_epoch"], got["lr_grid"]) == (expected["lr"], expected["best_epoch"], expected["lr_grid"])

    # resumed again, both fits are finished: restored from their files, not retrained
    again = trainer(checkpoint_dir=tmp_path / "ck", resume=True)
    monkeypatch.setattr(loop, "_update", lambda *a: pytest.fail("a finished fit was retrained"))
    assert _rows(again.fit_dataset(train, val)["history"]) == _rows(expected["history"])


# --- CM-SSA --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    from pyica.models.cmssa_offline import minilm_path

    return transformers.AutoTokenizer.from_pretrained(minilm_path())


def _tiny_encoders(tokenizer):
    from test_cmssa import tiny_offline

    torch.manual_seed(0)
    return tiny_offline(tokenizer, embed_dim=16)


CMSSA_SETTINGS = dict(n_ctx=2, depth=1, patch_size=64, patch_stride=64, max_patches=1, eval_short_side=64)


def test_cmssa_resumed_after_a_crash_ends_exactly_like_an_uninterrupted_fit(tmp_path, monkeypatch, tokenizer):
    import copy

    from test_cmssa import _toy_dataset

    from pyica.models.cmssa import CMSSA, CMSSAConfig
    from pyica.training.train_cmssa import CMSSATrainer, TrainRecipe

    ds = _toy_dataset(tmp_path, n=12)
    captions = {p: f"an image with {i} things" for i, p in enumerate(ds.full_paths())}
    encoders, config = _tiny_encoders(tokenizer), CMSSAConfig(**CMSSA_SETTINGS)
    recipe = TrainRecipe(epochs=4, batch_size=4, lr=1e-2, train_short_side=64, train_crops=2, num_workers=0,
                         patience=None, device="cpu")

    def trainer(**kw):
        return CMSSATrainer(lambda: CMSSA(copy.deepcopy(encoders), config), recipe, captions=captions, **kw)

    train, val = ds.subset(np.arange(8)), ds.subset(np.arange(8, 12))
    whole, expected, _ = fit_then_crash(trainer, train, val, tmp_path / "ck", monkeypatch, 2)
    resumed = trainer(checkpoint_dir=tmp_path / "ck", resume=True)
    got = resumed.fit_dataset(train, val)
    state, want = resumed.model.trainable_state_dict(), whole.model.trainable_state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    assert _rows(got["history"]) == _rows(expected["history"]) and got["best_epoch"] == expected["best_epoch"]


def test_cli_train_resume_continues_a_killed_cmssa_run(tmp_path, monkeypatch, tokenizer):
    from test_cmssa import _toy_dataset

    import pyica.models.cmssa as cmssa_module
    from pyica.weights import load_weights
    from pyica.cli import main
    from pyica.data.manifest import write_manifest

    ds = _toy_dataset(tmp_path, n=12)
    write_manifest(ds, tmp_path / "toy.csv")
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"path": p, "caption": f"an image with {i} things"}) + "\n"
                                for i, p in enumerate(ds.full_paths())))
    config = {"method": "cmssa", "model": "cmssa_offline.lite2_minilm", "dataset": "toy.csv",
              "encoders": {"kind": "offline", "image_variant": "lite0", "embed_dim": 16},
              "cmssa": CMSSA_SETTINGS, "captions": {"file": str(captions)},
              "recipe": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "train_crops": 1, "train_short_side": 64,
                         "patience": None},
              "evaluation": {"protocol": "random", "n_splits": 2, "seed": 0, "test_fraction": 0.25,
                             "val_fraction": 0.2}}
    (tmp_path / "cmssa.json").write_text(json.dumps(config))
    monkeypatch.setattr(cmssa_module, "build_encoders", lambda spec, **kw: _tiny_encoders(tokenizer))

    def train(out, *extra, verbose=False):  # -v lets an exception through instead of printing one line
        return main([*(["-v"] if verbose else []), "train", str(tmp_path / "cmssa.json"), "--output-dir", str(tmp_path / out), "--workers", "0",
                     "--device", "cpu", "-q", *extra])

    assert train("whole") == 0
    # 3 fits (2 evaluation splits, then the final one) of 3 epochs: 2 epoch checkpoints + 1 finished each;
    # killed in the second split after its first epoch
    crash_after_saves(monkeypatch, 4)
    with pytest.raises(_Crash):
        train("killed", verbose=True)
    monkeypatch.undo()
    monkeypatch.setattr(cmssa_module, "build_encoders", lambda spec, **kw: _tiny_encoders(tokenizer))
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert len(list(checkpoints.glob("fit-*.pt"))) == 2
    assert train("killed") == 2  # leftover checkpoints without --resume: an error, nothing overwritten
    # pyica 0.1 kept CM-SSA's fits in <model>.checkpoints: an interrupted run there continues from there
    checkpoints = checkpoints.rename(tmp_path / "killed" / "cmssa_offline.lite2_minilm.checkpoints")
    assert train("killed", "--resume") == 0
    assert not checkpoints.exists()  # removed once the weights are written
    name = "cmssa_offline.lite2_minilm"
    a, b = (load_weights(tmp_path / run / f"{name}.safetensors")[0] for run in ("whole", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card_a = json.loads((tmp_path / "whole" / f"{name}.json").read_text())
    card_b = json.loads((tmp_path / "killed" / f"{name}.json").read_text())
    assert card_a["evaluation"] == card_b["evaluation"]
    assert _rows(card_a["training"]["history"]) == _rows(card_b["training"]["history"])


# --- checkpoints of the four loops before training/loop.py --------------------------------------------

def _as_icnet_v1(state: dict) -> dict:
    """A checkpoint in the layout pyica 0.1's ICNet trainer wrote (``optimiser``, ``best_state``, ...)."""
    old = {"format": "pyica.fit_checkpoint/1", "key": state["key"], "finished": state["finished"],
           "epoch": state["epoch"], "model": state["model"], "history": state["history"],
           "best_score": state["best"]["score"], "best_epoch": state["best"]["epoch"]}
    if not state["finished"]:
        old.update(iteration=state["step"], stale=state["stale"], optimiser=state["optimizer"],
                   best_state=state["best"]["state"])
    return old


def test_an_icnet_checkpoint_of_the_older_layout_resumes_exactly(tmp_path, monkeypatch):
    from test_icnet import TINY, _toy_manifest

    from pyica.data.manifest import read_manifest
    from pyica.models.icnet import ICNet, ICNetConfig, ICNetModel
    from pyica.training.train_icnet import ICNetRecipe, ICNetTrainer

    ds = read_manifest(_toy_manifest(tmp_path / "data"))
    train, val = ds.subset(np.arange(6)), ds.subset(np.arange(6, 12))
    recipe = ICNetRecipe(epochs=3, batch_size=4, lr=0.01, device="cpu", num_workers=0)

    def trainer(**kw):
        return ICNetTrainer(lambda: ICNetModel(ICNet(ICNetConfig(**TINY))), recipe, **kw)

    whole, expected, _ = fit_then_crash(trainer, train, val, tmp_path / "ck", monkeypatch, 1)
    (file,) = FitCheckpoints(tmp_path / "ck").files()
    torch.save(_as_icnet_v1(torch.load(file, weights_only=True)), file)

    resumed = trainer(checkpoint_dir=tmp_path / "ck", resume=True)
    got = resumed.fit_dataset(train, val)
    assert got["resumed_after_epoch"] == 1 and _rows(got["history"]) == _rows(expected["history"])
    want = whole.model.net.state_dict()
    assert all(torch.equal(resumed.model.net.state_dict()[k], v) for k, v in want.items())


def test_a_foreign_or_torn_checkpoint_fails_with_one_line_naming_it(tmp_path):
    path = tmp_path / "fit-x.pt"
    torch.save({"format": "something/else"}, path)
    with pytest.raises(ValueError, match=r"fit-x\.pt: not a pyica checkpoint"):
        CheckpointFile(path).load()
    path.write_bytes(b"torn")
    with pytest.raises(ValueError, match=r"fit-x\.pt: unreadable checkpoint"):
        CheckpointFile(path).load()


def test_the_probe_and_cmssa_layouts_of_pyica_0_1_are_read():
    from pyica.training.resume import upgrade_checkpoint

    state = {"w": torch.ones(2)}
    probe = upgrade_checkpoint({"format": "pyica.fit_checkpoint/1", "key": "k", "finished": False, "epoch": 2,
                                "model": state, "optimizer": {"state": {}}, "scaler": {}, "stale": 1, "iteration": 8,
                                "best": {"score": 0.5, "epoch": 1, "state": state}, "history": [{"epoch": 1}],
                                "rng": None})
    assert (probe["format"], probe["step"], probe["epoch"], probe["stale"]) == (CHECKPOINT_FORMAT, 8, 2, 1)
    assert probe["best"]["epoch"] == 1 and probe["optimizer"] == {"state": {}}
    cmssa = upgrade_checkpoint({"format": "pyica.fit_checkpoint/1", "key": "k", "finished": True, "epoch": 3,
                                "model": state, "result": {"history": [{}, {}, {}], "best_epoch": 2,
                                                           "selected_on": "validation"}})
    assert cmssa["finished"] and cmssa["best"]["epoch"] == 2 and len(cmssa["history"]) == 3
    with pytest.raises(ValueError, match="without an optimiser"):
        upgrade_checkpoint({"format": "pyica.fit_checkpoint/1", "finished": False, "epoch": 1, "model": state,
                            "history": [], "best": {"score": 0.0, "epoch": 0}}, "old.pt")


def test_removing_checkpoints_leaves_files_pyica_did_not_write(tmp_path):
    fits = FitCheckpoints(tmp_path / "ck", resume=False)
    stray = tmp_path / "ck" / "fit-notmine.pt"
    stray.parent.mkdir()
    stray.write_bytes(b"a user's file")
    fits.file("k1").save({"finished": True})
    assert len(fits.files()) == 2
    fits.remove()
    assert fits.files() == [stray] and stray.read_bytes() == b"a user's file"
    alone = FitCheckpoints(tmp_path / "ck2", resume=False)
    alone.file("k2").save({"finished": True})
    alone.remove()
    assert not (tmp_path / "ck2").exists()  # the folder goes when nothing else is in it
