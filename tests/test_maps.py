"""Complexity maps: patch grid, patch scoring, overlay, atomic writing and `pyica score --maps`."""

import json

import numpy as np
import pytest
from PIL import Image

from pyica.cli import main
from pyica.maps import (
    MIN_PATCH,
    complexity_map,
    inputs_root,
    map_paths,
    overlay,
    patch_grid,
    upsample_map,
    write_map,
)
from pyica.registry import create_model
from pyica.writers import read_scores


def _half_noise(width=192, height=128, seed=0) -> Image.Image:
    """Left half flat grey, right half uniform noise."""
    rgb = np.full((height, width, 3), 128, dtype=np.uint8)
    rgb[:, width // 2:] = np.random.default_rng(seed).integers(0, 256, (height, width - width // 2, 3), dtype=np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (257, 100), (100, 100), (40, 1000), (20, 13), (1, 1)])
@pytest.mark.parametrize("fractions", [(0.25, 0.5), (0.5, 1.0), (1.0, 0.5), (0.1, 0.3)])
def test_patch_grid_covers_image_within_bounds(size, fractions):
    width, height = size
    boxes, (rows, cols) = patch_grid(width, height, *fractions)
    assert len(boxes) == rows * cols
    covered = np.zeros((height, width), dtype=bool)
    sides = set()
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        sides.add((right - left, bottom - top))
        covered[top:bottom, left:right] = True
    assert covered.all()
    (side_x, side_y), = sides  # every patch is the same square
    short = min(width, height)
    assert side_x == side_y == min(short, max(MIN_PATCH, round(fractions[0] * short)))
    # row-major grid: the first `cols` boxes share a row, every `cols`-th box shares a column
    assert len({b[1] for b in boxes[:cols]}) == 1 and len({b[0] for b in boxes[::cols]}) == 1


def test_patch_grid_shape_and_bad_fractions():
    boxes, shape = patch_grid(512, 512)  # side 128, stride 64: starts 0, 64, ..., 384
    assert shape == (7, 7) and boxes[0] == (0, 0, 128, 128) and boxes[-1] == (384, 384, 512, 512)
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            patch_grid(100, 100, patch_fraction=bad)
        with pytest.raises(ValueError):
            patch_grid(100, 100, stride_fraction=bad)


@pytest.mark.parametrize("name", ["edge_density", "compression_ratio_png"])
def test_noise_half_scores_higher_than_flat_half(name):
    image = _half_noise()
    grid = complexity_map(create_model(name), image, batch_size=5)
    boxes, shape = patch_grid(*image.size)
    assert grid.shape == shape and grid.dtype == np.float32 and np.isfinite(grid).all()
    # patches entirely in one half
    centres = np.array([(b[0] + b[2]) / 2 for b in boxes]).reshape(shape)
    lefts = np.array([b[2] <= image.width // 2 for b in boxes]).reshape(shape)
    rights = np.array([b[0] >= image.width // 2 for b in boxes]).reshape(shape)
    assert lefts.any() and rights.any() and centres.shape == shape
    assert grid[rights].mean() > grid[lefts].mean() + 0.1 * abs(grid[rights].mean())
    up = upsample_map(grid, image.width, image.height, boxes)
    assert up.shape == (image.height, image.width)
    assert up[:, -20:].mean() > up[:, :20].mean()


def test_upsample_hits_patch_centres_and_constant_stays_constant():
    boxes, shape = patch_grid(303, 202, 0.5, 1.0)  # 101 px patches: centres fall on pixel centres
    assert shape == (2, 3)
    grid = np.arange(6, dtype=np.float32).reshape(shape)
    up = upsample_map(grid, 303, 202, boxes)
    for value, (l, t, r, b) in zip(grid.ravel(), boxes):
        assert up[(t + b) // 2, (l + r) // 2] == pytest.approx(value, abs=1e-5)
    assert up[0, 0] == pytest.approx(grid[0, 0]) and up[-1, -1] == pytest.approx(grid[-1, -1])  # borders held
    assert np.allclose(upsample_map(np.full((3, 4), 2.5), 50, 40), 2.5)


def test_overlay_size_mode_and_normalisation():
    image = _half_noise(150, 90).convert("L")  # any mode works
    grid = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    out = overlay(image, grid)
    assert out.size == image.size and out.mode == "RGB"
    arr = np.asarray(out, dtype=float)
    assert arr[:, -5:].mean() > arr[:, :5].mean()  # hot (bright) right side
    # a constant map and a value range do not divide by zero
    assert overlay(image, np.full((2, 3), 7.0)).size == image.size
    same = overlay(image, grid, value_range=(0.0, 1.0))
    assert np.array_equal(np.asarray(same), np.asarray(out))
    assert np.array_equal(np.asarray(overlay(image, grid, alpha=0.0)), np.asarray(image.convert("RGB")))


def test_skimage_photo_map():
    data = pytest.importorskip("skimage.data")
    image = Image.fromarray(data.astronaut())
    grid = complexity_map(create_model("edge_density"), image, patch_fraction=0.5, stride_fraction=1.0)
    assert grid.shape == (2, 2) and np.isfinite(grid).all() and grid.max() > grid.min()


def test_map_paths_mirror_and_unique(tmp_path):
    root = tmp_path / "in"
    a, b = map_paths("out", root / "a" / "x.jpg", root), map_paths("out", root / "b" / "x.jpg", root)
    assert a[0].as_posix() == "out/a/x.jpg.map.png" and a[1].as_posix() == "out/a/x.jpg.map.npy"
    assert b[0].as_posix() == "out/b/x.jpg.map.png"
    assert map_paths("out", root / "x.png", root)[0] != map_paths("out", root / "x.jpg", root)[0]
    # outside the root (or no root): flat, with a hash of the absolute path
    c, d = map_paths("out", tmp_path / "c" / "x.jpg"), map_paths("out", tmp_path / "d" / "x.jpg", root)
    assert c[0].parent.as_posix() == "out" and c[0].name.startswith("x.jpg.") and c[0].name.endswith(".map.png")
    assert c[0] != d[0]
    assert inputs_root([root / "a", root / "b"]) == str(root)
    assert inputs_root([str(root / "a" / "x.jpg")]) == str(root / "a")


def test_write_map_is_atomic_and_roundtrips(tmp_path):
    image = _half_noise(64, 48)
    grid = np.random.default_rng(1).random((3, 4)).astype(np.float32)
    png, npy = write_map(tmp_path / "maps", tmp_path / "in" / "s" / "p.png", grid, overlay(image, grid), tmp_path / "in")
    assert png == tmp_path / "maps" / "s" / "p.png.map.png"
    assert np.array_equal(np.load(npy), grid)
    assert Image.open(png).size == image.size
    assert sorted(p.name for p in png.parent.iterdir()) == ["p.png.map.npy", "p.png.map.png"]  # no temp files left


def test_cli_score_writes_maps_and_survives_bad_files(tmp_path, capsys):
    folder = tmp_path / "imgs"
    for sub, seed in (("a", 0), ("b", 1)):
        (folder / sub).mkdir(parents=True)
        _half_noise(96, 64, seed).save(folder / sub / "x.png")  # same name in two sub-folders
    _half_noise(80, 80, 2).save(folder / "top.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    out, maps = tmp_path / "out.csv", tmp_path / "maps"
    argv = ["score", str(folder), "-o", str(out), "--maps", str(maps), "-m", "edge_density", "--workers", "0",
            "--batch-size", "2"]
    assert main(argv) == 1  # broken.png: an error row, exit 1
    rows = {r["path"]: r for r in read_scores(out)}
    assert len(rows) == 4
    assert rows[str(folder / "broken.png")]["error"] and rows[str(folder / "broken.png")]["score"] is None
    expected = {"a/x.png.map.png", "a/x.png.map.npy", "b/x.png.map.png", "b/x.png.map.npy",
                "top.png.map.png", "top.png.map.npy"}
    written = {p.relative_to(maps).as_posix() for p in maps.rglob("*") if p.is_file()}
    assert written == expected
    grid_a, grid_b = np.load(maps / "a" / "x.png.map.npy"), np.load(maps / "b" / "x.png.map.npy")
    assert grid_a.shape == patch_grid(96, 64)[1] and not np.array_equal(grid_a, grid_b)
    assert Image.open(maps / "top.png.map.png").size == (80, 80)
    meta = json.loads((tmp_path / "out.csv.meta.json").read_text())
    assert meta["maps"]["written"] == 3 and meta["maps"]["errors"] == 0
    assert "3 maps" in capsys.readouterr().err


def test_cli_map_failure_is_recorded_and_scores_are_kept(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        _half_noise(64, 64, i).save(folder / f"{i}.png")
    import pyica.maps

    real = pyica.maps.complexity_map

    def flaky(model, image, *args, **kwargs):
        if image.getpixel((63, 0)) == _half_noise(64, 64, 1).getpixel((63, 0)):
            raise RuntimeError("boom")
        return real(model, image, *args, **kwargs)

    monkeypatch.setattr(pyica.maps, "complexity_map", flaky)
    out, maps = tmp_path / "out.csv", tmp_path / "maps"
    assert main(["score", str(folder), "-o", str(out), "--maps", str(maps), "-m", "edge_density", "-q",
                 "--workers", "0"]) == 0
    assert all(r["score"] is not None for r in read_scores(out)) and len(read_scores(out)) == 3
    assert sorted(p.name for p in maps.glob("*.png")) == ["0.png.map.png", "2.png.map.png"]
    meta = json.loads((tmp_path / "out.csv.meta.json").read_text())
    assert meta["maps"]["errors"] == 1 and "1.png" in meta["maps"]["failures"][0] and "boom" in meta["maps"]["failures"][0]


def test_cli_rejects_bad_map_fractions(tmp_path, capsys):
    _half_noise(64, 64).save(tmp_path / "a.png")
    assert main(["score", str(tmp_path / "a.png"), "--maps", str(tmp_path / "m"), "--map-patch", "0", "-q"]) == 2
    assert "--map-patch" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_maps_figure_lays_out_one_row_per_image_and_one_tile_per_model(tmp_path, capsys):
    """python -m benchmarks.maps_figure: a photo tile then one overlay per model on each row; the printed line
    names the score and map range of each image under each model."""
    from benchmarks import maps_figure

    rng = np.random.default_rng(0)
    flat = tmp_path / "flat.png"
    Image.new("RGB", (96, 64), (120, 120, 120)).save(flat)
    noisy = tmp_path / "noisy.png"
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(noisy)
    out = tmp_path / "sheet.png"
    maps_figure.main(["-m", "entropy", "spatial_information", "--images", str(flat), str(noisy), "--tile", "64",
                      "--out", str(out)])
    sheet = Image.open(out)
    gap = 4
    assert sheet.size == (3 * 96 + 2 * gap, 2 * 64 + gap)  # tiles keep the 96 x 64 aspect at height 64
    lines = [line for line in capsys.readouterr().out.splitlines() if " score " in line]
    assert len(lines) == 4
    scores = {(line.split()[0], line.split()[1]): float(line.split()[3]) for line in lines}
    assert scores[("noisy", "entropy")] > scores[("flat", "entropy")]
