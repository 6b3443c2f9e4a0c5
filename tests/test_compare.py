"""Model costs (pyica.costs) and the model comparison benchmark (``python -m benchmarks.compare_models``) on tiny
inputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from pyica.costs import model_cost
from pyica.models.base import ComplexityModel
from pyica.registry import create_model

class ToTensor8:
    """RGB image -> float (3, 8, 8)."""

    def __call__(self, image):
        array = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1)


class TinyConv(ComplexityModel):
    def __init__(self):
        super().__init__(ToTensor8())
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, batch):
        return self.conv(batch).mean(dim=(1, 2, 3))


def test_model_cost_counts_parameters_and_multiply_adds():
    # a plain module on a preprocessed batch: conv 8*8 outputs x 4 channels x 3*3*3 taps, linear 256 x 2
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 2))
    cost = model_cost(net, batch=torch.zeros(1, 3, 8, 8), min_seconds=0.0, min_repeats=1)
    assert cost.params == (4 * 3 * 9 + 4) + (256 * 2 + 2)
    assert cost.macs == 8 * 8 * 4 * 3 * 9 + 256 * 2
    assert cost.input == "3x8x8" and cost.ms_per_image > 0

    # a ComplexityModel through its transform, on an image of any size
    tiny = TinyConv().eval()
    cost = model_cost(tiny, Image.new("RGB", (40, 30), (10, 200, 30)), min_seconds=0.0, min_repeats=1)
    assert (cost.params, cost.macs, cost.input) == (4 * 3 * 9 + 4, 8 * 8 * 4 * 3 * 9, "3x8x8")
    assert cost.as_row()["gmacs_per_image"] == round(6912 / 1e9, 4)

    # classic measures compute in numpy: no parameters, MACs not countable
    cost = model_cost(create_model("entropy"), min_seconds=0.0, min_repeats=1)
    assert cost.params == 0 and cost.macs is None and cost.as_row()["gmacs_per_image"] == ""


@pytest.fixture()
def two_category_dataset(tmp_path):
    """40 small images in 2 categories whose 'human' score is the noise amplitude."""
    rows = ["image,score,category"]
    for i in range(40):
        amplitude = 3 * (i // 2) + (i % 3)
        rng = np.random.default_rng(i)
        pixels = 128 + rng.normal(0, amplitude + 0.1, (24, 24, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp_path / f"img{i}.png")
        rows.append(f"img{i}.png,{amplitude},{'a' if i % 2 else 'b'}")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_compare_writes_tidy_csv_and_readme_tables(two_category_dataset, tmp_path):
    from benchmarks import compare_models

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- compare:start -->\nold\n<!-- compare:end -->\nafter\n")
    out, per_split = tmp_path / "compare.csv", tmp_path / "splits.csv"
    compare_models.main(["-m", "entropy", "spatial_information", "--dataset", str(two_category_dataset),
                         "--splits", "2", "--workers", "0", "--cost-seconds", "0", "--out", str(out),
                         "--splits-out", str(per_split), "--doc", str(readme)])

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"model", "variant", "kind", "source", "dataset", "protocol", "category", "n_splits", "srcc_mean",
            "srcc_std", "plcc_mean", "rmse_logistic4_mean", "params", "gmacs_per_image", "ms_per_image",
            "machine"} <= columns
    keys = {(r["model"], r["protocol"], r["category"]) for r in rows}
    for model in ("entropy", "spatial_information"):
        assert {(model, "random", c) for c in ("pooled", "a", "b", "category_mean")} <= keys
        assert {(model, "loco", c) for c in ("a", "b", "category_mean")} <= keys
    assert len(rows) == 2 * (4 + 3)
    for r in rows:
        assert r["source"] == "run" and r["kind"] == "classic" and r["params"] == "0" and r["gmacs_per_image"] == ""
        assert float(r["ms_per_image"]) > 0
    random_mean = next(r for r in rows if (r["model"], r["protocol"], r["category"]) == ("entropy", "random",
                                                                                         "category_mean"))
    assert random_mean["n_splits"] == "2" and -1 <= float(random_mean["srcc_mean"]) <= 1
    assert float(random_mean["rmse_logistic4_mean"]) >= 0
    loco_mean = next(r for r in rows if (r["model"], r["protocol"], r["category"]) == ("entropy", "loco",
                                                                                       "category_mean"))
    loco_a = next(r for r in rows if (r["model"], r["protocol"], r["category"]) == ("entropy", "loco", "a"))
    loco_b = next(r for r in rows if (r["model"], r["protocol"], r["category"]) == ("entropy", "loco", "b"))
    assert loco_mean["n_splits"] == "2"
    assert float(loco_mean["srcc_mean"]) == pytest.approx((float(loco_a["srcc_mean"]) + float(loco_b["srcc_mean"])) / 2)

    with open(per_split, newline="") as f:
        split_rows = list(csv.DictReader(f))
    assert {r["split"] for r in split_rows if r["protocol"] == "loco"} == {"loco_a", "loco_b"}
    assert len({r["split"] for r in split_rows if r["protocol"] == "random"}) == 2

    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n<!-- compare:start -->\n") and text.endswith("<!-- compare:end -->\nafter\n")
    section = text.split("<!-- compare:start -->")[1].split("<!-- compare:end -->")[0]
    assert "old" not in section and "Table 1" in section and "Table 2" in section
    assert "| `entropy` | run |" in section and "`spatial_information`" in section
    assert "| a | b |" in section.replace(":---", "") or "a | b" in section

    # rerunning one model keeps the other's rows
    compare_models.main(["-m", "entropy", "--protocols", "random", "--dataset", str(two_category_dataset),
                         "--splits", "2", "--workers", "0", "--cost-seconds", "0", "--out", str(out),
                         "--splits-out", str(per_split), "--no-doc"])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["model"], r["protocol"]) for r in rows} == {("spatial_information", "random"),
                                                           ("spatial_information", "loco"), ("entropy", "random")}


@pytest.mark.compare  # trains ICNet: ~40 s each on 2 CPU cores
@pytest.mark.filterwarnings("ignore:srcc:UserWarning")  # a 4-image validation part cannot rank every category
def test_compare_trains_slow_model_only_under_slow_protocols(two_category_dataset, tmp_path):
    """--include-slow trains ICNet per split (a 32-px, 1-epoch config here); --slow-protocols random leaves its
    loco row 'not run' with the reason, while a fast model still runs both protocols."""
    import json

    from benchmarks import compare_models

    config = tmp_path / "icnet_tiny.json"
    config.write_text(json.dumps({"method": "icnet", "model": "icnet.savoias", "dataset": str(two_category_dataset),
                                  "icnet": {"input_size": 32},
                                  "recipe": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0}}))
    out = tmp_path / "compare.csv"
    compare_models.main(["-m", "icnet.savoias", "entropy", "--dataset", str(two_category_dataset), "--splits", "2",
                         "--include-slow", "--slow-splits", "1", "--slow-protocols", "random",
                         "--icnet-config", str(config), "--work-dir", str(tmp_path / "work"), "--workers", "0",
                         "--cost-seconds", "0", "--out", str(out), "--splits-out", str(tmp_path / "splits.csv"),
                         "--no-doc"])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    icnet = {(r["protocol"], r["category"]): r for r in rows if r["model"] == "icnet.savoias"}
    assert icnet[("random", "category_mean")]["n_splits"] == "1"
    assert icnet[("random", "category_mean")]["source"] == "run"
    assert -1 <= float(icnet[("random", "category_mean")]["srcc_mean"]) <= 1
    assert icnet[("random", "category_mean")]["variant"] .startswith("32 px, 1 epochs, random init")
    assert icnet[("loco", "category_mean")]["n_splits"] == "0"
    assert icnet[("loco", "category_mean")]["source"].startswith("not run: loco not in --slow-protocols")
    assert not any(r["protocol"] == "loco" and r["category"] != "category_mean" for r in icnet.values())
    assert float(icnet[("random", "category_mean")]["params"]) > 1e6  # two ResNet-18 branches
    entropy = {(r["protocol"], r["category"]) for r in rows if r["model"] == "entropy"}
    assert ("loco", "category_mean") in entropy and ("random", "category_mean") in entropy


@pytest.mark.compare  # trains ICNet: ~40 s each on 2 CPU cores
@pytest.mark.filterwarnings("ignore:srcc:UserWarning")
def test_compare_reuses_fits_of_a_config_that_keeps_its_checkpoints(two_category_dataset, tmp_path, monkeypatch):
    """With keep_checkpoints, --include-slow writes its ICNet fit where `pyica train` keeps its own
    (output_dir/checkpoints), so the fit `pyica train` made is found there; a rerun trains nothing."""
    import json

    from benchmarks import compare_models
    from pyica.training.resume import CheckpointFile

    config = tmp_path / "icnet_tiny.json"
    config.write_text(json.dumps({"method": "icnet", "model": "icnet.savoias", "dataset": str(two_category_dataset),
                                  "icnet": {"input_size": 32}, "output_dir": "runs", "keep_checkpoints": True,
                                  "recipe": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0}}))
    argv = ["-m", "icnet.savoias", "--dataset", str(two_category_dataset), "--splits", "1", "--include-slow",
            "--slow-protocols", "random", "--icnet-config", str(config), "--work-dir", str(tmp_path / "work"),
            "--workers", "0", "--cost-seconds", "0", "--out", str(tmp_path / "compare.csv"),
            "--splits-out", str(tmp_path / "splits.csv"), "--no-doc"]
    compare_models.main(argv)
    fits = list((tmp_path / "runs" / "checkpoints").glob("fit-*.pt"))
    assert len(fits) == 1 and not (tmp_path / "work" / "icnet-checkpoints").exists()
    def metrics():
        with open(tmp_path / "compare.csv", newline="") as f:
            return [(r["protocol"], r["category"], r["srcc_mean"], r["plcc_mean"]) for r in csv.DictReader(f)]

    first = metrics()
    assert ("random", "category_mean") in {row[:2] for row in first}

    epochs = []
    original = CheckpointFile.save
    monkeypatch.setattr(CheckpointFile, "save", lambda self, state: (epochs.append(state["epoch"]), original(self, state)))
    compare_models.main(argv)
    assert epochs == []  # the finished fit was loaded, not trained again
    assert metrics() == first
