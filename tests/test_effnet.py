"""The default model family: EfficientNet-Lite features, the ridge head, training and shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyica.weights import sha256_file
from pyica.data.dataset import ComplexityDataset
from pyica.models.effnet import LongestSideResize, StageFeatures, load_backbone, mean_std_pool, normalize_tf, SquareResize
from pyica.models.effnet_ridge import PRESETS, EffNetRidge, EffNetRidgeConfig, View, load_card, weights_path
from pyica.models.ridge import leave_one_out_path, ridge_path, select_alpha
from pyica.registry import DEFAULT_MODEL, create_model

skimage_data = pytest.importorskip("skimage.data")


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)())


# --- backbone ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_pretrained_backbone_recognises_photos(variant):
    # guards the weights and the activation: with swish instead of ReLU6 these come out wrong
    net = load_backbone(variant)
    x = normalize_tf(torch.stack([SquareResize(224)(_photo("chelsea")), SquareResize(224)(_photo("coffee"))]))
    with torch.no_grad():
        top = net(x).argmax(1).tolist()
    assert top == [285, 967]  # Egyptian cat, espresso


def test_folded_batchnorm_gives_the_same_features():
    x = normalize_tf(SquareResize(160)(_photo("astronaut"))[None])
    plain = StageFeatures(load_backbone("lite0"))
    fused = StageFeatures(load_backbone("lite0")).fuse_batchnorm_()
    with torch.no_grad():
        a, b = mean_std_pool(plain(x)), mean_std_pool(fused(x))
    assert a.shape == (1, 2 * (16 + 24 + 40 + 80 + 112 + 192 + 320 + 1280))
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_stage_maps_have_the_stage_strides():
    net = StageFeatures(load_backbone("lite0", pretrained=False))
    with torch.no_grad():
        maps = net(torch.zeros(1, 3, 64, 96))
    assert [m.shape[1] for m in maps] == net.channels
    assert [m.shape[-1] for m in maps] == [48, 24, 12, 6, 6, 3, 3, 3]  # strides 2, 4, 8, 16, 16, 32, 32, 32


def test_truncated_trunk_gives_the_first_maps_and_skips_the_rest():
    x = normalize_tf(SquareResize(96)(_photo("astronaut"))[None])
    full = StageFeatures(load_backbone("lite0")).fuse_batchnorm_()
    first6 = StageFeatures(load_backbone("lite0"), num_maps=6).fuse_batchnorm_()
    with torch.no_grad():
        maps_full, maps6 = full(x), first6(x)
    assert len(maps6) == 6 and first6.channels == full.channels[:6] and first6.head is None
    assert len(first6.blocks) < len(full.blocks)  # the last stage is not even computed
    for a, b in zip(maps6, maps_full):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="num_maps"):
        StageFeatures(load_backbone("lite0", pretrained=False), num_maps=9)


def test_resize_rules():
    image = Image.new("RGB", (300, 100))
    assert SquareResize(64)(image).shape == (3, 64, 64)
    assert LongestSideResize(120)(image).shape == (3, 40, 120)
    assert LongestSideResize(120)(Image.new("RGB", (1000, 10))).shape == (3, 32, 120)  # min side


# --- ridge -------------------------------------------------------------------------------------------

def _toy_regression(n=60, d=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d)
    y = x[:, :5] @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) / 10 + 0.05 * rng.normal(size=n)
    return x, y


def test_dual_ridge_equals_primal_solution():
    x, y = _toy_regression()
    head = ridge_path(x, y, [3.0])[0]
    z = (x - x.mean(0)) / x.std(0)
    w = np.linalg.solve(z.T @ z + 3.0 * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    np.testing.assert_allclose(head.weight, w, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(head.predict(x), z @ w + y.mean(), atol=1e-9)


def test_leave_one_out_matches_refitting():
    x, y = _toy_regression(n=25, d=40)
    alphas = [0.1, 10.0]
    loo = leave_one_out_path(x, y, alphas)
    z = (x - x.mean(0)) / np.where(x.std(0) < 1e-8, 1, x.std(0))  # standardisation fixed, as documented
    for i in (0, 7, 24):
        keep = np.arange(len(y)) != i
        for j, a in enumerate(alphas):
            zk, yk = z[keep], y[keep]
            w = np.linalg.solve((zk - zk.mean(0)).T @ (zk - zk.mean(0)) + a * np.eye(z.shape[1]),
                                (zk - zk.mean(0)).T @ (yk - yk.mean()))
            expected = (z[i] - zk.mean(0)) @ w + yk.mean()
            assert loo[i, j] == pytest.approx(expected, abs=1e-8)


def test_select_alpha_prefers_the_penalty_that_generalises():
    x, y = _toy_regression(n=80, d=300, seed=1)
    alphas = [1e-6, 1e1, 1e2, 1e3, 1e9]
    alpha, scores = select_alpha(x[:60], y[:60], x[60:], y[60:], alphas=alphas)
    assert len(scores) == len(alphas)
    assert alpha not in (1e-6, 1e9)
    assert select_alpha(x, y, alphas=alphas)[0] not in (1e-6, 1e9)  # leave-one-out squared error


# --- the model ---------------------------------------------------------------------------------------

def _clutter_dataset(folder, n=24, seed=0):
    """Images with more and more random rectangles: the number of shapes is the 'human' score."""
    rng = np.random.default_rng(seed)
    paths, scores = [], []
    for i in range(n):
        k = int(rng.integers(0, 60))
        canvas = np.full((96, 128, 3), 230, np.uint8)
        for _ in range(k):
            y0, x0 = rng.integers(0, 90), rng.integers(0, 120)
            canvas[y0:y0 + rng.integers(3, 20), x0:x0 + rng.integers(3, 20)] = rng.integers(0, 255, 3)
        Image.fromarray(canvas).save(folder / f"{i}.png")
        paths.append(f"{i}.png")
        scores.append(k)
    return ComplexityDataset(name="clutter", root=folder, paths=paths, scores=scores, categories=[], groups=[],
                             score_scale=(0.0, 60.0))


def test_fit_dataset_learns_and_scores_in_range(tmp_path):
    ds = _clutter_dataset(tmp_path, n=32)
    model = EffNetRidge(EffNetRidgeConfig((View("lite0", "square", 128),)))
    info = model.fit_dataset(ds.subset(np.arange(24)), None, num_workers=0)
    assert info["selected_on"] == "leave-one-out" and model.fitted
    test = ds.subset(np.arange(24, 32))
    pred = model.score_images([Image.open(p).convert("RGB") for p in test.full_paths()]).numpy()
    assert ((pred >= 0) & (pred <= 1)).all()
    assert np.corrcoef(pred, test.scores)[0, 1] > 0.8


def test_two_view_model_batches_mixed_shapes():
    config = EffNetRidgeConfig((View("lite0", "longest", 96), View("lite0", "square", 64)))
    model = EffNetRidge(config, pretrained=False)
    assert len(model.backbones) == 1  # the two views share one trunk
    images = [Image.new("RGB", (200, 100), (i * 40, 0, 0)) for i in range(3)] + [Image.new("RGB", (50, 150))]
    batch = model.collate([model.transform(im) for im in images])
    assert isinstance(batch[0], list) and batch[1].shape == (4, 3, 64, 64)
    feats = model.features(batch)
    assert feats.shape == (4, model.feature_dim) and model.feature_dim == 2 * 4128
    single = model.collate([model.transform(images[3])])
    torch.testing.assert_close(feats[3], model.features(single)[0], rtol=1e-4, atol=1e-5)


# --- training CLI and shipped weights ------------------------------------------------------------------

def _train_config(tmp_path, monkeypatch):
    """A 30-image labelled folder and a config training the default head on it (96 px: fast)."""
    data = tmp_path / "data"
    data.mkdir()
    ds = _clutter_dataset(data, n=30, seed=3)
    with open(data / "labels.csv", "w") as f:
        f.write("image,score\n" + "".join(f"{p},{s}\n" for p, s in zip(ds.paths, ds.scores)))
    # a small preset so the test stays fast; same code path as the shipped ones
    monkeypatch.setitem(PRESETS, "effnet_lite0_ridge.savoias", (EffNetRidgeConfig((View("lite0", "square", 96),)), "test"))
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"model": "effnet_lite0_ridge.savoias", "dataset": "data/labels.csv",
                                  "root": "data", "output_dir": "weights",
                                  "evaluation": {"protocol": "random", "n_splits": 2, "val_fraction": 0.2}}))
    return config, tmp_path / "weights" / "effnet_lite0_ridge.savoias.safetensors"


def _verify_report(main, capsys, config, *device) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["train", str(config), "--verify", "--workers", "0", "-q", *device])
    return code, json.loads(capsys.readouterr().out)


def test_train_writes_weights_and_card_that_verify_and_load(tmp_path, monkeypatch, capsys):
    from pyica.cli import main
    from pyica.models import effnet_ridge
    from pyica.runtime import describe_device, resolve_device

    config, weights = _train_config(tmp_path, monkeypatch)
    assert main(["train", str(config), "--workers", "0", "-q"]) == 0
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["weights"]["sha256"] == sha256_file(weights)
    assert card["evaluation"]["metrics"]["pooled"]["n_splits"] == 2
    assert card["preprocessing"]["views"][0]["size"] == 96 and card["score"]["range"] == [0.0, 1.0]
    device = describe_device(resolve_device("auto"))
    assert card["training"]["fit_device"] == device
    # deterministic: a refit on the same device reproduces the file within the config's tolerance
    code, report = _verify_report(main, capsys, config)
    assert code == 0 and report["reproduced"], report
    assert report["device"] == report["card_fit_device"] == device and report["same_device"]
    assert report["tolerance"] == report["same_device_tolerance"] == 1e-4 and "note" not in report
    model = effnet_ridge.build_preset("effnet_lite0_ridge.savoias", weights=weights)
    assert model.fitted and float(model.weight.abs().sum()) > 0


def test_verify_on_another_device_than_the_card_says_allows_the_cross_device_tolerance(tmp_path, monkeypatch,
                                                                                       capsys):
    from pyica.cli import main
    from pyica.training.fit_head import CROSS_DEVICE_TOLERANCE

    config, weights = _train_config(tmp_path, monkeypatch)
    assert main(["train", str(config), "--workers", "0", "-q", "--no-eval", "--device", "cpu"]) == 0
    card_file = weights.with_suffix(".json")
    card = json.loads(card_file.read_text())
    card["training"]["fit_device"] = "cuda (Some GPU)"  # the card only: the weights' sha256 still matches
    card_file.write_text(json.dumps(card))
    code, report = _verify_report(main, capsys, config, "--device", "cpu")
    assert code == 0 and report["reproduced"]
    assert report["device"] == "cpu" and report["card_fit_device"] == "cuda (Some GPU)" and not report["same_device"]
    assert report["tolerance"] == CROSS_DEVICE_TOLERANCE > report["same_device_tolerance"] == 1e-4
    assert "refitted on cpu, the card's head on cuda (Some GPU)" in report["note"]


def test_verify_tolerance_follows_the_card_device():
    from pyica.training.fit_head import CROSS_DEVICE_TOLERANCE, card_fit_device, verify_tolerance

    assert verify_tolerance(1e-4, "cpu", "cpu") == 1e-4
    assert verify_tolerance(1e-4, "cuda (NVIDIA H200)", "cpu") == CROSS_DEVICE_TOLERANCE
    assert verify_tolerance(1e-4, "cuda (NVIDIA H200)", "cuda (NVIDIA A100)") == CROSS_DEVICE_TOLERANCE
    assert verify_tolerance(1e-4, "cpu", None) == CROSS_DEVICE_TOLERANCE  # unrecorded: not assumed the same
    assert verify_tolerance(1.0, "cpu", None) == 1.0  # a config's looser tolerance is kept
    assert card_fit_device({"training": {"fit_device": "cuda (NVIDIA H200)"}}) == "cuda (NVIDIA H200)"
    # cards written before the device was recorded: a CPU-only torch build fitted on the CPU
    assert card_fit_device({"training": {"environment": {"torch": "2.13.0+cpu"}}}) == "cpu"
    assert card_fit_device({"training": {"environment": {"torch": "2.13.0+cu128"}}}) is None
    assert card_fit_device({}) is None


def _float32_flags() -> tuple:
    """(TF32 matmul, TF32 cuDNN conv, cuDNN deterministic, cuDNN benchmark), through torch's fp32_precision
    API where it has one (reading the legacy flags then may raise)."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision") and hasattr(getattr(b.cudnn, "conv", None), "fp32_precision"):
        tf32 = (b.cuda.matmul.fp32_precision == "tf32", b.cudnn.conv.fp32_precision == "tf32")
    else:
        tf32 = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    return (*tf32, b.cudnn.deterministic, b.cudnn.benchmark)


