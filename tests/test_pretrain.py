"""Pretraining: the unlabeled image stream (sources, sharding, resume) and the `pyica pretrain` loop,
with a toy model that has CLICv2's interface (no ViT needed)."""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import signal
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pyica.weights import load_weights
from pyica.cli import main
from pyica.data.streams import UnlabeledImages
from pyica.inputs import expand_braces, expand_sources
from pyica.training import pretrain as pt
from pyica.training.resume import CHECKPOINT_FORMAT

SIZE = 16  # crop side in the tests


# --- fixtures ----------------------------------------------------------------------------------------

def _image(i: int) -> Image.Image:
    """A 32 x 40 image whose colours identify it (i) and vary along x, so crops differ."""
    x = np.linspace(0, 60, 40)[None, :, None]
    base = np.array([(i * 37) % 180, (i * 71) % 180, (i * 13) % 180])[None, None, :]
    return Image.fromarray((base + x + np.zeros((32, 1, 1))).astype(np.uint8))


@pytest.fixture()
def data(tmp_path):
    """12 images in a nested folder, 4 listed by a CSV elsewhere, 2 tar shards of 3 images (+ a json)."""
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    folder_files = []
    for i in range(12):
        p = folder / ("sub" if i % 2 else "") / f"f{i:02d}.png"
        _image(i).save(p)
        folder_files.append(str(p))
    listed = tmp_path / "listed"
    listed.mkdir()
    csv_files = []
    for i in range(12, 16):
        p = listed / f"c{i}.png"
        _image(i).save(p)
        csv_files.append(str(p))
    manifest = tmp_path / "list.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "score"])
        for p in csv_files:
            w.writerow([f"listed/{Path(p).name}", 1])
    shards = tmp_path / "shards"
    shards.mkdir()
    members = []
    staging = tmp_path / "staging"
    staging.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"train-{s:03d}.tar", "w") as tar:
            for j in range(3):
                i = 16 + s * 3 + j
                name = f"{i:06d}.png"
                _image(i).save(staging / name)
                tar.add(staging / name, arcname=name)
                (staging / f"{i:06d}.json").write_text("{}")
                tar.add(staging / f"{i:06d}.json", arcname=f"{i:06d}.json")
                members.append(f"{shards / f'train-{s:03d}.tar'}:{name}")
    sources = [str(folder), str(manifest), str(shards / "train-{000..001}.tar")]
    return {"sources": sources, "folder_files": folder_files, "csv_files": csv_files, "members": members,
            "all": folder_files + csv_files + members, "tmp": tmp_path, "folder": folder, "shards": shards}


def _keys(stream, worker=0, workers=1):
    return [k for k, _ in stream.iter_worker(worker, workers)]


# --- the stream --------------------------------------------------------------------------------------

def test_brace_and_glob_expansion(tmp_path):
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/x{1..2}") == ["a/x1", "a/x2", "b/x1", "b/x2"]
    assert expand_braces("plain{x}.tar") == ["plain{x}.tar"]
    for name in ("a.tar", "b.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_sources([str(tmp_path / "*.tar")]) == [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    with pytest.raises(FileNotFoundError, match="c.tar"):
        expand_sources([str(tmp_path / "{a,c}.tar")])


def test_stream_yields_every_image_once_per_epoch_from_folders_csv_and_shards(data):
    stream = UnlabeledImages(data["sources"], SIZE, seed=3, return_keys=True)
    assert stream.describe()["images"] == 22 and stream.describe()["shards"] == 2
    first = list(stream.iter_worker(0, 1))
    keys = [k for k, _ in first]
    assert Counter(keys) == Counter(data["all"])
    x = first[0][1]
    assert x.dtype == torch.uint8 and x.shape == (3, SIZE, SIZE)
    # the same epoch again: the same order and the same crops; the next epoch: another order
    again = list(stream.iter_worker(0, 1))
    assert keys == [k for k, _ in again] and all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again))
    stream.set_state(1)
    second = _keys(stream)
    assert Counter(second) == Counter(data["all"]) and second != keys


def test_stream_skips_corrupt_file_and_tar_member_with_a_warning(data, caplog):
    (data["folder"] / "broken.png").write_bytes(b"not a png at all")
    bad_tar = data["shards"] / "train-002.tar"
    payload = data["tmp"] / "bad.jpg"
    payload.write_bytes(b"\xff\xd8 truncated jpeg")
    with tarfile.open(bad_tar, "w") as tar:
        tar.add(payload, arcname="bad.jpg")
        tar.add(data["folder"] / "f00.png", arcname="good.png")
    sources = [str(data["folder"]), str(data["shards"] / "train-{000..002}.tar")]
    stream = UnlabeledImages(sources, SIZE, return_keys=True)
    with caplog.at_level(logging.WARNING, logger="pyica.data.streams"):
        keys = _keys(stream)
    assert f"{bad_tar}:good.png" in keys and len(keys) == 12 + 6 + 1
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "broken.png" in messages and f"{bad_tar}:bad.jpg" in messages


