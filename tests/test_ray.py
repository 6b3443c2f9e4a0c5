"""Scoring on Ray Data (pyica.integrations.ray, ``pyica score --engine ray``): the same scores as ``pyica score``.

Needs Ray (``pip install 'pyica[ray]'``); without it every test here skips but the one that checks the
message ``--engine ray`` gives. A local Ray with 2 CPUs is started once for the module.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from pyica.cli import main
from pyica.integrations.ray import RAY_MISSING, ComplexityScorer, input_rows


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture()
def images(tmp_path):
    """8 small images (PNG and JPEG, sizes differing), a bad file, a tar shard of two and a manifest."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = (rng.random((40 + 9 * i, 64, 3)) * 255 * (0.3 + i / 10)).astype("uint8")
        Image.fromarray(pixels).save(folder / (f"p{i}.png" if i % 2 else f"j{i}.jpg"), quality=90)
    (folder / "bad.jpg").write_bytes(b"not an image")
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for name in ("p1.png", "j2.jpg"):
            tar.add(folder / name, arcname=f"in/{name}")
    manifest = tmp_path / "list.csv"
    manifest.write_text("image\nimgs/p3.png\nimgs/missing.png\n")
    return tmp_path, folder, shard, manifest


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same_rows(a, b, tol=1e-4):
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b):
        assert x["model"] == y["model"] and x["error"] == y["error"], (x, y)
        if x["score"]:
            assert abs(float(x["score"]) - float(y["score"])) <= tol, (x, y)
        else:
            assert not y["score"]


def test_engine_ray_without_ray_is_one_line_and_exit_2(images, monkeypatch, capsys):
    root, folder, _, _ = images
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["score", str(folder), "-m", "entropy", "-o", str(root / "s.csv"), "--engine", "ray", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"pyica: error: {RAY_MISSING}"] and "pip install 'pyica[ray]'" in err
    assert not (root / "s.csv").exists() and not (root / "s.csv.part").exists()


def test_num_cpus_without_engine_ray_is_refused(images, capsys):
    root, folder, _, _ = images
    assert main(["score", str(folder), "-m", "entropy", "-o", str(root / "s.csv"), "--num-cpus", "2", "-q"]) == 2
    assert "--engine ray" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_engine_ray_equals_pyica_score_entropy(ray, images, fmt):
    """Folders, a tar shard, a manifest (with a missing file) and a bad file: the same rows, in input order."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    root, folder, shard, manifest = images
    inputs = [str(folder), str(shard), str(manifest)]
    assert main(["score", *inputs, "-m", "entropy", "-o", str(root / "local.csv"), "-q"]) == 1
    assert main(["score", *inputs, "-m", "entropy", "-o", str(root / f"ray.{fmt}"), "-q", "--engine", "ray",
                 "--num-cpus", "2", "--batch-size", "3"]) == 1
    local = _rows(root / "local.csv")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(root / "ray.parquet").to_pylist()
        theirs = [{k: ("" if v is None else str(v)) for k, v in row.items()} for row in table]
    else:
        theirs = _rows(root / "ray.csv")
    assert len(local) == 9 + 2 + 1  # the manifest's p3.png is in the folder too: scored once
    _same_rows(local, theirs)
    errors = [r for r in theirs if r["error"]]
    assert {r["path"].rsplit("/", 1)[-1] for r in errors} == {"bad.jpg", "missing.png"}
    assert any(r["path"].endswith("shard.tar:in/p1.png") and r["score"] for r in theirs)
    meta = json.loads((root / f"ray.{fmt}.meta.json").read_text())
    assert meta["status"] == "finished" and meta["engine"] == "ray" and meta["scored"] == 10 and meta["errors"] == 2
    assert not (root / f"ray.{fmt}.part").exists()


def test_engine_ray_keeps_the_output_rules(ray, images, capsys):
    """An existing output is refused without --resume/--overwrite; --resume scores only what is missing."""
    root, folder, _, _ = images
    out = root / "ray.csv"
    assert main(["score", str(folder / "p1.png"), "-m", "entropy", "-o", str(out), "-q", "--engine", "ray"]) == 0
    assert main(["score", str(folder), "-m", "entropy", "-o", str(out), "-q", "--engine", "ray"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["score", str(folder), "-m", "entropy", "-o", str(out), "-q", "--engine", "ray", "--resume"]) == 1
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in folder.iterdir())
    assert json.loads(out.with_name("ray.csv.meta.json").read_text())["skipped_already_done"] == 1


def test_engine_ray_default_model_equals_pyica_score(ray, images):
    """The default model (EfficientNet-Lite features, JPEGs decoded reduced by decode_size) on 4 images."""
    root, folder, _, _ = images
    inputs = [str(folder / n) for n in ("j0.jpg", "p1.png", "j2.jpg", "p3.png")]
    assert main(["score", *inputs, "-o", str(root / "local.csv"), "-q"]) == 0
    assert main(["score", *inputs, "-o", str(root / "ray.csv"), "-q", "--engine", "ray", "--num-cpus", "2",
                 "--batch-size", "2"]) == 0
    local, theirs = _rows(root / "local.csv"), _rows(root / "ray.csv")
    assert len(theirs) == 4 and all(r["score"] for r in theirs)
    _same_rows(local, theirs)


def test_image_column_through_ray_data(ray, images):
    """``ray.data.read_images`` gives numpy arrays: scored from the pixels, equal to the files' scores (PNG)."""
    root, folder, _, _ = images
    pngs = sorted(str(p) for p in folder.glob("*.png"))
    assert main(["score", *pngs, "-m", "entropy", "-o", str(root / "local.csv"), "-q"]) == 0
    expected = {r["path"].rsplit("/", 1)[-1]: float(r["score"]) for r in _rows(root / "local.csv")}
    ds = ray.data.read_images(pngs, mode="RGB", include_paths=True)
    out = ds.map_batches(ComplexityScorer, fn_constructor_kwargs={"model": "entropy"}, batch_size=2,
                         compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1).take_all()
    assert len(out) == len(pngs)
    for row in out:
        assert row["error"] is None
        assert abs(row["complexity"] - expected[str(row["path"]).rsplit("/", 1)[-1]]) <= 1e-4