def test_full_float32_switches_tf32_off_and_restores_the_flags():
    from pyica.runtime import full_float32

    b = torch.backends
    saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark)
    try:
        # what `pyica pretrain` leaves behind on CUDA (legacy flags)
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark = True, True, False, True
        with full_float32():
            assert _float32_flags() == (False, False, True, False)
        assert _float32_flags() == (True, True, False, True)
        assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32) == (True, True)  # the legacy flags read again
        with pytest.raises(KeyError), full_float32():
            raise KeyError("an extraction that fails")
        assert _float32_flags() == (True, True, False, True)
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark = saved


def test_describe_device_names_the_device_kind():
    from pyica.runtime import describe_device

    assert describe_device("cpu") == describe_device(torch.device("cpu")) == "cpu"
    if torch.cuda.is_available():
        assert describe_device("cuda") == f"cuda ({torch.cuda.get_device_name(0)})"


def test_shipped_heads_were_fitted_on_the_cpu():
    from pyica.training.fit_head import card_fit_device

    for name in PRESETS:  # so a CPU --verify of them is held to the configs' own tolerance
        assert card_fit_device(load_card(name)) == "cpu", name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_and_verify_on_cuda_reproduce(tmp_path, monkeypatch, capsys):
    from pyica.cli import main
    from pyica.runtime import describe_device

    config, weights = _train_config(tmp_path, monkeypatch)
    assert main(["train", str(config), "--workers", "0", "-q", "--device", "cuda"]) == 0
    gpu = describe_device("cuda")
    assert json.loads(weights.with_suffix(".json").read_text())["training"]["fit_device"] == gpu
    code, report = _verify_report(main, capsys, config, "--device", "cuda")
    assert code == 0 and report["same_device"] and report["tolerance"] == 1e-4, report
    # the CUDA-fitted head refitted on the CPU: the cross-device tolerance (this measures it)
    code, report = _verify_report(main, capsys, config, "--device", "cpu")
    assert code == 0 and report["card_fit_device"] == gpu and not report["same_device"], report


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shipped_weights_match_their_card(name):
    card = load_card(name)
    assert card, f"{name} has no card"
    assert card["weights"]["sha256"] == sha256_file(weights_path(name))
    assert card["name"] == name
    metrics, protocol = card["evaluation"]["metrics"], card["evaluation"]["protocol"]["protocol"]
    if protocol == "loco":  # one split per SAVOIAS category held out
        assert metrics["pooled"]["n_splits"] == 7
    else:
        assert protocol == "random" and metrics["category_mean"]["n_splits"] == 10