def test_stream_honours_exclude(data):
    excluded = data["folder_files"][:3] + data["csv_files"][:1]
    stream = UnlabeledImages(data["sources"], SIZE, exclude=excluded, return_keys=True)
    keys = _keys(stream)
    assert not set(keys) & set(excluded) and len(keys) == 22 - 4 and stream.excluded == 4


@pytest.mark.parametrize("batch_size", [None, 3])
def test_stream_splits_across_workers_and_ranks_without_overlap(data, batch_size):
    seen = []
    per_rank = []
    for rank in range(2):
        stream = UnlabeledImages(data["sources"], SIZE, batch_size=batch_size, rank=rank, world_size=2,
                                 return_keys=True, drop_last=batch_size is not None)
        rank_keys = []
        for worker in range(2):
            for keys, _ in stream.iter_worker(worker, 2):
                rank_keys.extend([keys] if batch_size is None else keys)
        per_rank.append(len(rank_keys))
        seen.extend(rank_keys)
    assert len(seen) == len(set(seen))
    if batch_size is None:
        assert Counter(seen) == Counter(data["all"])
    else:  # whole rounds only: 22 // (3 * 2) = 3 rounds, equal for both ranks
        assert per_rank == [9, 9] and set(seen) <= set(data["all"])


def test_stream_resume_state_continues_with_the_same_samples(data):
    full = UnlabeledImages(data["sources"], SIZE, seed=1, batch_size=4, return_keys=True)
    full.set_state(2)
    batches = list(full.iter_worker(0, 1))
    later = UnlabeledImages(data["sources"], SIZE, seed=1, batch_size=4, return_keys=True)
    later.set_state(2, consumed=8)
    rest = list(later.iter_worker(0, 1))
    assert len(rest) == len(batches) - 2
    for (ka, xa), (kb, xb) in zip(batches[2:], rest):
        assert ka == kb and torch.equal(xa, xb)


def test_stream_through_a_dataloader_with_two_workers(data):
    stream = UnlabeledImages(data["sources"], SIZE, return_keys=True)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    keys = [k for k, _ in loader]
    assert Counter(keys) == Counter(data["all"])


# --- the schedule and the optimiser --------------------------------------------------------------------

def test_lr_warms_up_linearly_then_decays_by_cosine_to_zero():
    peak, warm, total = 0.003, 10, 100
    lrs = [pt.lr_at(s, peak, warm, total) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warm) and lrs[warm - 1] == pytest.approx(peak)
    assert np.allclose(np.diff(lrs[:warm]), peak / warm)
    assert all(a >= b for a, b in zip(lrs[warm - 1:], lrs[warm:]))
    assert lrs[-1] < peak * 1e-3 and pt.lr_at(total, peak, warm, total) == 0.0
    mid = warm + (total - warm) // 2
    assert lrs[mid] == pytest.approx(peak / 2, rel=1e-6)


class Toy(nn.Module):
    """CLICv2's interface in miniature: a query encoder, a momentum key copy, an in-batch contrastive loss."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.GELU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 16))
        self.key = copy.deepcopy(self.encoder)
        for p in self.key.parameters():
            p.requires_grad_(False)
        self.pos_embed = nn.Parameter(torch.zeros(1, 16))
        self.mask_token = nn.Parameter(torch.zeros(1, 16))

    def forward(self, images, generator=None):
        noise = torch.rand(images.shape, generator=generator, device=images.device)
        q = F.normalize(self.encoder(images * (0.8 + 0.4 * noise)) + self.pos_embed + 0 * self.mask_token, dim=1)
        with torch.no_grad():
            k = F.normalize(self.key(images), dim=1)
        loss = F.cross_entropy(q @ k.T / 0.2, torch.arange(len(images), device=images.device))
        return loss, {"contrastive": float(loss.detach())}

    @torch.no_grad()
    def momentum_update(self, m: float = 0.9):
        for pk, pq in zip(self.key.parameters(), self.encoder.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)


def toy_pretrain_config(tmp_path, **changes) -> dict:
    """A tiny pretraining config over 12 generated images in ``tmp_path/images`` (other tests' toy run)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        _image(i).save(folder / f"f{i:02d}.png")
    cfg = {"method": "toy", "model": {"width": 8}, "data": {"sources": [str(folder)], "image_size": SIZE},
           "optim": {"lr": 0.01, "base_batch": 4, "batch_size": 4, "epochs": 2, "warmup_epochs": 1},
           "seed": 0, "amp": False, "checkpoint_every": 2, "log_every": 1, "output_dir": str(tmp_path / "out")}
    return {**cfg, **changes}


def _build_toy(model_config):
    torch.manual_seed(0)  # pretrain seeds before building; this keeps the toy the same in every test
    return Toy(**model_config)


def test_no_weight_decay_on_biases_norms_and_tokens():
    model = Toy()
    groups = {g["name"]: g for g in pt.param_groups(model, 0.05)}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups["decay"]["params"]}
    free = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert decayed == {"encoder.0.weight", "encoder.5.weight"}
    assert {"pos_embed", "mask_token", "encoder.0.bias", "encoder.1.weight", "encoder.1.bias"} <= free
    assert not any(n.startswith("key.") for n in decayed | free)  # frozen key copy is not optimised
    assert all(p.ndim > 1 for p in groups["decay"]["params"])