def test_image_column_batch_directly():
    """The scorer on one batch of arrays (no Ray needed): RGB, grey and RGBA arrays; a bad array is an error row."""
    from pyica.registry import create_model

    rng = np.random.default_rng(1)
    rgb = (rng.random((30, 40, 3)) * 255).astype("uint8")
    grey = (rng.random((20, 20)) * 255).astype("uint8")
    rgba = (rng.random((25, 25, 4)) * 255).astype("uint8")
    batch = {"image": np.array([rgb, grey, rgba, np.zeros((3, 3, 2), "uint8")], dtype=object)}
    out = ComplexityScorer("entropy")(batch)
    model = create_model("entropy")
    from pyica.loading import to_rgb

    want = model.score_images([to_rgb(Image.fromarray(a)) for a in (rgb, grey, rgba)]).tolist()
    assert np.allclose(out["complexity"][:3], want, atol=1e-6)
    assert list(out["error"][:3]) == [None, None, None]
    assert math.isnan(out["complexity"][3]) and "image 3" in out["error"][3] and "shape" in out["error"][3]
    assert set(out) == {"image", "complexity", "error"}


def test_bad_file_is_an_error_row_not_an_exception(images):
    """A path batch with a file that is not an image, one that is missing and a tar member: nothing raises."""
    root, folder, shard, _ = images
    from pyica.inputs import iter_image_paths

    paths = [str(folder / "p1.png"), str(folder / "bad.jpg"), str(folder / "nope.png"), *iter_image_paths([str(shard)])]
    rows = list(input_rows(paths))
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = ComplexityScorer("entropy")(batch)
    assert "pyica_source" not in out
    assert not math.isnan(out["complexity"][0]) and out["error"][0] is None
    assert math.isnan(out["complexity"][1]) and out["error"][1].startswith(str(folder / "bad.jpg") + ":")
    assert math.isnan(out["complexity"][2]) and "nope.png" in out["error"][2]
    assert out["complexity"][3] == pytest.approx(out["complexity"][0], abs=1e-6)  # shard.tar:in/p1.png
    assert list(out["error"][3:]) == [None, None]
