"""Issue 19: weights, configs and eval input never fail silently.

Every case is built in ``tmp_path`` from a shipped file (weights, card, config) or a small predictions
file, damaged one way, and must be refused in one line that names the file and what is wrong, through
the Python API and through ``pyica`` in-process (no traceback)."""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pyica.cli import main
from pyica.models.effnet_ridge import build_preset, weights_path
from pyica.registry import DEFAULT_MODEL, create_model
from pyica.weights import WeightsError, check_dtypes, load_weights, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = DEFAULT_MODEL  # effnet_lite0_within.savoias: its head ships in the package
REPO = Path(__file__).resolve().parents[1]
CLASSIC = "entropy"


def _shipped(tmp_path: Path, stem: str = "head") -> Path:
    """A copy of the default model's shipped head and card in ``tmp_path``."""
    src = weights_path(NAME)
    dst = tmp_path / f"{stem}.safetensors"
    shutil.copy(src, dst)
    card = json.loads(src.with_suffix(".json").read_text())
    card["weights"]["file"] = dst.name
    dst.with_suffix(".json").write_text(json.dumps(card))
    return dst


def _rewrite(path: Path, change) -> None:
    """Change the tensors of ``path`` and record the new file's sha256 in its card (so only ``change`` is wrong)."""
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    card_file = path.with_suffix(".json")
    card = json.loads(card_file.read_text())
    card["weights"]["sha256"] = sha256_file(path)
    card_file.write_text(json.dumps(card))


def _drop_sha(path: Path) -> None:
    card_file = path.with_suffix(".json")
    card = json.loads(card_file.read_text())
    del card["weights"]["sha256"]
    card_file.write_text(json.dumps(card))


def _one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("pyica: error:")]
    assert len(lines) == 1, err
    for word in words:
        assert str(word) in lines[0], (word, lines[0])
    return lines[0]


# --- weights: NaN, integer tensors, a flipped byte, a card without sha256 -------------------------------

def test_nan_weights_are_refused_naming_file_and_tensor(tmp_path):
    path = _shipped(tmp_path)
    _rewrite(path, lambda t: t["weight"].__setitem__(0, float("nan")))
    with pytest.raises(WeightsError, match=rf"^{path}: tensor 'weight' holds 1 non-finite value") as e:
        load_weights(path)
    assert "\n" not in str(e.value)
    with pytest.raises(WeightsError, match="'weight'"):
        build_preset(NAME, pretrained=False, weights=path)


def test_inf_weights_are_refused(tmp_path):
    path = _shipped(tmp_path)
    _rewrite(path, lambda t: t["feature_std"].__setitem__(slice(0, 3), float("inf")))
    with pytest.raises(WeightsError, match="'feature_std' holds 3 non-finite"):
        load_weights(path)


def test_integer_tensor_where_the_model_expects_floats_is_refused(tmp_path):
    path = _shipped(tmp_path)
    _rewrite(path, lambda t: t.__setitem__("weight", t["weight"].round().to(torch.int64)))
    tensors, _ = load_weights(path)  # readable and finite: the dtype is only wrong for the model
    assert tensors["weight"].dtype == torch.int64
    with pytest.raises(WeightsError, match=rf"^{path}: tensor 'weight' is torch.int64 \(integer\), the model expects "
                                           r"floating-point") as e:
        build_preset(NAME, pretrained=False, weights=path)
    assert "\n" not in str(e.value)


def test_integer_buffers_of_the_model_stay_legal():
    bn = torch.nn.BatchNorm2d(4)
    own = bn.state_dict()
    assert own["num_batches_tracked"].dtype == torch.int64
    check_dtypes({k: v.clone() for k, v in own.items()}, own, "bn.safetensors")  # no error
    with pytest.raises(WeightsError, match="'num_batches_tracked' is torch.float32"):
        check_dtypes({**own, "num_batches_tracked": torch.zeros(())}, own, "bn.safetensors")