def test_damaged_shipped_weights_are_refused(tmp_path, monkeypatch):
    from pyica.models import effnet_ridge

    bad = tmp_path / f"{DEFAULT_MODEL}.safetensors"
    bad.write_bytes(weights_path(DEFAULT_MODEL).read_bytes()[:-1] + b" ")
    bad.with_suffix(".json").write_bytes(weights_path(DEFAULT_MODEL).with_suffix(".json").read_bytes())
    monkeypatch.setattr(effnet_ridge, "weights_path", lambda name: bad)
    with pytest.raises(ValueError, match="sha256"):
        effnet_ridge.build_preset(DEFAULT_MODEL)


def test_default_model_ranks_clutter():
    model = create_model(DEFAULT_MODEL)
    assert model.score_range == (0.0, 1.0)
    flat = Image.new("RGB", (320, 240), (200, 200, 200))
    rng = np.random.default_rng(0)
    busy = _photo("astronaut")
    noise = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    flat_score, photo_score, noise_score = model.score_images([flat, busy, noise]).tolist()
    assert 0.0 <= flat_score < photo_score <= 1.0
    assert flat_score < noise_score


def test_squash_keeps_order_and_range():
    from pyica.models.effnet_ridge import squash_to_unit

    for dtype in (torch.float32, torch.float64):
        raw = torch.linspace(-3, 4, 701, dtype=dtype)
        out = squash_to_unit(raw)
        assert (out > 0).all() and (out < 1).all()
        assert (out.diff() > 0).all()  # strictly increasing: no ties below 0 or above 1
        middle = (raw >= 0.05) & (raw <= 0.95)
        torch.testing.assert_close(out[middle], raw[middle])  # in range, the score is the prediction itself
    # continuous at the joins
    eps = 1e-6
    for join in (0.05, 0.95):
        below, above = squash_to_unit(torch.tensor([join - eps, join + eps], dtype=torch.float64))
        assert float(above - below) == pytest.approx(2 * eps, rel=1e-3)


