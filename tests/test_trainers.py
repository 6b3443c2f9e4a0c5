"""`pyica train CONFIG`: one schema for every config, one path for every method (pyica.training.trainers)."""

from __future__ import annotations

import json

import pytest

from pyica.cli import main
from pyica.training.trainers import METHODS, TrainOptions, build_trainer, load_config, train_config


def write(tmp_path, config: dict, name: str = "c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


BASE = {"model": "icnet.savoias", "dataset": "savoias", "method": "icnet", "recipe": {"epochs": 2}}


def test_a_valid_config_is_completed_and_resolved_against_its_folder(tmp_path):
    config = load_config(write(tmp_path, {**BASE, "root": "data", "output_dir": "runs/x"}))
    assert config["root"] == str(tmp_path / "data") and config["output_dir"] == str(tmp_path / "runs" / "x")
    assert config["evaluation"] == {"protocol": "random", "n_splits": 10, "seed": 0, "test_fraction": 0.2,
                                    "val_fraction": 0.1}
    assert config["method"] == "icnet" and config["config_file"] == "c.json" and config["tolerance"] == 1e-4
    assert load_config(write(tmp_path, {"model": "m", "dataset": "d", "evaluation": False}))["evaluation"] is None
    assert load_config(write(tmp_path, {"model": "m", "dataset": "d"}))["method"] == "ridge"


@pytest.mark.parametrize("change, words", [
    ({"evaluaton": {}}, "evaluaton: Extra inputs are not permitted"),
    ({"evaluation": {"n_splits": "ten"}}, "evaluation"),
    ({"method": "magic"}, "method"),
    ({"model": ""}, "model"),
])
def test_a_bad_config_is_one_line_naming_the_file_and_the_field(tmp_path, change, words):
    path = write(tmp_path, {**BASE, **change})
    with pytest.raises(ValueError, match="c.json") as err:
        load_config(path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_recipe_field_is_refused_before_anything_runs(tmp_path):
    config = load_config(write(tmp_path, {**BASE, "recipe": {"epochz": 3}}))
    with pytest.raises(ValueError, match=r"c.json: recipe: unknown field\(s\) epochz"):
        build_trainer(config, None, TrainOptions(device="cpu"))


@pytest.mark.parametrize("change, words", [
    ({"recipe": {"epochs": "ten"}}, "recipe.epochs: Input should be a valid integer"),
    ({"icnet": {"inputsize": 64}}, "icnet: unknown field(s) inputsize"),
    ({"evaluation": True, "recipe": {"lr": -1}}, "recipe: lr must be positive"),
])
def test_a_bad_method_section_is_one_line_before_any_data_is_read(tmp_path, change, words):
    path = write(tmp_path, {**BASE, "dataset": "no_such_dataset.csv", **change})
    with pytest.raises(ValueError) as err:
        train_config(path, TrainOptions(device="cpu"))
    assert str(err.value).startswith("c.json: ") and words in str(err.value) and "\n" not in str(err.value)


def test_every_method_builds_a_trainer_through_one_function(tmp_path):
    assert METHODS == ("ridge", "cmssa", "icnet")
    trainer = build_trainer(load_config(write(tmp_path, BASE)), None, TrainOptions(device="cpu"))
    assert callable(trainer.fit_dataset) and callable(trainer.score_files) and trainer.recipe.epochs == 2


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    assert main(["train", str(write(tmp_path, {**BASE, "recipe": {"epochz": 3}, "dataset": "toy.csv"}))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pyica: error: ") and "c.json" in err[-1] and "Traceback" not in "\n".join(err)
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["train", str(tmp_path / "broken.json")]) == 2
    assert "broken.json: not valid JSON" in capsys.readouterr().err


def test_verify_is_refused_for_methods_that_train_by_gradient_descent(tmp_path):
    with pytest.raises(ValueError, match="--verify"):
        train_config(write(tmp_path, BASE), TrainOptions(verify=True, device="cpu"))
