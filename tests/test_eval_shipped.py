"""`pyica eval` of shipped models (issue 20): every protocol runs, `all` scores the shipped head as it is
and says when that is in-sample, errors are in the label's units, and the table names the model."""

import csv
import math
import warnings

import numpy as np
import pytest
from PIL import Image

from pyica.cli import main
from pyica.data.manifest import read_manifest
from pyica.evaluation import REFIT_PROTOCOLS, evaluate_predictions_file, in_sample_note, run_protocol
from pyica.models.ridge import leave_one_out_path, select_alpha
from pyica.registry import create_model, get_entry, list_models

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # validation parts of a 32-image toy hold one or two images per category: no rank there
              pytest.mark.filterwarnings("ignore::pyica.metrics.MetricWarning")]


def _write_labelled(folder, n=32):
    """``n`` small images in two categories whose 'human' score (0-100) is their noise amplitude."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image,score,category"]
    for i in range(n):
        score = round(100 * (i // 2) / (n // 2 - 1))
        rng = np.random.default_rng(i)
        pixels = 128 + rng.normal(0, 0.6 * score + 0.1, (40, 40, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
        rows.append(f"img{i}.png,{score},{'a' if i % 2 else 'b'}")
    manifest = folder / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _write_labelled(tmp_path_factory.mktemp("eval") / "toy")


def _shipped_models() -> list[str]:
    """Registered models that come with weights (a card), i.e. that `pyica eval -m NAME` can run as they are."""
    return [name for name in list_models(kind="learned")
            if get_entry(name).card and not get_entry(name).needs_weights]


# --- ridge: degenerate leave-one-out ------------------------------------------------------------------

def test_leave_one_out_refuses_too_few_images_instead_of_dividing_by_zero():
    x = np.random.default_rng(0).normal(size=(5, 8))
    for n in (0, 1):
        with pytest.raises(ValueError, match=f"at least 2 training images, got {n}"):
            leave_one_out_path(x[:n], np.arange(float(n)))
    with pytest.raises(ValueError, match="no training images"):
        select_alpha(x[:0], np.zeros(0))
    two = leave_one_out_path(x[:2], np.array([0.0, 1.0]), [0.1, 10.0])  # each predicted from the other
    assert np.all(np.isfinite(two))


def test_leave_one_out_marks_undefined_predictions_and_never_selects_them():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 30)), rng.normal(size=10)  # more features than images: alpha 0 interpolates
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero RuntimeWarning
        loo = leave_one_out_path(x, y, [0.0, 1.0])
    assert np.all(np.isnan(loo[:, 0]))  # leverage 1: no leave-one-out prediction, NaN rather than inf
    assert np.all(np.isfinite(loo[:, 1]))
    alpha, scores = select_alpha(x, y, alphas=[0.0, 1.0])
    assert alpha == 1.0 and math.isnan(scores[0])


# --- every shipped model under every protocol it offers -------------------------------------------

@pytest.mark.parametrize("name", _shipped_models())
def test_shipped_model_evaluates_under_all_random_and_loco(name, toy):
    ds = read_manifest(toy)
    try:
        model = create_model(name)
    except ImportError as err:  # a model that needs an extra this environment lacks
        pytest.skip(f"{name}: {err}")
    # one instance for the three protocols so that features are extracted once; `all` runs first,
    # while the head is still the shipped one
    everything = run_protocol(name, ds, model=model, protocol="all", num_workers=0)
    assert everything.weights.weights == "loaded" and not everything.weights.in_sample
    assert everything.weights.refit_protocols == ("random", "loco")  # no official split in this manifest
    for protocol, expected_splits in (("random", 2), ("loco", 2)):
        result = run_protocol(name, ds, model=model, protocol=protocol, n_splits=2, test_fraction=0.5,
                              num_workers=0)
        assert len({r["split"] for r in result.rows}) == expected_splits
        assert {r["weights"] for r in result.rows} == {"refit"} and not any(r["in_sample"] for r in result.rows)
        pooled = [r for r in result.rows if r["category"] == "pooled"]
        assert all(np.isfinite(r["srcc"]) and 0 <= r["rmse_logistic4"] <= 100 for r in pooled), pooled
    pooled = everything.rows[0]
    assert pooled["category"] == "pooled" and pooled["n"] == len(ds) and pooled["srcc"] > 0.5
    assert 0 <= pooled["rmse_logistic4"] < 40  # label units (0-100), not the 0-1 score's distance to them
    assert {r["weights"] for r in everything.rows} == {"loaded"}


def test_all_refuses_a_trainable_model_without_weights(toy):
    with pytest.raises(ValueError, match="no trained weights.*scores a model as loaded"):
        run_protocol("effnet_lite0_ridge.savoias", read_manifest(toy), protocol="all",
                     model_kwargs={"fitted": False}, num_workers=0)


def test_default_model_under_all_on_the_cli_scores_the_shipped_head(toy, tmp_path, capsys):
    results = tmp_path / "r.csv"
    assert main(["eval", "--dataset", str(toy), "-q", "--workers", "0", "-o", str(results)]) == 0
    out = capsys.readouterr().out
    assert "effnet_lite0_within.savoias" in out and "note:" not in out  # toy data: not in-sample
    rows = list(csv.DictReader(results.open()))
    assert {r["weights"] for r in rows} == {"loaded"} and {r["in_sample"] for r in rows} == {"False"}
    assert {r["mapping"] for r in rows} <= {"logistic4", "linear", "per_category:logistic4"}
    assert "rmse" not in rows[0] and float(rows[0]["rmse_logistic4"]) >= 0


# --- in-sample ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def savoias_named(tmp_path_factory):
    """A toy labelled dataset whose name is the shipped heads' training dataset (folder ``savoias``)."""
    return _write_labelled(tmp_path_factory.mktemp("named") / "savoias")


