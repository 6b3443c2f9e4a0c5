"""Probing a frozen CLICv2 encoder: heads, the trainer (alone and under run_protocol), weights on
disk, and the analyses (per-category correlations, t-SNE). A tiny ViT (dim 32, depth 2, heads 2,
8 px patches on 32 px images) and synthetic images keep everything to seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from scipy import stats

from pyica.analysis import per_category_correlations, tsne_plot
from pyica.data.dataset import ComplexityDataset
from pyica.evaluation import run_protocol
from pyica.metrics import srcc
from pyica.models.clicv2 import CLICv2Config
from pyica.models.clicv2_probe import (CLICv2Probe, ICNetHeadConfig, ICNetProbeHead, LinearProbeHead, build_head,
                                       encoder_fingerprint, load_encoder, load_probe, random_encoder, save_probe)
from pyica.models.vit import ViT, vit_config
from pyica.registry import create_model, get_entry
from pyica.training.probe import ProbeRecipe, ProbeTrainer, TokenCache, lr_factor
from pyica.weights import sha256_file

TINY = dict(dim=32, depth=2, heads=2)
SMALL_ICNET = dict(width=16, map_size=8, slam_size=4, slam_hidden=8, score_hidden=8)


def tiny_config():
    return vit_config("vit_tiny", patch_size=8, image_size=32, **TINY)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder():
    return random_encoder(tiny_config(), seed=0, arch="vit_tiny")


def rect_image(k: int, seed: int) -> Image.Image:
    """A 64 x 64 image with ``k`` coloured rectangles on a flat background."""
    rng = np.random.default_rng(seed)
    a = np.full((64, 64, 3), rng.integers(60, 200), np.uint8)
    for _ in range(k):
        w, h = rng.integers(6, 16, 2)
        x, y = rng.integers(0, 64 - 16, 2)
        a[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    return Image.fromarray(a)


def toy_dataset(root: Path, n: int = 16, categories: tuple[str, ...] = ()) -> ComplexityDataset:
    """score = number of rectangles (0..7)."""
    root.mkdir(parents=True, exist_ok=True)
    paths, scores, cats = [], [], []
    for i in range(n):
        k = i % 8
        rect_image(k, i).save(root / f"img{i:02d}.png")
        paths.append(f"img{i:02d}.png")
        scores.append(float(k))
        cats.append(categories[i % len(categories)] if categories else "")
    return ComplexityDataset("toy", root, np.array(paths), np.array(scores), np.array(cats), np.array([]))


def make_probe(encoder, kind: str) -> CLICv2Probe:
    enc, info = encoder
    return CLICv2Probe(enc, build_head(kind, enc.num_features, **(SMALL_ICNET if kind == "icnet" else {})), info)


def recipe(**kw) -> ProbeRecipe:
    base = dict(epochs=30, batch_size=8, lr=0.5, schedule="cosine", warmup_epochs=0, device="cpu", num_workers=0)
    return ProbeRecipe(**{**base, **kw})


# --- heads -----------------------------------------------------------------------------------------

def test_head_shapes_and_score_range():
    torch.manual_seed(0)
    tokens = torch.randn(5, 1 + 16, 32) * 3
    icnet = ICNetProbeHead(32, ICNetHeadConfig(**SMALL_ICNET)).eval()
    score, cmap = icnet(tokens, (4, 4))
    assert score.shape == (5,) and cmap.shape == (5, 1, 8, 8)
    for t in (score, cmap):
        assert bool(((t >= 0) & (t <= 1)).all())
    loss = icnet.loss((score, cmap), torch.rand(5))
    assert loss.ndim == 0 and torch.isfinite(loss)
    linear = LinearProbeHead(32).eval()
    score, nothing = linear(tokens)
    assert score.shape == (5,) and nothing is None and bool(((score >= 0) & (score <= 1)).all())
    # the full-size default is ICNet's
    assert ICNetHeadConfig() == ICNetHeadConfig(width=512, map_size=64, slam_size=32, slam_hidden=512, score_hidden=512)


def test_model_forward_and_only_the_head_trains(encoder):
    for kind in ("icnet", "linear"):
        model = make_probe(encoder, kind)
        before = encoder_fingerprint(model.encoder)
        images = [rect_image(k, k) for k in range(4)]
        item = model.transform(images[0])
        assert item.dtype == torch.uint8 and item.shape == (3, 32, 32)
        model.train()
        assert not model.encoder.training and model.head.training
        assert all(not p.requires_grad for p in model.encoder.parameters())
        batch = torch.stack([model.transform(im) for im in images])
        outputs = model.head_outputs(model.encode(batch))
        model.head.loss(outputs, torch.rand(4)).backward()
        assert all(p.grad is None for p in model.encoder.parameters())
        assert all(p.grad is not None for p in model.head.parameters())
        scores = model.eval().score_images(images)
        assert scores.shape == (4,) and bool(((scores >= 0) & (scores <= 1)).all())
        state = model.probe_state_dict()
        assert state and all(k.startswith("head.") for k in state)
        assert set(state) == {f"head.{k}" for k in model.head.state_dict()}
        assert encoder_fingerprint(model.encoder) == before
        if kind == "icnet":
            assert model.complexity_map(batch).shape == (4, 1, 8, 8)


# --- training --------------------------------------------------------------------------------------

def test_lr_schedules():
    r = ProbeRecipe()  # 30 epochs, step at 1/3 and 2/3 = ICNet's epochs 10 and 20, 1 warm-up epoch
    assert lr_factor(0, 1, r, 10) == pytest.approx(0.1)
    assert lr_factor(9, 1, r, 10) == pytest.approx(1.0)
    assert lr_factor(99, 10, r, 10) == 1.0
    assert lr_factor(100, 11, r, 10) == pytest.approx(0.2)
    assert lr_factor(200, 21, r, 10) == pytest.approx(0.04)
    c = ProbeRecipe(schedule="cosine", warmup_epochs=0)
    assert lr_factor(0, 1, c, 10) == 1.0 and lr_factor(150, 16, c, 10) == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["linear", "icnet"])
def test_trainer_learns_toy_dataset(tmp_path, encoder, kind):
    ds = toy_dataset(tmp_path / "toy")
    trainer = ProbeTrainer(lambda: make_probe(encoder, kind), recipe())
    fit = trainer.fit_dataset(ds, None)
    assert fit["epochs_run"] == 30 and fit["selected_on"] == "last epoch" and fit["n_train"] == 16
    assert len(trainer.cache) == 32  # both flips of every image, computed once
    scores, errors = trainer.score_files(ds.full_paths())
    assert not errors and np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
    assert srcc(scores, ds.scores) > 0.8
    # the cached path and the model's own forward agree
    direct = trainer.model.score_images([Image.open(p).convert("RGB") for p in ds.full_paths()[:4]]).numpy()
    np.testing.assert_allclose(direct, scores[:4], atol=1e-5)


@pytest.mark.filterwarnings("ignore::pyica.metrics.MetricWarning")
def test_trainer_under_run_protocol(tmp_path, encoder):
    ds = toy_dataset(tmp_path / "toy", n=24, categories=("a", "b"))
    (tmp_path / "toy" / "img05.png").write_bytes(b"not an image")  # a bad file is skipped and reported
    cache = TokenCache()
    trainer = ProbeTrainer(lambda: make_probe(encoder, "linear"), recipe(epochs=4), cache=cache)
    result = run_protocol("clicv2_probe", ds, model=trainer, protocol="random", n_splits=2, seed=0,
                          test_fraction=0.25, val_fraction=0.2, num_workers=0)
    splits = {r["split"] for r in result.rows}
    assert len(splits) == 2
    cats = {r["category"] for r in result.rows}
    assert {"pooled", "category_mean", "a", "b"} <= cats
    assert all(np.isfinite(r["srcc"]) for r in result.rows if r["category"] == "pooled")
    assert len(trainer.history) >= 1 and "val_srcc" in trainer.history[0]
    assert any("img05.png" in p for p in cache.errors)
    # the linear head and the ICNet head share one cache of the same encoder: nothing is recomputed
    n_cached = len(cache)
    other = ProbeTrainer(lambda: make_probe(encoder, "icnet"), recipe(epochs=2, hflip=False), cache=cache)
    other.fit_dataset(ds.subset(np.arange(12)), ds.subset(np.arange(12, 16)))
    assert len(cache) == n_cached
    # another encoder empties the cache
    enc2, info2 = random_encoder(tiny_config(), seed=1)
    third = ProbeTrainer(lambda: CLICv2Probe(enc2, build_head("linear", 32), info2), recipe(epochs=1), cache=cache)
    third.fit_dataset(ds.subset(np.arange(4)), None)
    assert len(cache) == 8


def test_linear_head_pools_cls_or_mean_patch_token(tmp_path, encoder):
    tokens = torch.randn(6, 1 + 16, 32)
    cls_head, mean_head = build_head("linear", 32), build_head("linear", 32, pool="mean")
    mean_head.load_state_dict(cls_head.state_dict())
    cls_head.eval(), mean_head.eval()
    # the same weights read different features: the mean patch token equals a cls token set to it
    swapped = tokens.clone()
    swapped[:, 0] = tokens[:, 1:].mean(1)
    torch.testing.assert_close(mean_head(tokens)[0], cls_head(swapped)[0])
    with pytest.raises(ValueError, match="pool"):
        build_head("linear", 32, pool="max")
    # the pooling travels with the saved probe
    ds = toy_dataset(tmp_path / "toy", n=8)
    trainer = ProbeTrainer(lambda: CLICv2Probe(encoder[0], build_head("linear", 32, pool="mean"), encoder[1]),
                           recipe(epochs=1))
    trainer.fit_dataset(ds, None)
    save_probe(trainer.model, tmp_path / "p.safetensors", {})
    assert load_probe(tmp_path / "p.safetensors").head.pool == "mean"


def test_lr_grid_keeps_the_lr_that_validates_best(tmp_path, encoder):
    ds = toy_dataset(tmp_path / "toy", n=24)
    train, val = ds.subset(np.arange(16)), ds.subset(np.arange(16, 24))
    grid = (1e-6, 0.5)  # 1e-6 cannot move the head in 6 epochs; 0.5 learns the toy task
    trainer = ProbeTrainer(lambda: make_probe(encoder, "linear"), recipe(epochs=6, lr_grid=grid))
    fit = trainer.fit_dataset(train, val)
    assert set(fit["lr_grid"]) == {"1e-06", "0.5"} and fit["lr"] == 0.5
    assert fit["best_val_srcc"] == max(v for v in fit["lr_grid"].values() if v is not None)
    # the kept head is the one trained at 0.5: refitting at that single lr gives the same scores
    single = ProbeTrainer(lambda: make_probe(encoder, "linear"), recipe(epochs=6, lr=0.5))
    single.fit_dataset(train, val)
    np.testing.assert_allclose(trainer.score_files(val.full_paths())[0], single.score_files(val.full_paths())[0],
                               atol=1e-6)
    # without a validation part there is nothing to choose by: the single ``lr`` is used
    assert ProbeTrainer(lambda: make_probe(encoder, "linear"),
                        recipe(epochs=1, lr=0.1, lr_grid=grid)).fit_dataset(train, None)["lr"] == 0.1
    with pytest.raises(ValueError, match="lr_grid"):
        recipe(lr_grid=(0.1, 0.0))


# --- weights on disk -------------------------------------------------------------------------------

def test_save_load_roundtrip_and_damaged_file(tmp_path, encoder):
    ds = toy_dataset(tmp_path / "toy", n=8)
    trainer = ProbeTrainer(lambda: make_probe(encoder, "icnet"), recipe(epochs=2))
    trainer.fit_dataset(ds, None)
    path = tmp_path / "probe.safetensors"
    card = save_probe(trainer.model, path, {"training": {"dataset": "toy", "images": 8}, "metrics": {"srcc": 0.5}})
    arch = card["architecture"]
    assert card["weights"]["sha256"] and arch["arguments"]["head"]["kind"] == "icnet" and arch["encoder"]["arch"] == "vit_tiny"
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["training"]["dataset"] == "toy" and on_disk["metrics"] == {"srcc": 0.5}
    images = [Image.open(p).convert("RGB") for p in ds.full_paths()]
    original = trainer.model.eval().score_images(images)
    loaded = load_probe(path)
    assert torch.equal(loaded.score_images(images), original)
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in loaded.state_dict().items())
    # through the registry, like every model
    assert get_entry("clicv2_probe.vit_tiny").needs_weights
    registered = create_model("clicv2_probe.vit_tiny", weights=str(path))
    assert torch.equal(registered.score_images(images), original)
    with pytest.raises(ValueError, match="no shipped weights"):
        create_model("clicv2_probe.vit_tiny")
    # one flipped byte: refused
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_probe(path)


def test_load_pretrained_encoder_card(tmp_path):
    """An encoder.safetensors + encoder.json as `pyica pretrain` writes them."""
    config = CLICv2Config(arch="vit_tiny", patch_size=8, image_size=32, encoder_overrides=TINY)
    torch.manual_seed(3)
    enc = ViT(config.encoder_config())
    run = tmp_path / "run"
    run.mkdir()
    save_file(enc.state_dict(), run / "encoder.safetensors")  # an older run's card: no schema, sha256 only
    sha = sha256_file(run / "encoder.safetensors")
    (run / "encoder.json").write_text(json.dumps({"method": "clicv2", "model": config.to_dict(),
                                                  "weights": {"sha256": sha}, "training": {"steps": 3}}))
    loaded, info = load_encoder(run)
    assert encoder_fingerprint(loaded) == encoder_fingerprint(enc)
    assert info["sha256"] == sha and info["arch"] == "vit_tiny" and info["pretraining"]["steps"] == 3
    model = CLICv2Probe(loaded, build_head("linear", 32), info)
    assert model.describe()["encoder"]["sha256"] == sha
    data = bytearray((run / "encoder.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (run / "encoder.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_encoder(run / "encoder.safetensors")


# --- analyses --------------------------------------------------------------------------------------

def test_per_category_correlations_match_scipy():
    rng = np.random.default_rng(0)
    target = rng.normal(size=30)
    pred = target + rng.normal(scale=0.7, size=30)
    cats = np.array(["x", "y", "z"] * 10)
    out = per_category_correlations(pred, target, cats)
    assert out["n_categories"] == 3 and list(out["per_category"]) == ["x", "y", "z"]
    pccs, srccs = [], []
    for c in ("x", "y", "z"):
        m = cats == c
        pccs.append(stats.pearsonr(pred[m], target[m])[0])
        srccs.append(stats.spearmanr(pred[m], target[m])[0])
        assert out["per_category"][c]["pcc"] == pytest.approx(pccs[-1])
        assert out["per_category"][c]["srcc"] == pytest.approx(srccs[-1])
        assert out["per_category"][c]["n"] == 10
    assert out["pcc_mean"] == pytest.approx(np.mean(pccs)) and out["pcc_var"] == pytest.approx(np.var(pccs))
    assert out["srcc_mean"] == pytest.approx(np.mean(srccs)) and out["srcc_var"] == pytest.approx(np.var(srccs))
    assert per_category_correlations(pred, target, cats, ddof=1)["pcc_var"] == pytest.approx(np.var(pccs, ddof=1))


def test_tsne_plot_writes_png(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(15, 6))
    path = tmp_path / "tsne.png"
    xy = tsne_plot(features, rng.random(15), np.array(["a", "b", "c"] * 5), path, perplexity=4, title="toy")
    assert xy.shape == (15, 2) and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the shipped encoder (benchmarks/clicv2_scale.py --ship) ---------------------------------------------

SHIPPED_ENCODERS = sorted((Path(__file__).resolve().parents[1] / "src" / "pyica" / "assets" / "encoders").glob("*.json"))


@pytest.mark.parametrize("card_file", SHIPPED_ENCODERS, ids=[p.stem for p in SHIPPED_ENCODERS])
def test_shipped_encoder_loads_verified_and_its_card_says_what_it_is(card_file):
    from pyica.models.clicv2_probe import load_encoder

    encoder, info = load_encoder(card_file.with_suffix(".safetensors"))  # sha256 checked against the card
    card = json.loads(card_file.read_text())
    assert info["sha256"] == card["weights"]["sha256"]
    # what it learned from, under which licences, and what was measured
    assert "Debian-package corpus" in card["training"]["data"]["corpus"]
    assert "research" in card["licence"] and "GPL" in card["licence"]
    metrics = card["evaluation"]["metrics"]
    pre, rnd = (metrics[f"clicv2_{kind}:mean|ridge|loco"]["category_mean_srcc"] for kind in ("pretrained", "random"))
    assert pre > rnd  # shipped because it beats random init on held-out categories
    size = card["architecture"]["arguments"]["image_size"]
    tokens = encoder(torch.rand(2, 3, size, size))
    assert torch.isfinite(tokens).all() and tokens.shape[0] == 2