def test_score_files_equals_forward(tmp_path):
    ds = _clutter_dataset(tmp_path, n=12, seed=5)
    model = EffNetRidge(EffNetRidgeConfig((View("lite0", "square", 96),)))
    model.fit_dataset(ds, None, num_workers=0)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths = ds.full_paths() + [str(tmp_path / "broken.jpg")]
    cached, errors = model.score_files(paths, num_workers=0)
    direct = model.score_images([Image.open(p).convert("RGB") for p in ds.full_paths()]).numpy()
    np.testing.assert_allclose(cached[:-1], direct, rtol=1e-5, atol=1e-6)
    assert np.isnan(cached[-1]) and "broken.jpg" in errors[paths[-1]]


def test_category_rank_targets_keep_only_the_order_inside_each_category():
    from pyica.models.effnet_ridge import EffNetRidgeConfig, training_targets

    scores = np.array([10.0, 90.0, 50.0, 0.0, 100.0, 3.0])
    cats = np.array(["a", "a", "a", "b", "b", "b"])
    ranks = training_targets(scores, cats, 0.0, 100.0, "category_rank")
    np.testing.assert_allclose(ranks, [0.5 / 3, 2.5 / 3, 1.5 / 3, 0.5 / 3, 2.5 / 3, 1.5 / 3])
    np.testing.assert_allclose(training_targets(scores, cats, 0.0, 100.0, "score"), scores / 100)
    # ties share their mid-rank; no categories: ranked together
    np.testing.assert_allclose(training_targets(np.array([1.0, 1.0, 2.0]), np.array([]), 0, 2, "category_rank"),
                               [1 / 3, 1 / 3, 2.5 / 3])
    with pytest.raises(ValueError, match="targets"):
        EffNetRidgeConfig(targets="mos")