def test_a_flipped_byte_names_expected_and_actual_hash(tmp_path):
    path = _shipped(tmp_path)
    recorded = json.loads(path.with_suffix(".json").read_text())["weights"]["sha256"]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    actual = sha256_file(path)
    with pytest.raises(WeightsError) as e:
        load_weights(path, allow_unverified=True)  # accepting unverified weights never accepts a mismatch
    message = str(e.value)
    assert message.startswith(f"{path}: sha256 {actual[:16]}") and recorded[:16] in message and "\n" not in message


def test_a_card_without_sha256_is_refused_unless_accepted_explicitly(tmp_path, caplog):
    path = _shipped(tmp_path)
    _drop_sha(path)
    with pytest.raises(WeightsError, match=rf"^{path.with_suffix('.json')}: records no sha256 for head.safetensors.*"
                                           "--allow-unverified-weights"):
        load_weights(path)
    with pytest.raises(WeightsError, match="records no sha256"):
        create_model(NAME, weights=str(path), pretrained=False)
    with caplog.at_level(logging.WARNING, logger="pyica.weights"):
        tensors, card = load_weights(path, allow_unverified=True)
    assert "unverified" in caplog.text and card["weights"]["sha256"] is None
    model = create_model(NAME, weights=str(path), pretrained=False, allow_unverified=True)
    assert torch.equal(model.weight, tensors["weight"]) and model.fitted
    # the flag does nothing harmful to a model without weights
    assert create_model(CLASSIC, allow_unverified=True).name == CLASSIC


def test_an_older_cmssa_card_without_sha256_no_longer_loads(tmp_path):
    path = tmp_path / "cmssa.safetensors"
    save_file({"prompt": torch.zeros(2, 3)}, str(path))
    older = {"name": "cmssa_offline.lite2_minilm", "pyica_version": "0.1.0", "method": "cmssa",
             "encoders": {"kind": "offline", "image_variant": "lite0", "embed_dim": 8}, "config": {},
             "weights": {"file": path.name, "holds": "trainable tensors only"}}
    path.with_suffix(".json").write_text(json.dumps(older))
    with pytest.raises(WeightsError, match=rf"^{path.with_suffix('.json')}: records no sha256"):
        load_weights(path)
    save_file({"prompt": torch.ones(2, 3)}, str(path))  # tampered: still refused, not loaded
    with pytest.raises(WeightsError, match="records no sha256"):
        load_weights(path)
    tensors, _ = load_weights(path, allow_unverified=True)
    assert torch.equal(tensors["prompt"], torch.ones(2, 3))


def test_a_state_dict_file_with_nan_is_refused(tmp_path):
    from pyica.models.resnet import read_state_dict

    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.tensor([1.0, float("nan")])}}, path)
    with pytest.raises(WeightsError, match=rf"^{path}: tensor 'conv1.weight' holds 1 non-finite"):
        read_state_dict(path)