# --- the loop ----------------------------------------------------------------------------------------

def _config(data, out, **over):
    cfg = {"method": "toy", "model": {"width": 8},
           "data": {"sources": data["sources"], "image_size": SIZE},
           "optim": {"lr": 0.01, "base_batch": 4, "batch_size": 4, "epochs": 2, "warmup_epochs": 1},
           "seed": 0, "amp": True, "checkpoint_every": 3, "log_every": 1, "output_dir": str(out)}
    cfg.update(over)
    return cfg


def _losses(out):
    rows = [json.loads(line) for line in (Path(out) / pt.LOG).read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "step"}  # the loop's log: step and epoch rows


def _run(cfg, **kw):
    return pt.pretrain(cfg, build_model=_build_toy, device="cpu", num_workers=0, progress=False, **kw)


@pytest.mark.parametrize("stop", [4, 5])  # mid-epoch, and exactly at the end of epoch 0 (5 steps an epoch)
def test_resume_gives_exactly_the_losses_of_an_uninterrupted_run(data, stop):
    tmp = data["tmp"]
    full = _run(_config(data, tmp / "full"))
    assert full["total_steps"] == 10 and full["steps"] == 10 and full["finished"]
    reference = _losses(tmp / "full")
    assert sorted(reference) == list(range(1, 11))

    first = _run(_config(data, tmp / "split"), max_steps=stop)
    assert first["steps"] == stop and not first["finished"]
    with pytest.raises(FileExistsError):
        _run(_config(data, tmp / "split"))
    second = _run(_config(data, tmp / "split"), resume=True)
    assert second["resumed_from"] == stop and second["steps"] == 10
    resumed = _losses(tmp / "split")
    assert sorted(resumed) == list(range(1, 11))
    for s in range(1, 11):
        assert resumed[s] == reference[s], s  # bitwise, not approximately
    assert second["final_loss"] == full["final_loss"]
    a, _ = load_weights(tmp / "full" / pt.ENCODER)
    b, _ = load_weights(tmp / "split" / pt.ENCODER)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_the_older_pretraining_layout_resumes_exactly(data):
    tmp = data["tmp"]
    _run(_config(data, tmp / "full"))
    _run(_config(data, tmp / "old"), max_steps=4)
    path = tmp / "old" / pt.CHECKPOINT
    new = torch.load(path, weights_only=True)
    task = new["task"]
    torch.save({"format": "pyica.pretrain/1", "model": new["model"], "optimizer": new["optimizer"], "step": new["step"],
                "scheduler": task["scheduler"], "data": task["data"], "rng": new["rng"], "generator": task["generator"],
                "world_size": 1, "elapsed_s": task["elapsed_s"], "last_loss": task["last_loss"],
                "last_parts": task["last_parts"], "config": task["config"]}, path)
    resumed = _run(_config(data, tmp / "old"), resume=True)
    assert resumed["resumed_from"] == 4 and resumed["steps"] == 10
    assert _losses(tmp / "old") == _losses(tmp / "full")


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(data):
    tmp = data["tmp"]
    _run(_config(data, tmp / "full"))
    reference = _losses(tmp / "full")

    class Preempted(Toy):
        calls = 0

        def forward(self, images, generator=None):
            Preempted.calls += 1
            if Preempted.calls == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of step 3
            return super().forward(images, generator)

    def build(model_config):
        torch.manual_seed(0)
        return Preempted(**model_config)

    before = signal.getsignal(signal.SIGTERM)
    stopped = pt.pretrain(_config(data, tmp / "cut"), build_model=build, device="cpu", num_workers=0, progress=False)
    assert stopped["stopped_by_signal"] and stopped["steps"] == 3 and not stopped["finished"]
    assert torch.load(tmp / "cut" / pt.CHECKPOINT, weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the old handler is back
    resumed = _run(_config(data, tmp / "cut"), resume=True)
    assert resumed["steps"] == 10 and _losses(tmp / "cut") == reference


def test_checkpoint_loads_weights_only_and_the_encoder_and_card_exist(data):
    out = data["tmp"] / "run"
    summary = _run(_config(data, out), max_steps=6)
    ckpt = torch.load(out / pt.CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and not ckpt["finished"]
    assert ckpt["step"] == 6 and ckpt["task"]["data"] == {"epoch": 1, "consumed": 4, "seed": 0, "global_batch": 4,
                                                          "samples_per_epoch": 22}
    assert {"model", "optimizer", "rng"} <= set(ckpt) and {"generator", "scheduler"} <= set(ckpt["task"])
    card = json.loads((out / pt.CARD).read_text())
    tensors, loaded_card = load_weights(out / pt.ENCODER)
    assert loaded_card["weights"]["sha256"] == card["weights"]["sha256"]
    assert set(tensors) == set(Toy().encoder.state_dict())
    assert card["training"]["steps"] == 6 and card["training"]["samples_seen"] == 24
    assert card["training"]["final_loss"] == summary["final_loss"] and math.isfinite(summary["final_loss"])
    assert card["training"]["data"]["images"] == 22 and not card["training"]["finished"]
    rows = [json.loads(line) for line in (out / pt.LOG).read_text().splitlines()]
    row = [r for r in rows if r["kind"] == "step"][-1]
    assert {"step", "loss", "contrastive", "lr", "images_per_s"} <= set(row) and row["fit"] == "pretraining"


def test_config_paths_are_relative_to_the_config_file(data, tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "c.json"
    path.write_text(json.dumps({"model": {}, "data": {"sources": ["../folder"], "exclude_manifest": "../list.csv"},
                                "output_dir": "../runs/x"}))
    cfg = pt.load_pretrain_config(path)
    assert cfg["data"]["sources"] == [str(tmp_path / "folder")]
    assert cfg["data"]["exclude_manifest"] == str(tmp_path / "list.csv")
    assert cfg["output_dir"] == str(tmp_path / "runs" / "x")
    assert cfg["optim"]["betas"] == [0.9, 0.95] and cfg["optim"]["weight_decay"] == 0.05


def test_cli_pretrain_runs_a_tiny_config(data, monkeypatch):
    monkeypatch.setitem(pt.BUILDERS, "toy", _build_toy)
    out = data["tmp"] / "cli"
    path = data["tmp"] / "tiny.json"
    cfg = _config(data, out, checkpoint_every=100)
    cfg["data"]["exclude_manifest"] = str(data["tmp"] / "list.csv")
    path.write_text(json.dumps(cfg))
    assert main(["pretrain", str(path), "--max-steps", "2", "--device", "cpu", "--workers", "0", "-q"]) == 0
    assert (out / pt.ENCODER).exists() and (out / pt.CARD).exists()
    card = json.loads((out / pt.CARD).read_text())
    assert card["training"]["data"]["excluded"] == 4
    assert main(["pretrain", str(path), "--device", "cpu", "--workers", "0", "-q"]) == 2  # last.pt exists: refused
    assert main(["pretrain", str(path), "--resume", "--device", "cpu", "--workers", "0", "-q"]) == 0
    finished = json.loads((out / pt.CARD).read_text())["training"]
    assert finished["finished"] and finished["steps"] == 8 and finished["final_loss"] is not None  # 18 images: 4 steps an epoch
    # resuming a finished run changes nothing but rewrites the same encoder and card facts
    assert main(["pretrain", str(path), "--resume", "--device", "cpu", "--workers", "0", "-q"]) == 0
    again = json.loads((out / pt.CARD).read_text())["training"]
    assert again["final_loss"] == finished["final_loss"] and again["steps"] == 8


def test_shipped_configs_parse():
    root = Path(__file__).resolve().parents[1] / "configs" / "clicv2"
    tiny = pt.load_pretrain_config(root / "clicv2_vit_tiny.cpu.json")
    paper = pt.load_pretrain_config(root / "clicv2_vit_b32.paper.json")
    assert paper["optim"]["batch_size"] == 2048 and paper["optim"]["lr"] == 0.003
    assert paper["optim"]["epochs"] == 300 and paper["optim"]["warmup_epochs"] == 40
    assert paper["data"]["sources"][0].endswith("data/ic1m/shards/ic1m-{000000..000149}.tar")
    assert paper["model"]["arch"] == "vit_base" and tiny["model"]["arch"] == "vit_tiny"
    assert expand_braces(Path(paper["data"]["sources"][0]).name)[-1] == "ic1m-000149.tar"
