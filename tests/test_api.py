"""The public Python API: create_metric, score, evaluate, list_models."""

import numpy as np
import pytest
import torch
from PIL import Image

import pyica

CLASSIC = ["colorfulness", "compression_ratio_jpeg", "compression_ratio_png", "edge_density", "entropy",
           "multiscale_gradient", "spatial_information", "unique_colors"]


def test_registry_lists_the_classic_measures_and_the_default():
    names = pyica.list_models()
    assert set(CLASSIC) <= set(names)
    assert pyica.DEFAULT_MODEL in names
    assert pyica.list_models("compression*") == ["compression_ratio_jpeg", "compression_ratio_png"]
    assert set(pyica.list_models(kind="classic")) >= set(CLASSIC)
    with pytest.raises(KeyError, match="Did you mean"):
        pyica.create_metric("edge_densty")


def test_metric_accepts_paths_images_arrays_and_tensors(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    metric = pyica.create_metric("entropy", device="cpu")
    assert metric.lower_better is False
    expected = metric(str(path))
    assert isinstance(expected, float)
    assert metric(path) == expected
    assert metric(Image.fromarray(rgb)) == expected
    assert metric(rgb) == expected
    assert metric(rgb.astype(np.float32) / 255.0) == pytest.approx(expected, abs=1e-6)
    chw = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    assert metric(chw) == pytest.approx(expected, abs=1e-6)
    batch = metric(torch.stack([chw, torch.zeros_like(chw)]))
    assert batch.shape == (2,) and batch[0] == pytest.approx(expected, abs=1e-6) and batch[1] == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric(chw * 255.0)
    assert metric(torch.from_numpy(rgb).permute(2, 0, 1)) == expected  # uint8 tensors are 0..255
    assert isinstance(metric, torch.nn.Module)


def test_score_yields_records_in_order_with_errors(tmp_path):
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 60, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"not a png")
    records = list(pyica.score(str(tmp_path), model="colorfulness", num_workers=0, device="cpu"))
    assert [r.path.split("/")[-1] for r in records] == ["0.png", "1.png", "2.png", "3.png"]
    assert [r.score is None for r in records] == [False, False, False, True]
    assert "not an image" in records[3].error
    assert records[0].score < records[2].score  # more saturated red is more colourful


def test_evaluate_reports_the_field_metrics():
    target = np.arange(20, dtype=float)
    result = pyica.evaluate(target * 2 + 1, target)
    assert result["srcc"] == pytest.approx(1.0) and result["plcc"] == pytest.approx(1.0)
    assert {"krcc", "rmse", "mae", "rmae_icnet", "rmae_cmssa"} <= set(result)