@pytest.fixture()
def labelled(tmp_path):
    """8 small images whose 'human' score is their noise amplitude, in two categories, plus labels.csv."""
    folder = tmp_path / "data"
    folder.mkdir()
    rows = ["image,score,category"]
    for i in range(8):
        rng = np.random.default_rng(i)
        pixels = np.clip(128 + rng.normal(0, 10 * i + 0.1, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        rows.append(f"img{i}.png,{10 * i},{'a' if i % 2 else 'b'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def test_cli_refuses_nan_weights_in_one_line(tmp_path, labelled, capsys):
    path = _shipped(tmp_path)
    _rewrite(path, lambda t: t["bias"].fill_(float("nan")))
    code = main(["eval", "-m", NAME, "--weights", str(path), "--dataset", str(labelled), "--device", "cpu",
                 "-q", "--workers", "0"])
    assert code != 0
    _one_line_error(capsys, path, "'bias'", "non-finite")


def test_cli_unverified_weights_need_the_flag(tmp_path, labelled, capsys, monkeypatch):
    path = _shipped(tmp_path)
    _drop_sha(path)
    argv = ["eval", "-m", NAME, "--weights", str(path), "--dataset", str(labelled), "--device", "cpu", "-q",
            "--workers", "0"]
    assert main(argv) != 0
    _one_line_error(capsys, path.with_suffix(".json"), "records no sha256", "--allow-unverified-weights")
    # with the flag the weights load (the protocol itself is replaced: the default model refits per split)
    from pyica import evaluation

    built = []

    def protocol(model_name, ds, *, model_kwargs=None, **_):
        model = create_model(model_name, pretrained=False, **(model_kwargs or {}))
        built.append(model)
        pred = np.arange(len(ds), dtype=float)
        rows = evaluation.metric_rows(pred, ds.scores, ds.categories, model=model_name, dataset=ds.name,
                                      protocol="all", split="all")
        return evaluation.EvaluationResult(rows, (pred, ds.scores, ds.categories))

    monkeypatch.setattr(evaluation, "run_protocol", protocol)
    assert main([*argv, "--allow-unverified-weights"]) == 0
    assert "srcc" in capsys.readouterr().out
    assert built and built[0].fitted and torch.equal(built[0].weight, load_file(str(path))["weight"])


def test_cli_help_explains_the_risk(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--allow-unverified-weights" in out and "RISK" in out


# --- configs: unknown keys, wrong types, unknown methods, unreadable files -----------------------------

# training configs ship in the package (pyica train NAME); the CLICv2 pretraining configs stay in configs/clicv2
PACKAGED = REPO / "src" / "pyica" / "configs"
SHIPPED_CONFIGS = sorted(glob.glob(str(PACKAGED / "**" / "*.json"), recursive=True)
                         + glob.glob(str(REPO / "configs" / "**" / "*.json"), recursive=True))


def test_configs_are_shipped():
    assert len(SHIPPED_CONFIGS) >= 10


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: Path(p).relative_to(REPO).as_posix())
def test_every_shipped_config_validates(path):
    from pyica.training.config import load_config, section_from
    from pyica.training.pretrain import load_pretrain_config
    from pyica.training.trainers import _method

    raw = json.loads(Path(path).read_text())
    if raw.get("method") == "clicv2":
        cfg = load_pretrain_config(path)
        assert cfg["method"] == "clicv2" and cfg["optim"]["batch_size"] > 0
        return
    config = load_config(path)
    method = _method(config["method"])
    for section, cls in method.sections.items():
        assert isinstance(section_from(cls, config, section, **({"device": "cpu"} if section == "recipe" else {})), cls)


def _config(tmp_path: Path, shipped: str, change) -> Path:
    raw = json.loads(((REPO / "configs" / shipped) if shipped.startswith("clicv2/") else (PACKAGED / shipped)).read_text())
    change(raw)
    path = tmp_path / "x.json"
    path.write_text(json.dumps(raw))
    return path


TRAIN_CASES = [
    ("effnet_lite0_within.savoias.json", lambda c: c.update(tolerence=1e-4), "tolerence: Extra inputs"),
    ("effnet_lite0_within.savoias.json", lambda c: c["evaluation"].update(n_split=3), "evaluation.n_split"),
    ("effnet_lite0_within.savoias.json", lambda c: c.update(method="ridgeish"), "method: Input should be"),
    ("effnet_lite0_within.savoias.json", lambda c: c.update(icnet={"input_size": 64}),
     "icnet: not a section of method 'ridge'"),
    ("icnet/icnet_savoias.cpu.json", lambda c: c["recipe"].update(lr="fast"),
     "recipe.lr: Input should be a valid number"),
    ("icnet/icnet_savoias.cpu.json", lambda c: c["recipe"].update(learning_rate=0.1),
     "recipe: unknown field(s) learning_rate"),
    ("icnet/icnet_savoias.cpu.json", lambda c: c["icnet"].update(width="wide"), "icnet.width: Input should be"),
    ("icnet/icnet_savoias.cpu.json", lambda c: c.update(encoders={"kind": "offline"}),
     "encoders: not a section of method 'icnet'"),
    ("cmssa/cmssa_offline.savoias.json", lambda c: c["encoders"].update(embed_dims=256), "encoders.offline.embed_dims"),
    ("cmssa/cmssa_offline.savoias.json", lambda c: c["captions"].update(topk=3), "captioner 'imagenet-labels' takes no topk"),
    ("cmssa/cmssa_offline.savoias.json", lambda c: c["cmssa"].update(levels="five"), "cmssa.levels: Input should be"),
]


@pytest.mark.parametrize("shipped, change, words", TRAIN_CASES)
def test_a_bad_train_config_is_one_line_naming_file_and_key(tmp_path, capsys, shipped, change, words):
    path = _config(tmp_path, shipped, change)
    assert main(["train", str(path), "--device", "cpu", "-q"]) != 0
    _one_line_error(capsys, "x.json", words)
    assert not (tmp_path / "runs").exists()


PRETRAIN_CASES = [
    (lambda c: c.update(chekpoint_every=5), "chekpoint_every: Extra inputs"),
    (lambda c: c["optim"].update(warmup=2), "optim.warmup: Extra inputs"),
    (lambda c: c["optim"].update(lr="high"), "optim.lr: Input should be a valid number"),
    (lambda c: c["data"].update(imagesize=64), "data.imagesize: Extra inputs"),
    (lambda c: c["data"].update(jpeg_draft="maybe"), "data.jpeg_draft: Input should be a valid boolean"),
    (lambda c: c["model"].update(patchsize=16), "model: unknown field(s) patchsize"),
    (lambda c: c["model"].update(mask_ratio="most"), "model.mask_ratio: Input should be a valid number"),
    (lambda c: c.update(method="clicv3"), "unknown method 'clicv3'"),
    (lambda c: c.update(optim=[1, 2]), "optim: a section is a JSON object"),
]


@pytest.mark.parametrize("change, words", PRETRAIN_CASES)
def test_a_bad_pretrain_config_is_one_line_naming_file_and_key(tmp_path, capsys, change, words):
    path = _config(tmp_path, "clicv2/clicv2_vit_tiny.cpu.json", change)
    assert main(["pretrain", str(path), "--output-dir", str(tmp_path / "out"), "--device", "cpu", "-q"]) != 0
    _one_line_error(capsys, "x.json", words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "pretrain"])
@pytest.mark.parametrize("content, words", [
    (b'{"model": "x",', "not valid JSON"),
    (b'{"model": "caf\xe9"}', "cannot read the config"),
    (b'["model"]', "a config is a JSON object"),
    (None, "config not found"),
])
def test_an_unreadable_config_is_one_line_naming_it(tmp_path, capsys, command, content, words):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_bytes(content)
    assert main([command, str(path)]) != 0
    _one_line_error(capsys, "bad.json", words)


# --- eval input: duplicates, several models, NaN, error rows --------------------------------------------

def _pred(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "model", "score", "error"])
        writer.writerows(rows)
    return path


def _rows(labelled: Path, model: str = "m1", sign: float = 1.0) -> list[tuple]:
    return [(str(labelled.parent / f"img{i}.png"), model, sign * i, "") for i in range(8)]


def test_duplicate_paths_are_refused(tmp_path, labelled, capsys):
    rows = _rows(labelled)
    pred = _pred(tmp_path / "pred.csv", rows + [rows[2], rows[5], rows[5]])
    from pyica.evaluation import evaluate_predictions_file

    with pytest.raises(ValueError, match=r"pred.csv: 2 image path\(s\) appear more than once \(e.g. .*img2.png 2 times\)"):
        evaluate_predictions_file(pred, labelled)
    assert main(["eval", "--pred", str(pred), "--dataset", str(labelled)]) != 0
    _one_line_error(capsys, pred, "appear more than once")


def test_rows_of_several_models_need_model(tmp_path, labelled, capsys):
    pred = _pred(tmp_path / "pred.csv", _rows(labelled, "up") + _rows(labelled, "down", -1.0))
    assert main(["eval", "--pred", str(pred), "--dataset", str(labelled)]) != 0
    _one_line_error(capsys, pred, "2 models", "'down'", "'up'", "-m/--model")
    results = {}
    for model in ("up", "down"):
        out = tmp_path / f"{model}.csv"
        assert main(["eval", "--pred", str(pred), "--dataset", str(labelled), "-m", model, "-o", str(out)]) == 0
        pooled = next(r for r in csv.DictReader(out.open()) if r["category"] == "pooled")
        results[model] = float(pooled["srcc"])
        assert pooled["model"] == model and pooled["predictions"] == "pred.csv" and int(pooled["n"]) == 8
    assert results["up"] == pytest.approx(1.0) and results["down"] == pytest.approx(-1.0)
    assert main(["eval", "--pred", str(pred), "--dataset", str(labelled), "-m", "sideways"]) != 0
    _one_line_error(capsys, pred, "no rows of model 'sideways'")


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_scores_are_refused(tmp_path, labelled, capsys, bad):
    rows = _rows(labelled)
    rows[3] = (rows[3][0], "m1", bad, "")
    rows[6] = (rows[6][0], "m1", bad, "")
    pred = _pred(tmp_path / "pred.csv", rows)
    assert main(["eval", "--pred", str(pred), "--dataset", str(labelled)]) != 0
    _one_line_error(capsys, pred, "2 row(s) have a NaN or infinite score", "img3.png")


def test_nan_in_jsonl_predictions_is_refused(tmp_path, labelled):
    from pyica.evaluation import evaluate_predictions_file

    pred = tmp_path / "pred.jsonl"
    lines = [json.dumps({"path": p, "model": m, "score": s, "error": None}) for p, m, s, _ in _rows(labelled)]
    lines[0] = lines[0].replace('"score": 0.0', '"score": NaN')
    pred.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"pred.jsonl: 1 row\(s\) have a NaN"):
        evaluate_predictions_file(pred, labelled)