def test_all_on_the_training_dataset_is_marked_in_sample(savoias_named, tmp_path, capsys):
    results = tmp_path / "r.csv"
    argv = ["eval", "-m", "effnet_lite0_ridge.savoias", "--dataset", str(savoias_named), "-q", "--workers", "0",
            "-o", str(results)]
    assert main(argv) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("note: effnet_lite0_ridge.savoias was trained on savoias")
    assert "in-sample" in first_line and "--protocol random, loco refit the head" in first_line
    rows = list(csv.DictReader(results.open()))
    assert {r["in_sample"] for r in rows} == {"True"} and {r["weights"] for r in rows} == {"loaded"}

    # the same model refit on each training part is out of sample: no note, in_sample False
    assert main([*argv, "--protocol", "random", "--splits", "2", "--test-fraction", "0.5"]) == 0
    assert "note:" not in capsys.readouterr().out
    random_rows = [r for r in csv.DictReader(results.open()) if r["protocol"] == "random"]
    assert random_rows and {r["in_sample"] for r in random_rows} == {"False"}
    assert {r["weights"] for r in random_rows} == {"refit"}


def test_in_sample_note_names_the_refit_protocols():
    from pyica.evaluation import WeightsUse

    use = WeightsUse("m.x", "savoias", "loaded", ("savoias",), True, REFIT_PROTOCOLS)
    assert "--protocol random, loco, official refit the head" in in_sample_note(use)
    cannot = WeightsUse("icnet.x", "savoias", "loaded", ("savoias",), True, ())
    assert "cannot refit" in in_sample_note(cannot)
    assert in_sample_note(WeightsUse("m.x", "toy", "loaded", ("savoias",), False)) is None
    assert in_sample_note(None) is None


# --- --pred mode ----------------------------------------------------------------------------------

def test_pred_mode_table_shows_the_model_not_the_file(toy, tmp_path, capsys):
    pred = tmp_path / "my_predictions.csv"
    assert main(["score", str(toy.parent), "-m", "entropy", "-o", str(pred), "-q", "--workers", "0"]) == 0
    capsys.readouterr()
    results = tmp_path / "r.csv"
    assert main(["eval", "--pred", str(pred), "--dataset", str(toy), "-o", str(results)]) == 0
    table = capsys.readouterr().out.splitlines()
    model_column = [line.split()[0] for line in table[2:]]
    assert model_column and set(model_column) == {"entropy"}
    rows = list(csv.DictReader(results.open()))
    assert {r["model"] for r in rows} == {"entropy"} and {r["predictions"] for r in rows} == {"my_predictions.csv"}
    assert {r["weights"] for r in rows} == {"none"}  # a classic measure has no learned weights


def test_pred_mode_of_a_shipped_model_on_its_training_dataset_is_in_sample(savoias_named, tmp_path, capsys):
    pred = tmp_path / "p.csv"
    assert main(["score", str(savoias_named.parent), "-m", "effnet_lite0_ridge.savoias", "-o", str(pred), "-q",
                 "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["eval", "--pred", str(pred), "--dataset", str(savoias_named)]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("note: effnet_lite0_ridge.savoias was trained on savoias") and "in-sample" in first_line


def test_pred_mode_errors_are_in_label_units(toy, tmp_path):
    """A perfect predictor on another scale (score = label / 100 + 3) has no error in label units."""
    ds = read_manifest(toy)
    pred = tmp_path / "p.csv"
    with open(pred, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "model", "score", "error"])
        for i in range(len(ds)):
            writer.writerow([str(ds.full_path(i)), "oracle", ds.scores[i] / 100 + 3, ""])
    rows, *_ = evaluate_predictions_file(pred, ds)
    for row in rows:
        assert row["srcc"] == pytest.approx(1.0) and row["rmse_logistic4"] == pytest.approx(0, abs=0.01), row
    assert rows[0]["model"] == "oracle" and rows[0]["weights"] == "unknown" and "in_sample" not in rows[0]