# --- fitting within categories, leave-one-category-out penalty, fewer maps ----------------------------

def test_within_category_fit_ignores_category_offsets():
    x, y = _toy_regression(n=90, d=50, seed=2)
    groups = np.repeat(["a", "b", "c"], 30)
    shifted = y + np.repeat([0.0, 5.0, -3.0], 30)  # each category on its own scale
    head = ridge_path(x, y, [2.0], groups=groups)[0]
    np.testing.assert_allclose(ridge_path(x, shifted, [2.0], groups=groups)[0].weight, head.weight, atol=1e-10)
    # the same weights as ordinary ridge on features and targets centred by hand within categories
    z = (x - x.mean(0)) / x.std(0)
    zc = z - np.stack([z[groups == g].mean(0) for g in groups])
    yc = y - np.array([y[groups == g].mean() for g in groups])
    w = np.linalg.solve(zc.T @ zc + 2.0 * np.eye(50), zc.T @ yc)
    np.testing.assert_allclose(head.weight, w, rtol=1e-6, atol=1e-9)
    # pooled ridge lets the offsets pull on the weights
    assert np.abs(ridge_path(x, shifted, [2.0])[0].weight - ridge_path(x, y, [2.0])[0].weight).max() > 1e-3


def test_feature_scale_lowers_the_penalty_of_scaled_features():
    x, y = _toy_regression(n=40, d=30)
    # every feature weighted k: the same fit as alpha / k^2 without weights
    scaled = ridge_path(x, y, [50.0], feature_scale=np.full(30, 5.0))[0]
    plain = ridge_path(x, y, [2.0])[0]
    np.testing.assert_allclose(scaled.predict(x), plain.predict(x), atol=1e-9)