def test_error_rows_are_left_out_with_a_warning(tmp_path, labelled, caplog):
    from pyica.evaluation import evaluate_predictions_file

    rows = _rows(labelled)
    rows[1] = (rows[1][0], "m1", "", "img1.png: cannot identify image file")
    rows[4] = (rows[4][0], "m1", "", "img4.png: truncated")
    pred = _pred(tmp_path / "pred.csv", rows)
    with caplog.at_level(logging.WARNING, logger="pyica.evaluation"):
        result_rows, scores, _, _ = evaluate_predictions_file(pred, labelled)
    assert "2 row(s) without a score (2 with an error" in caplog.text
    pooled = next(r for r in result_rows if r["category"] == "pooled")
    assert pooled["n"] == 6 and pooled["unmatched"] == 2 and int(np.isnan(scores).sum()) == 2


def test_a_score_that_is_no_number_names_the_file(tmp_path, labelled, capsys):
    rows = _rows(labelled)
    rows[0] = (rows[0][0], "m1", "high", "")
    pred = _pred(tmp_path / "pred.csv", rows)
    assert main(["eval", "--pred", str(pred), "--dataset", str(labelled)]) != 0
    _one_line_error(capsys, pred)


# --- eval output: never a file eval reads, never a folder or device, append only to results CSVs ---------

