"""Issue 20: pyica installs beside another torch, ships its training configs, and trains into runs/, never
into the package.

* pyproject.toml declares torch as a range; constraints.txt pins the CPU build for our own setup, and the
  Makefile (hence .ci/run) installs through it;
* every packaged config resolves by name and validates; ``pyica train --list`` lists them;
* ``pyica train NAME`` without ``--output-dir`` writes ``runs/NAME-DATE/`` in the working directory and
  leaves the package's assets untouched; ``--name`` names the card and the file;
* ``pyica score --weights runs/.../NAME.safetensors`` builds what the card describes and names the rows NAME.

The wheel's contents (configs, weights, cards, LICENSE) are checked by hand: building one takes a minute
(see the report of issue 20 / README's Training section).
"""

from __future__ import annotations

import csv
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

import pyica
from pyica.cli import main
from pyica.training import trainers
from pyica.training.config import (DATA_ENV, TrainOptions, default_root, list_configs, load_config, packaged_configs,
                                   resolve_config)

REPO = Path(__file__).resolve().parents[1]
RUN = re.compile(r"(?P<name>.+)-\d{8}-\d{6}(-\d+)?")


# --- installable beside another torch ------------------------------------------------------------------

def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_declares_a_torch_range_that_the_constraints_pin():
    torch_req = [Requirement(r) for r in _pyproject()["project"]["dependencies"] if Requirement(r).name == "torch"]
    assert len(torch_req) == 1
    spec = torch_req[0].specifier
    assert not any(s.operator in ("==", "===", "~=") for s in spec), f"torch is pinned: {spec}"
    assert any(s.operator == ">=" for s in spec)
    assert spec.contains("2.4.0") and spec.contains("2.13.0") and spec.contains("3.0.0")  # a range, not a pin
    pins = {Requirement(line).name: Requirement(line) for line in (REPO / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")}
    assert str(pins["torch"].specifier) == "==2.13.0"
    assert spec.contains("2.13.0")  # the pin satisfies the range
    import torch

    assert Version(torch.__version__).base_version == "2.13.0"  # what the test environment was built with


def test_make_and_ci_install_through_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^CONSTRAINTS\s*:?=\s*constraints\.txt\s*$", makefile, re.M)
    installs = [line for line in makefile.splitlines() if "pip install" in line]
    assert len(installs) >= 2 and all("-c $(CONSTRAINTS)" in line for line in installs)
    stamps = re.findall(r"^\$\(VENV\)/\.(core|dev): (.*)\|", makefile, re.M)
    assert {s[0] for s in stamps} == {"core", "dev"}
    assert all("pyproject.toml" in deps and "$(CONSTRAINTS)" in deps for _, deps in stamps)  # re-run on change
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M) and re.search(r"^make test-compare\b", ci, re.M)
    commands = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert not any("pip " in line for line in commands)  # every install goes through the Makefile, hence the constraints


def test_licence_file_and_fields():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    data = _pyproject()["tool"]["setuptools"]["package-data"]["pyica"]
    assert "configs/**/*.json" in data and "assets/**/*" in data


def test_shipped_cards_state_the_licences():
    for card_file in sorted((Path(pyica.__file__).parent / "assets" / "weights").glob("*.json")):
        licence = json.loads(card_file.read_text()).get("licence") or ""
        assert "Apache-2.0" in licence and "efficientnet-lite" in licence, card_file.name


# --- packaged configs ----------------------------------------------------------------------------------

def test_configs_live_in_the_package():
    configs = packaged_configs()
    assert {"effnet_lite0_within.savoias", "cmssa/cmssa_offline.savoias", "icnet/icnet_savoias.cpu"} <= set(configs)
    package = Path(pyica.__file__).parent
    assert all(path.is_relative_to(package / "configs") for path in configs.values())
    assert not list((REPO / "configs").glob("*.json"))  # the training configs moved; configs/clicv2 stays


@pytest.mark.parametrize("name", sorted(packaged_configs()))
def test_every_packaged_config_resolves_and_validates(name):
    from pyica.training.config import section_from

    raw = json.loads(packaged_configs()[name].read_text())
    # a packaged config must not point out of (or into) the package: data and outputs are the user's
    assert "root" not in raw and "output_dir" not in raw and raw.get("note")
    config = load_config(name)
    assert config["config_name"] == name and config["model"] == raw["model"]
    for section, cls in trainers._method(config["method"]).sections.items():
        assert isinstance(section_from(cls, config, section, **({"device": "cpu"} if section == "recipe" else {})), cls)
    # the other spellings of the same config
    stem = name.rsplit("/", 1)[-1]
    assert resolve_config(name + ".json") == resolve_config(f"configs/{name}.json") == packaged_configs()[name]
    if sum(n.rsplit("/", 1)[-1] == stem for n in packaged_configs()) == 1:
        assert resolve_config(stem) == packaged_configs()[name]


def test_a_file_beats_a_packaged_name_and_an_unknown_name_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("effnet_lite0_within.savoias").write_text("{}")
    assert resolve_config("effnet_lite0_within.savoias") == Path("effnet_lite0_within.savoias")
    assert main(["train", "effnet_lite0_withn.savoias"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config not found" in err[0] and "did you mean effnet_lite0_within.savoias" in err[0]
    assert main(["train"]) == 2 and "pyica train --list" in capsys.readouterr().err
    assert not Path("runs").exists()


def test_train_list_names_and_describes_every_packaged_config(capsys):
    assert main(["train", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == sorted(packaged_configs())
    described = dict(list_configs())
    for line in lines:
        name, description = line.split(None, 1)
        assert description == described[name] and len(description) > 20 and "\n" not in description


def test_a_named_dataset_is_found_through_root_or_pyica_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    assert default_root("savoias") == str(tmp_path / "data" / "savoias")
    assert default_root("labels.csv") is None and default_root("data/x") is None
    monkeypatch.delenv(DATA_ENV)
    assert default_root("savoias") is None
    monkeypatch.chdir(tmp_path)
    assert main(["train", "effnet_lite0_ridge.savoias", "--no-eval", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'savoias' needs its folder" in err and "--root" in err and DATA_ENV in err
    assert not Path("runs").exists()


# --- training writes to runs/, never into the package ------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A working directory with a tiny labelled dataset and a config training a small effnet_ridge head."""
    from pyica.models.effnet_ridge import PRESETS, EffNetRidgeConfig, View

    # a small preset (64 px) so that training takes a second; same code path as the shipped ones
    monkeypatch.setitem(PRESETS, "effnet_lite0_ridge.savoias", (EffNetRidgeConfig((View("lite0", "square", 64),)), "toy"))
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(14):
        k = int(rng.integers(0, 40))
        canvas = np.full((48, 64, 3), 230, np.uint8)
        for _ in range(k):
            y, x = rng.integers(0, 44), rng.integers(0, 60)
            canvas[y:y + rng.integers(2, 12), x:x + rng.integers(2, 12)] = rng.integers(0, 255, 3)
        Image.fromarray(canvas).save(data / f"{i}.png")
        rows.append(f"{i}.png,{k}\n")
    (data / "labels.csv").write_text("image,score\n" + "".join(rows))
    (tmp_path / "toy.json").write_text(json.dumps({"model": "effnet_lite0_ridge.savoias", "dataset": "data/labels.csv",
                                                   "evaluation": False}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _train(*extra: str) -> int:
    return main(["train", "toy.json", "--device", "cpu", "--workers", "0", "-q", *extra])


def test_train_without_output_dir_writes_runs_name_date_and_never_the_package(toy):
    package_assets = Path(pyica.__file__).parent / "assets"
    repo_assets = REPO / "src" / "pyica" / "assets"
    before = (_snapshot(package_assets), _snapshot(repo_assets))
    assert _train() == 0
    runs = sorted((toy / "runs").iterdir())
    assert len(runs) == 1 and RUN.fullmatch(runs[0].name).group("name") == "effnet_lite0_ridge.savoias"
    weights = runs[0] / "effnet_lite0_ridge.savoias.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["name"] == "effnet_lite0_ridge.savoias" and card["weights"]["file"] == weights.name
    assert card["training"]["dataset"] and card["training"]["images"] == 14  # data and protocol, as before
    assert (_snapshot(package_assets), _snapshot(repo_assets)) == before
    assert _train() == 0  # a second run gets its own folder, the first stays as it was
    assert len(list((toy / "runs").iterdir())) == 2 and weights.is_file()


def test_name_names_the_card_and_the_file_and_score_reports_it(toy, capsys):
    from pyica.registry import create_model, model_from_weights

    assert _train("--name", "my_head.toy") == 0
    (run,) = (toy / "runs").iterdir()
    assert RUN.fullmatch(run.name).group("name") == "my_head.toy"
    weights = run / "my_head.toy.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["name"] == "my_head.toy" and card["training"]["trained_as"] == "effnet_lite0_ridge.savoias"
    assert sorted(p.name for p in run.iterdir()) == ["my_head.toy.json", "my_head.toy.safetensors"]

    model = model_from_weights(weights)
    assert model.name == "my_head.toy" and model.config.views[0].size == 64 and model.score_range == (0.0, 1.0)
    images = sorted(str(p) for p in (toy / "data").glob("*.png"))
    expected = create_model("effnet_lite0_ridge.savoias", weights=str(weights)).score_files(images, num_workers=0)[0]
    np.testing.assert_allclose(model.score_files(images, num_workers=0)[0], expected, rtol=1e-6)

    for i, m in enumerate([[], ["-m", "effnet_lite0_ridge.savoias"]]):  # with or without -m
        out = toy / f"s{i}.csv"
        capsys.readouterr()
        assert main(["score", "data", *m, "--weights", str(weights), "-o", str(out), "--workers", "0", "-q",
                     "--device", "cpu"]) == 0
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 14 and {r["model"] for r in rows} == {"my_head.toy"}
        got = {r["path"]: float(r["score"]) for r in rows}
        np.testing.assert_allclose([got[p] for p in images], expected, rtol=1e-5)
        meta = json.loads(Path(f"{out}.meta.json").read_text())
        assert meta["model"] == "my_head.toy" and meta["model_info"]["card"]["name"] == "my_head.toy"


def test_score_refuses_trained_weights_for_another_model_or_a_changed_file(toy, capsys):
    assert _train("--name", "head") == 0
    (run,) = (toy / "runs").iterdir()
    weights = run / "head.safetensors"
    capsys.readouterr()
    assert main(["score", "data", "-m", "icnet.savoias", "--weights", str(weights), "-q", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights of architecture effnet_ridge, not of icnet.savoias" in err[0]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the tensors: the sha256 load refuses it
    weights.write_bytes(bytes(data))
    assert main(["score", "data", "--weights", str(weights), "-q", "--workers", "0"]) == 2
    assert "sha256" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "x.safetensors", "-x"])
def test_a_bad_name_is_refused_before_any_work(toy, capsys, name):
    assert _train(f"--name={name}") == 2
    assert "--name" in capsys.readouterr().err and not (toy / "runs").exists()


def test_resume_and_verify_find_their_folders(toy):
    dist = type("D", (), {"main": True, "broadcast_object": staticmethod(lambda x: x)})()
    config = {"model": "m"}
    # --verify without a folder: the shipped weights, which every packaged ridge config has
    assert trainers._output_dir(config, TrainOptions(verify=True), "m", dist) == trainers.shipped_weights_dir()
    for name, path in packaged_configs().items():
        raw = json.loads(path.read_text())
        if raw.get("method", "ridge") == "ridge":
            assert (trainers.shipped_weights_dir() / f"{raw['model']}.safetensors").is_file(), name
    # --resume without a folder: the newest runs/m-DATE holding checkpoints
    for stamp, checkpoints in (("20260101-000000", True), ("20260102-000000", True), ("20260103-000000", False)):
        (toy / "runs" / f"m-{stamp}" / ("checkpoints" if checkpoints else "other")).mkdir(parents=True)
    (toy / "runs" / "m2-20260104-000000" / "checkpoints").mkdir(parents=True)  # another model's run
    assert trainers._output_dir(config, TrainOptions(resume=True), "m", dist) == Path("runs/m-20260102-000000")
    with pytest.raises(FileNotFoundError, match="--resume: no run of x"):
        trainers._output_dir(config, TrainOptions(resume=True), "x", dist)
    # a closed-form head has nothing to resume: a new run
    assert trainers._latest_run("x") is None
    assert RUN.fullmatch(trainers._output_dir(config, TrainOptions(resume=True), "x", dist, resumable=False).name)
    # an explicit folder wins over both
    assert trainers._output_dir(config, TrainOptions(resume=True, output_dir="o"), "m", dist) == Path("o")