def test_leave_one_category_out_penalty():
    from scipy.stats import spearmanr

    from pyica.models.ridge import select_alpha_by_group

    x, y = _toy_regression(n=90, d=120, seed=3)
    groups = np.repeat(["a", "b", "c"], 30)
    alphas = [1e-1, 1e1, 1e3]
    alpha, scores = select_alpha_by_group(x, y, groups, alphas, within_groups=True)
    # each score is the mean SRCC on a category held out of a within-category fit on the others
    for j, a in enumerate(alphas):
        expected = np.mean([spearmanr(ridge_path(x[groups != g], y[groups != g], [a], groups=groups[groups != g])[0]
                                      .predict(x[groups == g]), y[groups == g])[0] for g in "abc"])
        assert scores[j] == pytest.approx(expected, abs=1e-12)
    assert alpha == alphas[int(np.argmax(np.round(scores, 12)[::-1]) * -1 + len(alphas) - 1)]  # ties: stronger
    with pytest.raises(ValueError, match="3 groups"):
        select_alpha_by_group(x[:60], y[:60], groups[:60], alphas)


def test_within_category_model_fits_by_leave_one_category_out(tmp_path):
    parts = [_clutter_dataset(tmp_path / c, n=16, seed=s) for s, c in enumerate("abc") if (tmp_path / c).mkdir() is None]
    ds = ComplexityDataset(name="clutter3", root=tmp_path, paths=[f"{c}/{p}" for c, part in zip("abc", parts)
                                                                   for p in part.paths],
                           scores=np.concatenate([part.scores + 10 * k for k, part in enumerate(parts)]),
                           categories=np.repeat(list("abc"), 16), groups=[], score_scale=(0.0, 80.0))
    config = EffNetRidgeConfig((View("lite0", "square", 96),), targets="category_rank", pooled_maps=6,
                               within_category=True, alpha_selection="leave_one_category_out")
    model = EffNetRidge(config)
    assert model.feature_dim == 2 * (16 + 24 + 40 + 80 + 112 + 192)
    info = model.fit_dataset(ds, None, num_workers=0)
    assert info["selected_on"] == "leave-one-category-out" and len(info["selection_scores"]) == len(info["alphas"])
    scores, errors = model.score_files(ds.full_paths(), num_workers=0)
    assert not errors and ((scores > 0) & (scores < 1)).all()
    for c in "abc":
        rho = np.corrcoef(scores[ds.categories == c], ds.scores[ds.categories == c])[0, 1]
        assert rho > 0.8, c
    # the same numbers through forward
    direct = model.score_images([Image.open(p).convert("RGB") for p in ds.full_paths()[:5]]).numpy()
    np.testing.assert_allclose(scores[:5], direct, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="alpha_selection"):
        EffNetRidgeConfig(alpha_selection="test")