@pytest.fixture()
def pred_file(tmp_path, labelled):
    return _pred(tmp_path / "pred.csv", _rows(labelled))


def _eval(pred, labelled, *extra):
    return main(["eval", "--pred", str(pred), "--dataset", str(labelled), *extra])


def test_output_onto_the_predictions_file_is_refused(tmp_path, labelled, pred_file, capsys):
    before = pred_file.read_bytes()
    assert _eval(pred_file, labelled, "-o", str(pred_file), "--overwrite") != 0
    _one_line_error(capsys, "-o/--output", "which eval reads")
    link = tmp_path / "link.csv"
    link.symlink_to(pred_file)
    assert _eval(pred_file, labelled, "-o", str(link)) != 0
    _one_line_error(capsys, "which eval reads")
    assert _eval(pred_file, labelled, "--plot", str(pred_file), "--overwrite") != 0
    _one_line_error(capsys, "--plot", "which eval reads")
    assert pred_file.read_bytes() == before


def test_output_onto_the_manifest_or_an_image_is_refused(tmp_path, labelled, pred_file, capsys):
    manifest, image = labelled.read_bytes(), (labelled.parent / "img0.png").read_bytes()
    assert _eval(pred_file, labelled, "-o", str(labelled), "--overwrite") != 0
    _one_line_error(capsys, "labels.csv", "which eval reads")
    assert _eval(pred_file, labelled, "--plot", str(labelled.parent / "img0.png"), "--overwrite") != 0
    _one_line_error(capsys, "img0.png", "which eval reads")
    assert labelled.read_bytes() == manifest and (labelled.parent / "img0.png").read_bytes() == image


