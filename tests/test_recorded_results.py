"""Numbers recorded before a structural change, compared bit for bit after it.

``tests/recorded/structural_baseline.json`` holds, as computed by the code before the training loops,
inputs and weights format were reorganised (issue 17):

* the first default model's scores of the example images (and, since issue 18, the new default's);
* short deterministic fits of every trainer on CPU (CLICv2 probe, ICNet, CM-SSA, pretraining): their
  per-epoch (or per-step) losses and validation scores and a sha256 of their trained tensors.

All of this is deterministic on CPU with one thread, so equality is exact: a refactoring that changes a
single float fails here. ``PYICA_RECORD_BASELINE=1 pytest tests/test_recorded_results.py`` writes the
file anew (only when a change is *meant* to change numbers; say so in its commit).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

RECORD = os.environ.get("PYICA_RECORD_BASELINE") == "1"
BASELINE = Path(__file__).parent / "recorded" / "structural_baseline.json"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def history_numbers(history: list[dict]) -> list[dict]:
    """A history without its timings (the only non-deterministic entries)."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def check(name: str, value) -> None:
    value = json.loads(json.dumps(value))  # the same types as the recorded file
    recorded = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    if RECORD:
        recorded[name] = value
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    assert name in recorded, f"{name} was never recorded: run with PYICA_RECORD_BASELINE=1"
    assert value == recorded[name]


def test_default_model_scores_of_the_examples():
    from pyica import create_model
    from pyica.scoring import score_paths

    paths = sorted(str(p) for p in EXAMPLES.glob("*.jpg"))
    records = list(score_paths(paths, create_model("effnet_lite0_ridge.savoias", device="cpu"), num_workers=0))
    check("default_scores", {Path(r.path).name: r.score for r in records})


def test_within_default_scores_of_the_examples():
    """The default since issue 18 (recorded when it shipped)."""
    from pyica import create_model
    from pyica.scoring import score_paths

    paths = sorted(str(p) for p in EXAMPLES.glob("*.jpg"))
    records = list(score_paths(paths, create_model("effnet_lite0_within.savoias", device="cpu"), num_workers=0))
    check("within_default_scores", {Path(r.path).name: r.score for r in records})


def test_probe_fit(tmp_path):
    from test_clicv2_probe import make_probe, recipe, tiny_config, toy_dataset

    from pyica.models.clicv2_probe import random_encoder
    from pyica.training.probe import ProbeTrainer

    encoder = random_encoder(tiny_config(), seed=0, arch="vit_tiny")
    ds = toy_dataset(tmp_path / "toy", n=24, categories=("a", "b"))
    out = {}
    for kind in ("linear", "icnet"):
        trainer = ProbeTrainer(lambda: make_probe(encoder, kind), recipe(epochs=4, schedule="step", warmup_epochs=1))
        fit = trainer.fit_dataset(ds.subset(np.arange(16)), ds.subset(np.arange(16, 24)))
        scores, _ = trainer.score_files(ds.full_paths())
        out[kind] = {"history": history_numbers(fit["history"]), "best_epoch": fit["best_epoch"],
                     "head": tensors_sha256(trainer.model.head.state_dict()), "scores": scores.tolist()}
    check("probe", out)


def test_icnet_fit(tmp_path):
    from test_icnet import TINY, _toy_manifest

    from pyica.data.manifest import read_manifest
    from pyica.models.icnet import ICNet, ICNetConfig, ICNetModel
    from pyica.training.train_icnet import ICNetRecipe, ICNetTrainer

    ds = read_manifest(_toy_manifest(tmp_path / "data"))
    recipe = ICNetRecipe(epochs=3, batch_size=4, lr=0.01, device="cpu", num_workers=0)
    trainer = ICNetTrainer(lambda: ICNetModel(ICNet(ICNetConfig(**TINY))), recipe)
    torch.manual_seed(0)
    fit = trainer.fit_dataset(ds.subset(np.arange(6)), ds.subset(np.arange(6, 12)))
    scores, _ = trainer.score_files(ds.full_paths())
    check("icnet", {"history": history_numbers(fit["history"]), "best_epoch": fit["best_epoch"],
                    "net": tensors_sha256(trainer.model.net.state_dict()), "scores": scores.tolist()})


def test_cmssa_fit(tmp_path):
    pytest.importorskip("transformers")
    import transformers
    from test_cmssa import _toy_dataset, tiny_offline

    from pyica.models.cmssa import CMSSA, CMSSAConfig
    from pyica.models.cmssa_offline import minilm_path
    from pyica.training.train_cmssa import CMSSATrainer, TrainRecipe

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    ds = _toy_dataset(tmp_path, n=12)
    captions = {p: f"an image with {n} things" for p, n in zip(ds.full_paths(), range(len(ds)))}
    config = CMSSAConfig(n_ctx=2, depth=1, patch_size=64, patch_stride=64, max_patches=2, eval_short_side=96)
    recipe = TrainRecipe(epochs=3, batch_size=4, lr=1e-3, train_short_side=96, train_crops=2, num_workers=0)
    trainer = CMSSATrainer(lambda: CMSSA(tiny_offline(tokenizer), config), recipe, captions=captions)
    fit = trainer.fit_dataset(ds.subset(np.arange(8)), ds.subset(np.arange(8, 12)))
    scores, _ = trainer.score_files(ds.full_paths())
    check("cmssa", {"history": history_numbers(fit["history"]), "best_epoch": fit["best_epoch"],
                    "trainable": tensors_sha256(trainer.model.trainable_state_dict()), "scores": scores.tolist()})


def test_pretrain_run(tmp_path):
    from test_pretrain import _build_toy, toy_pretrain_config

    from pyica.training import pretrain as pt

    cfg = toy_pretrain_config(tmp_path, amp=True, checkpoint_every=3)
    summary = pt.pretrain(cfg, build_model=_build_toy, device="cpu", num_workers=0, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / pt.LOG).read_text().splitlines()]
    rows = [r for r in rows if r.get("kind", "step") == "step"]  # the loop's log also has a row per epoch
    from safetensors.torch import load_file

    check("pretrain", {"losses": {str(r["step"]): r["loss"] for r in rows}, "steps": summary["steps"],
                       "encoder": tensors_sha256(load_file(str(tmp_path / "out" / pt.ENCODER)))})
