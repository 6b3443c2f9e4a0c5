"""ICNet (pyica.models.icnet) on our ResNet-18 (pyica.models.resnet), its official-name mapping, the
trainer (pyica.training.train_icnet) and its native maps. Tiny widths (ResNet width 8, 64-px inputs)
and a dozen synthetic images keep everything to seconds."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pyica.models.icnet import (ICNet, ICNetConfig, ICNetModel, SLAM, icnet_loss, load_icnet, official_to_pyica,
                                pyica_to_official)
from pyica.models.resnet import ResNet18, load_resnet_weights, read_state_dict

TINY = dict(input_size=64, width=8, fuse_channels=8, slam_hidden=16, score_hidden=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(seed: int = 0, **kw) -> ICNet:
    torch.manual_seed(seed)
    return ICNet(ICNetConfig(**{**TINY, **kw}))


def rect_image(k: int, seed: int, size=(64, 64)) -> Image.Image:
    """An image with ``k`` coloured rectangles on a flat background."""
    rng = np.random.default_rng(seed)
    w, h = size
    a = np.full((h, w, 3), rng.integers(60, 200), np.uint8)
    for _ in range(k):
        rw, rh = rng.integers(4, 14, 2)
        x, y = rng.integers(0, w - 14), rng.integers(0, h - 14)
        a[y:y + rh, x:x + rw] = rng.integers(0, 256, 3)
    return Image.fromarray(a)


# --- ResNet-18 -------------------------------------------------------------------------------------

def test_resnet18_has_torchvision_names_and_stage_shapes():
    full = ResNet18()
    keys = list(full.state_dict())
    assert len(keys) == 122  # torchvision's resnet18().state_dict() has 122 entries
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight", "fc.bias"):
        assert key in keys
    assert "layer1.0.downsample.0.weight" not in keys  # layer1 keeps the shape: no projection
    assert sum(p.numel() for p in full.parameters()) == 11_689_512  # torchvision's count

    net = ResNet18(None, width=8).eval()
    stages = net.forward_stages(torch.randn(2, 3, 64, 64))
    assert [tuple(s.shape) for s in stages] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 64)
    assert ResNet18(10, width=8)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert list(ResNet18(None, stages=2, width=8).state_dict())[-1].startswith("layer2.")


def test_resnet18_loads_torchvision_format_files(tmp_path):
    torch.manual_seed(0)
    source = ResNet18(1000, width=8).eval()
    x = torch.randn(2, 3, 64, 64)
    # a torchvision-style .pth: an old one has no num_batches_tracked; a DDP save has "module." keys
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "resnet18.pth")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    for name in ("resnet18.pth", "resnet18.safetensors"):
        torch.manual_seed(1)
        target = ResNet18(1000, width=8).eval()
        assert load_resnet_weights(target, tmp_path / name) == []
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    # a truncated network takes its part and reports the rest
    part = ResNet18(None, stages=2, width=8)
    ignored = load_resnet_weights(part, tmp_path / "resnet18.pth")
    assert ignored and all(k.startswith(("layer3.", "layer4.", "fc.")) for k in ignored)
    torch.testing.assert_close(part.layer2[1].conv2.weight, source.layer2[1].conv2.weight)
    # wrong width, unknown keys, pickled code: refused
    with pytest.raises(ValueError, match="shapes"):
        load_resnet_weights(ResNet18(1000, width=16), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match="unknown keys"):
        load_resnet_weights(ResNet18(1000, width=8), {**state, "extra.weight": torch.zeros(1)})
    torch.save({"weights": state, "code": Path("x")}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError):
        read_state_dict(tmp_path / "evil.pth")


# --- ICNet -----------------------------------------------------------------------------------------

def test_icnet_output_shapes_and_input_check():
    net = tiny_net().eval()
    score, cmap = net(torch.randn(3, 3, 64, 64))
    assert score.shape == (3,) and cmap.shape == (3, 1, 8, 8)
    assert bool((score > 0).all() and (score < 1).all() and (cmap > 0).all() and (cmap < 1).all())
    score, cmap = net(torch.randn(1, 3, 64, 64))  # batch of one: still (1,), unlike the official squeeze()
    assert score.shape == (1,) and cmap.shape == (1, 1, 8, 8)
    score, cmap = tiny_net(input_size=96).eval()(torch.randn(2, 3, 96, 96))
    assert cmap.shape == (2, 1, 12, 12)
    with pytest.raises(ValueError, match="64 x 64"):
        net(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="multiple of 32"):
        ICNetConfig(input_size=100)


def _resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Bilinear resize with align_corners=True as an (n_out, n_in) matrix, written out by hand."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        pos = i * (n_in - 1) / (n_out - 1)
        lo = min(int(pos), n_in - 2)
        frac = pos - lo
        m[i, lo] += 1 - frac
        m[i, lo + 1] += frac
    return m


def test_slam_gate_equals_direct_computation():
    torch.manual_seed(0)
    slam = SLAM(4, hidden=8)
    w1, b1 = slam.mlp[0].weight, slam.mlp[0].bias
    w2, b2 = slam.mlp[2].weight, slam.mlp[2].bias
    for side in (8, 4):  # resized, and already at the SLAM size (used as is)
        x = torch.randn(2, 3, side, side)
        a = _resize_matrix(side, 4) if side != 4 else torch.eye(4)
        expected = torch.empty_like(x)
        for n in range(2):
            for c in range(3):
                layout = (a @ x[n, c] @ a.T).reshape(-1)
                gate = torch.sigmoid(w2 @ torch.relu(w1 @ layout + b1) + b2)
                expected[n, c] = x[n, c] * gate
        torch.testing.assert_close(slam(x), expected, rtol=1e-5, atol=1e-6)


def test_loss_is_point_nine_score_plus_point_one_map_mean():
    torch.manual_seed(0)
    score, cmap, y = torch.rand(5), torch.rand(5, 1, 8, 8), torch.rand(5)
    expected = 0.9 * ((score - y) ** 2).mean() + 0.1 * ((cmap.mean(dim=(1, 2, 3)) - y) ** 2).mean()
    torch.testing.assert_close(icnet_loss(score, cmap, y), expected)
    net = tiny_net()
    torch.testing.assert_close(net.loss((score, cmap), y), expected)


def _official_layout(net: ICNet) -> nn.Module:
    """The same modules arranged under the official attribute names (as the module doc lists them)."""
    def slam(s):
        m = nn.Module()
        m.linear = s.mlp
        return m

    def conv_bn(conv, bn):
        m = nn.Module()
        m.conv, m.bn = conv, bn
        return m

    d, c, o = net.detail, net.context, nn.Module()
    o.b1_1 = nn.Sequential(d.conv1, d.bn1, d.relu, d.maxpool, d.layer1)
    o.b1_1_slam, o.b1_2, o.b1_2_slam = slam(net.detail_slam1), d.layer2, slam(net.detail_slam2)
    o.b2_1 = nn.Sequential(c.conv1, c.bn1, c.relu, c.maxpool, c.layer1)
    o.b2_1_slam = slam(net.context_slam1)
    o.b2_2, o.b2_2_slam = c.layer2, slam(net.context_slam2)
    o.b2_3, o.b2_3_slam = c.layer3, slam(net.context_slam3)
    o.b2_4, o.b2_4_slam = c.layer4, slam(net.context_slam4)
    o.up1 = conv_bn(net.detail_up.conv, net.detail_up.bn)
    o.up2 = conv_bn(net.context_up.conv, net.context_up.bn)
    o.to_map_f = conv_bn(net.map_features[0], net.map_features[1])
    o.to_map_f_slam = slam(net.map_slam)
    o.to_map = nn.Module()
    o.to_map.to_map = nn.Sequential(net.to_map, nn.Sigmoid())
    o.to_score_f = conv_bn(net.score_features[0], net.score_features[1])
    o.to_score_f_slam = slam(net.score_slam)
    o.head = nn.Sequential(net.score_mlp[0], nn.ReLU(), net.score_mlp[2], nn.Sigmoid())
    return o


def test_official_key_mapping_round_trips_and_loads(tmp_path):
    net = tiny_net(seed=3).eval()
    ours = net.state_dict()
    official = _official_layout(net).state_dict()
    assert len(official) == len(ours)
    mapped = official_to_pyica(official)
    assert set(mapped) == set(ours) and all(mapped[k] is ours[k] or torch.equal(mapped[k], ours[k]) for k in ours)
    assert set(pyica_to_official(ours)) == set(official)
    assert official_to_pyica(pyica_to_official(ours)).keys() == ours.keys()
    with pytest.raises(ValueError, match="official"):
        official_to_pyica({**official, "b3_1.weight": torch.zeros(1)})

    # an official-format ck.pth (torch.load(weights_only=True)) loads and computes the same
    torch.save(dict(official), tmp_path / "ck.pth")
    model = load_icnet(tmp_path / "ck.pth", config=ICNetConfig(**TINY))
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    reference = ICNetModel(net).eval()
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    assert model.card["format"] == "official IC9600 checkpoint" and len(model.card["weights"]["sha256"]) == 64
    with pytest.raises(ValueError, match="does not fit"):
        load_icnet(tmp_path / "ck.pth")  # official sizes: the tiny tensors do not fit


def test_forward_matches_the_official_order_of_operations():
    """Upsampling before the 1x1 conv (official) and after it (ours) agree up to rounding."""
    net = tiny_net(seed=1).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)

    def up_conv_bn_relu(block, feat, size):
        feat = F.interpolate(feat, size=(size, size), mode="bilinear", align_corners=True)
        return F.relu(block.bn(block.conv(feat)))

    with torch.no_grad():
        x2 = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=True)
        d = net.detail_slam2(net.detail.layer2(net.detail_slam1(net.detail.layer1(net.detail.stem(x)))))
        c = net.context_slam2(net.context.layer2(net.context_slam1(net.context.layer1(net.context.stem(x2)))))
        c = net.context_slam4(net.context.layer4(net.context_slam3(net.context.layer3(c))))
        fused = torch.cat((up_conv_bn_relu(net.detail_up, d, 8), up_conv_bn_relu(net.context_up, c, 8)), 1)
        cmap = torch.sigmoid(net.to_map(net.map_slam(net.map_features(fused))))
        pooled = F.adaptive_avg_pool2d(net.score_slam(net.score_features(fused)), 1).flatten(1)
        score = torch.sigmoid(net.score_mlp(pooled)).squeeze(1)
        ours = net(x)
    torch.testing.assert_close(ours[0], score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], cmap, rtol=1e-5, atol=1e-6)


def test_backbone_loads_into_both_branches(tmp_path):
    torch.manual_seed(5)
    resnet = ResNet18(1000, width=8)
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    net = tiny_net()
    info = net.load_backbone(tmp_path / "r18.pth")
    assert info["ignored_by_context_branch"] == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(net.detail.layer1[0].conv1.weight, resnet.layer1[0].conv1.weight)
    torch.testing.assert_close(net.context.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)


# --- training, weights on disk, the registry and native maps ----------------------------------------

def _toy_manifest(root: Path, n: int = 12) -> Path:
    from pyica.data.dataset import ComplexityDataset
    from pyica.data.manifest import write_manifest

    root.mkdir(parents=True, exist_ok=True)
    paths, scores, cats = [], [], []
    for i in range(n):
        k = i % 6
        rect_image(2 * k, i).save(root / f"img{i:02d}.png")
        paths.append(f"img{i:02d}.png")
        scores.append(float(k))
        cats.append("ab"[i % 2])
    ds = ComplexityDataset("toy", root, np.array(paths), np.array(scores), np.array(cats), np.array([]),
                           score_scale=(0.0, 5.0))
    return write_manifest(ds, root / "toy.csv")


def test_train_config_writes_weights_and_card_that_score_and_map(tmp_path):
    from pyica.cli import main
    from pyica.maps import complexity_map
    from pyica.registry import create_model

    manifest = _toy_manifest(tmp_path / "data")
    config = {"method": "icnet", "model": "icnet.savoias", "dataset": str(manifest), "icnet": TINY,
              "recipe": {"epochs": 2, "batch_size": 4, "lr": 0.01, "eval_batch_size": 8, "num_workers": 0},
              "evaluation": None, "output_dir": "out"}
    (tmp_path / "icnet.json").write_text(json.dumps(config))
    assert main(["train", str(tmp_path / "icnet.json"), "--workers", "0", "--device", "cpu", "-q"]) == 0
    weights = tmp_path / "out" / "icnet.savoias.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["architecture"]["name"] == "icnet" and card["architecture"]["arguments"] == {**TINY, "map_weight": 0.1}
    assert card["backbone"]["init"].startswith("random")
    assert card["training"]["images"] + card["training"]["validation_images"] == 12
    assert len(card["training"]["history"]) == 2 and card["training"]["selected_on"] in ("validation", "last epoch")
    assert len(card["weights"]["sha256"]) == 64
    assert not (tmp_path / "out" / "checkpoints").exists()  # removed once weights and card are written

    model = create_model("icnet.savoias", weights=str(weights))
    images = [rect_image(3, 100), rect_image(9, 101, size=(80, 56))]
    scores = model.score_images(images)
    assert scores.shape == (2,) and bool(((scores > 0) & (scores < 1)).all())
    torch.testing.assert_close(scores, load_icnet(weights).score_images(images))
    grid = complexity_map(model, images[1])  # the native map, at the image's size
    assert grid.shape == (56, 80) and grid.dtype == np.float32 and 0 <= grid.min() <= grid.max() <= 1
    np.testing.assert_array_equal(grid, model.native_map(images[1]))

    # `pyica score --maps` writes ICNet's own map
    images[1].save(tmp_path / "wide.png")
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    assert main(["score", str(tmp_path / "wide.png"), "-o", str(out), "-m", "icnet.savoias", "--weights",
                 str(weights), "--maps", str(maps), "--workers", "0", "-q"]) == 0
    written = np.load(maps / "wide.map.npy")
    np.testing.assert_allclose(written, grid, rtol=0, atol=1e-6)
    with Image.open(maps / "wide.map.png") as picture:  # the 80 x 56 overlay with a colour-bar panel beside it
        assert picture.width > 80 and picture.height == 160

    data = bytearray(weights.read_bytes())  # a damaged file is refused
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        create_model("icnet.savoias", weights=str(weights))
    with pytest.raises(ValueError, match="ships no weights"):
        create_model("icnet.ic9600")


def test_fit_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch):
    from pyica.data.manifest import read_manifest
    from pyica.training.resume import CheckpointFile
    from pyica.training.train_icnet import ICNetRecipe, ICNetTrainer

    ds = read_manifest(_toy_manifest(tmp_path / "data"))
    train, val = ds.subset(np.arange(6)), ds.subset(np.arange(6, 12))  # 3 validation images per category
    recipe = ICNetRecipe(epochs=2, batch_size=4, lr=0.01, device="cpu", num_workers=0)

    def build():
        return ICNetModel(ICNet(ICNetConfig(**TINY)))

    whole = ICNetTrainer(build, recipe)
    result = whole.fit_dataset(train, val)
    assert result["epochs_run"] == 2 and result["resumed_after_epoch"] is None
    assert result["selected_on"] == "validation" and all(np.isfinite(r["val_srcc"]) for r in result["history"])

    stopped = ICNetTrainer(build, recipe, checkpoint_dir=tmp_path / "ck")
    real_save = CheckpointFile.save

    def save_then_stop(self, state):
        real_save(self, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointFile, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit_dataset(train, val)
    monkeypatch.setattr(CheckpointFile, "save", real_save)
    resumed = ICNetTrainer(build, recipe, checkpoint_dir=tmp_path / "ck", resume=True)
    again = resumed.fit_dataset(train, val)
    assert again["resumed_after_epoch"] == 1 and again["best_epoch"] == result["best_epoch"]
    assert [r["loss"] for r in again["history"]] == [r["loss"] for r in result["history"]]
    for k, v in whole.model.net.state_dict().items():
        torch.testing.assert_close(resumed.model.net.state_dict()[k], v, rtol=0, atol=0)
    # a finished fit is not run again
    assert ICNetTrainer(build, recipe, checkpoint_dir=tmp_path / "ck", resume=True).fit_dataset(
        train, val)["resumed_after_epoch"] == 2