def test_output_and_plot_must_differ(tmp_path, labelled, pred_file, capsys):
    same = tmp_path / "same.csv"
    assert _eval(pred_file, labelled, "-o", str(same), "--plot", str(same)) != 0
    _one_line_error(capsys, "same file")
    assert not same.exists()


def test_folder_and_fifo_outputs_are_refused(tmp_path, labelled, pred_file, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    assert _eval(pred_file, labelled, "-o", str(folder), "--overwrite") != 0
    _one_line_error(capsys, "is a folder")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert _eval(pred_file, labelled, "-o", str(fifo), "--overwrite") != 0
    _one_line_error(capsys, "not a regular file")
    assert _eval(pred_file, labelled, "-o", os.devnull, "--overwrite") != 0
    _one_line_error(capsys, "not a regular file")


def test_existing_output_is_appended_only_when_it_is_a_results_csv(tmp_path, labelled, pred_file, capsys):
    other = tmp_path / "notes.csv"
    other.write_text("name,value\nmy,notes\n")
    assert _eval(pred_file, labelled, "-o", str(other)) != 0
    _one_line_error(capsys, "notes.csv", "not a pyica results CSV", "--overwrite")
    assert other.read_text() == "name,value\nmy,notes\n"
    assert _eval(pred_file, labelled, "-o", str(other), "--overwrite") == 0
    first = list(csv.DictReader(other.open()))
    assert {r["category"] for r in first} == {"pooled", "a", "b", "category_mean"}
    assert _eval(pred_file, labelled, "-o", str(other)) == 0  # now a results CSV: appended
    assert len(list(csv.DictReader(other.open()))) == 2 * len(first)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".notes.csv")]
    assert not leftovers  # written through a temporary file, nothing left behind


def test_existing_plot_that_is_not_a_png_needs_overwrite(tmp_path, labelled, pred_file, capsys):
    plot = tmp_path / "plot.png"
    plot.write_text("my notes")
    assert _eval(pred_file, labelled, "--plot", str(plot)) != 0
    _one_line_error(capsys, "plot.png", "not a PNG")
    assert plot.read_text() == "my notes"
    pytest.importorskip("matplotlib", reason="scatter plots need matplotlib (pip install pyica[plot])")  # what follows draws
    assert _eval(pred_file, labelled, "--plot", str(plot), "--overwrite") == 0
    assert Image.open(plot).format == "PNG"
    assert _eval(pred_file, labelled, "--plot", str(plot)) == 0  # a PNG: replaced as before
