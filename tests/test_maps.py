"""Complexity maps: patch grid, patch scoring, overlay, atomic writing and `pyica score --maps`."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from pyica.cli import main
from pyica.maps import (
    MIN_PATCH,
    PNG_MARKER,
    colormap,
    complexity_map,
    fixed_range,
    inputs_root,
    map_paths,
    map_stem,
    overlay,
    patch_grid,
    render_map,
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


def _touch_images(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8)).save(folder / name, format="PNG")  # the content does not matter here
    return [folder / n for n in names]


def test_map_paths_mirror_and_unique(tmp_path):
    root = tmp_path / "in"
    ax, = _touch_images(root / "a", "x.jpg")
    bx, = _touch_images(root / "b", "x.jpg")
    (root / "a" / "x.txt").write_text("notes")  # not an image: no clash
    a, b = map_paths("out", ax, root), map_paths("out", bx, root)
    assert a[0].as_posix() == "out/a/x.map.png" and a[1].as_posix() == "out/a/x.map.npy"
    assert b[0].as_posix() == "out/b/x.map.png"
    # images of one folder that differ only by extension (or by case) keep their whole names
    clash = _touch_images(root / "c", "x.jpg", "x.png", "x.jpg.png", "Y.JPG", "y.png", "z.png")
    names = [map_paths("out", p, root)[0].name for p in clash]
    assert names == ["x.jpg.map.png", "x.png.map.png", "x.jpg.png.map.png", "Y.JPG.map.png", "y.png.map.png",
                     "z.map.png"]
    assert len(set(names)) == len(names)
    assert map_stem(root / "c" / "x.jpg") == "x.jpg" and map_stem(ax) == "x"
    # outside the root (or no root): flat, with a hash of the absolute path
    cx, = _touch_images(tmp_path / "c", "x.jpg")
    dx, = _touch_images(tmp_path / "d", "x.jpg")
    c, d = map_paths("out", cx), map_paths("out", dx, root)
    assert c[0].parent.as_posix() == "out" and re.fullmatch(r"x\.[0-9a-f]{8}\.map\.png", c[0].name)
    assert c[0] != d[0]
    assert inputs_root([root / "a", root / "b"]) == str(root)
    assert inputs_root([str(root / "a" / "x.jpg")]) == str(root / "a")


def test_map_names_of_a_real_folder_never_collide(tmp_path):
    """Every image of a folder with clashing stems, dotted names and sub-folders gets its own pair of files."""
    root = tmp_path / "in"
    files = _touch_images(root, "a.jpg", "a.png", "a.jpeg", "b.png", "b.png.png", "c.d.png", "c.png", "C.tif")
    files += _touch_images(root / "s", "a.jpg", "a.map.png")
    targets = [t for f in files for t in map_paths(tmp_path / "maps", f, root)]
    assert len(set(targets)) == len(targets) == 2 * len(files)
    assert all(t.resolve().is_relative_to((tmp_path / "maps").resolve()) for t in targets)


def test_write_map_is_atomic_and_roundtrips(tmp_path):
    image = _half_noise(64, 48)
    grid = np.random.default_rng(1).random((3, 4)).astype(np.float32)
    src, = _touch_images(tmp_path / "in" / "s", "p.png")
    png, npy = write_map(tmp_path / "maps", src, grid, render_map(image, grid, score=0.5), tmp_path / "in")
    assert png == tmp_path / "maps" / "s" / "p.map.png"
    assert np.array_equal(np.load(npy), grid)
    with Image.open(png) as written:
        assert written.height >= image.height and written.width > image.width and PNG_MARKER in written.text
    assert sorted(p.name for p in png.parent.iterdir()) == ["p.map.npy", "p.map.png"]  # no temp files left
    # a map pyica wrote is replaced by a rerun
    write_map(tmp_path / "maps", src, grid * 0, render_map(image, grid * 0), tmp_path / "in")
    assert not np.load(npy).any()


def test_write_map_refuses_files_pyica_did_not_write(tmp_path):
    image, grid = _half_noise(32, 32), np.zeros((2, 2), dtype=np.float32)
    src, = _touch_images(tmp_path / "in", "p.png")
    maps = tmp_path / "maps"
    maps.mkdir()
    theirs = maps / "p.map.png"
    Image.new("RGB", (5, 5), (1, 2, 3)).save(theirs)  # the user's own PNG under a map's name
    before = theirs.read_bytes()
    with pytest.raises(FileExistsError, match="not a map pyica wrote"):
        write_map(maps, src, grid, render_map(image, grid), tmp_path / "in")
    assert theirs.read_bytes() == before and not (maps / "p.map.npy").exists()
    theirs.unlink()
    (maps / "p.map.npy").write_bytes(b"my notes")  # not a float32 grid
    with pytest.raises(FileExistsError):
        write_map(maps, src, grid, render_map(image, grid), tmp_path / "in")
    assert (maps / "p.map.npy").read_bytes() == b"my notes" and not theirs.exists()
    (maps / "p.map.npy").unlink()
    elsewhere = tmp_path / "elsewhere.png"
    Image.new("RGB", (5, 5)).save(elsewhere)
    theirs.symlink_to(elsewhere)  # a link is never replaced (nor followed)
    with pytest.raises(FileExistsError, match="not a regular file"):
        write_map(maps, src, grid, render_map(image, grid), tmp_path / "in")
    assert theirs.is_symlink() and Image.open(elsewhere).size == (5, 5)


def test_write_map_never_writes_outside_the_maps_folder(tmp_path):
    image, grid = _half_noise(32, 32), np.zeros((2, 2), dtype=np.float32)
    src, = _touch_images(tmp_path / "in" / "sub", "p.png")
    maps, outside = tmp_path / "maps", tmp_path / "outside"
    maps.mkdir()
    outside.mkdir()
    (maps / "sub").symlink_to(outside, target_is_directory=True)  # the mirrored folder leads out of DIR
    with pytest.raises(ValueError, match="outside the maps folder"):
        write_map(maps, src, grid, render_map(image, grid), tmp_path / "in")
    assert list(outside.iterdir()) == []
    # image paths are data: a name cannot climb out of DIR
    png, npy = map_paths(maps, tmp_path / "in" / ".." / "in" / "sub" / "p.png", tmp_path / "in" / "sub" / "..")
    assert png.parent == maps / "sub" and ".." not in png.parts


def test_render_map_bar_scale_and_score():
    image = Image.new("RGB", (200, 180), (90, 90, 90))
    grid = np.array([[0.2, 0.4], [0.6, 0.8]], dtype=np.float32)
    low, high = render_map(image, grid, score=0.1, value_range=(0, 1)), render_map(image, grid, score=0.9, value_range=(0, 1))
    assert low.size == high.size and low.height == 180 and low.width > 200
    left = np.asarray(low)[:, :200]
    assert np.array_equal(left, np.asarray(overlay(image, grid, value_range=(0, 1))))  # the overlay, unchanged
    # the colour bar: a column of the panel runs from the top colour (high) to the bottom colour (low)
    panel = np.asarray(low, dtype=int)[:, 200:]
    top_colour, bottom_colour = colormap(np.array(1.0)), colormap(np.array(0.0))
    matches_top = [(panel[y] == top_colour).all(axis=1).sum() for y in range(low.height)]
    matches_bottom = [(panel[y] == bottom_colour).all(axis=1).sum() for y in range(low.height)]
    assert max(matches_top) >= 10 and max(matches_bottom) >= 10
    assert int(np.argmax(matches_top)) < int(np.argmax(matches_bottom))
    # the score marker: the two pictures differ in the panel, above for the higher score
    diff_rows = np.nonzero((np.asarray(low)[:, 200:] != np.asarray(high)[:, 200:]).any(axis=(1, 2)))[0]
    assert diff_rows.size and diff_rows.min() < low.height // 2 < diff_rows.max()
    # fixed scale: the same patch value has the same colour in maps of different images
    grids = np.array([[0.6, 0.2]], dtype=np.float32), np.array([[0.6, 0.99]], dtype=np.float32)
    fixed = [np.asarray(render_map(image, g, alpha=1.0, value_range=(0, 1)))[90, 10] for g in grids]
    assert np.array_equal(fixed[0], fixed[1]) and np.array_equal(fixed[0], colormap(np.array(0.6)))  # left: 0.6
    per_image = [np.asarray(render_map(image, g, alpha=1.0))[90, 10] for g in grids]
    assert not np.array_equal(per_image[0], per_image[1])
    assert fixed_range((0.0, 1.0)) == (0.0, 1.0) and fixed_range(None) is None
    assert fixed_range((0.0, float("inf"))) is None and fixed_range((1, 1)) is None
    tiny = render_map(Image.new("RGB", (3, 2)), np.zeros((1, 1)), score=None)
    assert tiny.height == 160  # legible bar whatever the image size


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
    expected = {"a/x.map.png", "a/x.map.npy", "b/x.map.png", "b/x.map.npy", "top.map.png", "top.map.npy"}
    written = {p.relative_to(maps).as_posix() for p in maps.rglob("*") if p.is_file()}
    assert written == expected
    grid_a, grid_b = np.load(maps / "a" / "x.map.npy"), np.load(maps / "b" / "x.map.npy")
    assert grid_a.shape == patch_grid(96, 64)[1] and not np.array_equal(grid_a, grid_b)
    with Image.open(maps / "top.map.png") as picture:  # the 80 x 80 overlay, a colour-bar panel beside it
        assert picture.width > 80 and picture.height == 160 and PNG_MARKER in picture.text
    meta = json.loads((tmp_path / "out.csv.meta.json").read_text())
    assert meta["maps"]["written"] == 3 and meta["maps"]["errors"] == 0
    assert meta["maps"]["scale"] == "fixed" and meta["maps"]["range"] == [0.0, 1.0]  # edge_density's range
    assert "3 maps" in capsys.readouterr().err


class _FailsOnPatchSize:
    """A classic transform that fails on 50 x 50 crops (the patches of a 200 x 200 image) and nothing else;
    picklable, so it runs in DataLoader workers."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, image):
        if image.size == (50, 50):
            raise RuntimeError("boom in the worker")
        return self.inner(image)


def _three_images(folder, big=None):
    folder.mkdir()
    for i in range(3):
        side = 200 if i == big else 64
        _half_noise(side, side, i).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("workers", [0, 2])
def test_cli_map_failing_in_the_workers_is_recorded_and_scores_are_kept(tmp_path, monkeypatch, workers):
    """Preparing one image's patches fails (in a DataLoader worker): its score is kept, the other maps are written."""
    import pyica.registry

    folder = _three_images(tmp_path / "imgs", big=1)
    real = pyica.registry.create_model

    def picky(name, **kwargs):
        model = real(name, **kwargs)
        model.transform = _FailsOnPatchSize(model.transform)
        return model

    monkeypatch.setattr(pyica.registry, "create_model", picky)
    out, maps = tmp_path / "out.csv", tmp_path / "maps"
    assert main(["score", str(folder), "-o", str(out), "--maps", str(maps), "-m", "edge_density", "-q",
                 "--workers", str(workers)]) == 0
    rows = read_scores(out)
    assert len(rows) == 3 and all(r["score"] is not None and not r["error"] for r in rows)
    assert sorted(p.name for p in maps.glob("*.png")) == ["0.map.png", "2.map.png"]
    meta = json.loads((tmp_path / "out.csv.meta.json").read_text())
    assert meta["maps"]["written"] == 2 and meta["maps"]["errors"] == 1
    failure, = meta["maps"]["failures"]
    assert "1.png" in failure and "boom in the worker" in failure


def test_cli_map_failing_in_the_forward_or_the_rendering_fails_only_that_map(tmp_path, monkeypatch):
    """The patches of three images are scored together; one image's patches make the forward fail: that
    batch is retried map by map, so only that map fails. A rendering failure fails only its map too."""
    import pyica.maps
    import pyica.registry

    folder = _three_images(tmp_path / "imgs", big=1)
    real = pyica.registry.create_model

    def picky(name, **kwargs):
        model = real(name, **kwargs)
        measure = model.measure

        def fails_on_patches_of_the_big_image(rgb):
            if rgb.shape[:2] == (50, 50):
                raise RuntimeError("boom in the forward")
            return measure(rgb)

        model.measure = fails_on_patches_of_the_big_image
        return model

    monkeypatch.setattr(pyica.registry, "create_model", picky)
    out, maps = tmp_path / "out.csv", tmp_path / "maps"
    assert main(["score", str(folder), "-o", str(out), "--maps", str(maps), "-m", "edge_density", "-q",
                 "--workers", "0", "--batch-size", "3"]) == 0
    assert all(r["score"] is not None for r in read_scores(out)) and len(read_scores(out)) == 3
    assert sorted(p.name for p in maps.glob("*.png")) == ["0.map.png", "2.map.png"]
    meta = json.loads((tmp_path / "out.csv.meta.json").read_text())["maps"]
    assert meta["errors"] == 1 and "1.png" in meta["failures"][0] and "boom in the forward" in meta["failures"][0]

    monkeypatch.setattr(pyica.registry, "create_model", real)
    render = pyica.maps.render_map

    def flaky(image, grid, **kwargs):
        if image.size == (200, 200):
            raise RuntimeError("boom in the rendering")
        return render(image, grid, **kwargs)

    monkeypatch.setattr(pyica.maps, "render_map", flaky)
    out2, maps2 = tmp_path / "out2.csv", tmp_path / "maps2"
    assert main(["score", str(folder), "-o", str(out2), "--maps", str(maps2), "-m", "edge_density", "-q",
                 "--workers", "0"]) == 0
    assert sorted(p.name for p in maps2.glob("*.png")) == ["0.map.png", "2.map.png"]
    meta = json.loads((tmp_path / "out2.csv.meta.json").read_text())["maps"]
    assert meta["errors"] == 1 and "1.png" in meta["failures"][0] and "boom in the rendering" in meta["failures"][0]


def _reference_maps(inputs, maps_dir, model, patch=0.25, stride=0.5, value_range=(0.0, 1.0)):
    """The maps as pyica wrote them before maps were made with the scores: each image loaded again in
    the main process, its patches scored one image at a time by complexity_map, rendered and written."""
    from pyica.inputs import iter_image_paths
    from pyica.loading import load_image

    root = inputs_root(inputs)
    for path in iter_image_paths(inputs):
        image = load_image(path)
        score = float(model.score_images([image])[0])
        boxes, _ = patch_grid(image.width, image.height, patch, stride)
        grid = complexity_map(model, image, patch, stride, batch_size=32)
        write_map(maps_dir, path, grid, render_map(image, grid, score=score, value_range=value_range, boxes=boxes),
                  root)


def _photos(folder):
    """Photo-like images of a few sizes and aspect ratios (a sub-folder too), from the shipped examples."""
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples" / "images").glob("*.jpg"))[:5]
    sizes = [(300, 200), (200, 300), (257, 190), (160, 160), (410, 230)]
    (folder / "sub").mkdir(parents=True)
    for i, (src, size) in enumerate(zip(examples, sizes)):
        target = folder / ("sub" if i % 2 else "") / f"{src.stem}.{'png' if i == 3 else 'jpg'}"
        Image.open(src).convert("RGB").resize(size).save(target, quality=90)
    return folder


@pytest.mark.parametrize("workers", [0, 2])
def test_cli_writes_the_same_map_files_as_the_one_image_at_a_time_reference(tmp_path, workers):
    """Maps made with the scores (workers prepare the patches; patches of several images share forwards) are
    the files the reference path writes: the same names, the same grids, the same pictures byte for byte."""
    folder = _photos(tmp_path / "imgs")
    ref, maps = tmp_path / "ref", tmp_path / "maps"
    _reference_maps([str(folder)], ref, create_model("edge_density"))
    assert main(["score", str(folder), "-o", str(tmp_path / "s.csv"), "--maps", str(maps), "-m", "edge_density",
                 "-q", "--workers", str(workers), "--batch-size", "2"]) == 0
    names = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file())
    assert len(names) == 10 and sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*") if p.is_file()) == names
    for name in names:
        assert (maps / name).read_bytes() == (ref / name).read_bytes(), name


@pytest.mark.parametrize("workers", [0, 2])
def test_default_model_maps_equal_complexity_map(tmp_path, workers):
    """The default model: grids made the new way equal complexity_map's, image by image (allclose), with
    the patches of several images scored in shared batches, and the scores equal score_paths'."""
    from pyica.inputs import iter_image_paths
    from pyica.loading import load_image
    from pyica.scoring import MapTimes, score_paths, score_paths_with_maps

    folder = _photos(tmp_path / "imgs")
    model = create_model("effnet_lite0_within.savoias", device="cpu")
    paths = list(iter_image_paths([str(folder)]))
    times = MapTimes()
    pairs = list(score_paths_with_maps(paths, model, batch_size=4, map_batch_size=13, num_workers=workers,
                                       times=times))
    assert [r.path for r, _ in pairs] == paths and times.forward > 0
    plain = list(score_paths(paths, model, batch_size=4, num_workers=0))
    np.testing.assert_allclose([r.score for r, _ in pairs], [r.score for r in plain], atol=1e-5)
    for record, prepared in pairs:
        image = load_image(record.path)
        reference = complexity_map(model, image)
        assert prepared.error is None and prepared.patches is None
        assert prepared.grid.dtype == np.float32 and prepared.grid.shape == reference.shape
        np.testing.assert_allclose(prepared.grid, reference, atol=1e-5, rtol=0)
        assert prepared.boxes == patch_grid(image.width, image.height)[0]
        assert np.array_equal(np.asarray(overlay(prepared.image, prepared.grid, boxes=prepared.boxes)),
                              np.asarray(overlay(image, prepared.grid, boxes=prepared.boxes)))


def test_map_inputs_failures_and_patch_fractions():
    """map_inputs checks the fractions; a failed input gets no map; the patches follow the fractions asked for."""
    from pyica.maps import map_inputs

    model = create_model("edge_density")
    with pytest.raises(ValueError, match="patch_fraction"):
        map_inputs(model, 0.0)
    transform, collate = map_inputs(model, 0.5, 1.0)
    item, prepared = transform(_half_noise(96, 64))
    assert prepared.shape == (2, 3) and len(prepared.patches) == 6 and prepared.image.mode == "L"
    score_batch, maps_of = collate([(item, prepared)])
    assert len(score_batch) == 1 and maps_of == [prepared]


def test_score_paths_with_maps_gives_failed_inputs_no_map(tmp_path):
    from pyica.scoring import score_paths_with_maps

    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    _half_noise(64, 48).save(good)
    bad.write_bytes(b"not a png")
    pairs = list(score_paths_with_maps([str(good), str(bad)], create_model("edge_density"), patch_fraction=0.5,
                                       stride_fraction=1.0, num_workers=0))
    (rec_a, map_a), (rec_b, map_b) = pairs
    assert rec_a.score is not None and map_a.grid.shape == patch_grid(64, 48, 0.5, 1.0)[1] == (2, 2)
    assert rec_b.error and map_b is None


def test_cli_maps_of_same_stem_inputs_scales_and_refusals(tmp_path, caplog):
    """x.jpg and x.png in one folder get distinct maps; the fixed scale is the model's range, an open range
    falls back to per-image scaling with a warning; a file pyica did not write is never replaced."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    _half_noise(64, 48, 0).save(folder / "x.png")
    _half_noise(64, 48, 1).save(folder / "x.jpg", quality=95)
    _half_noise(64, 48, 2).save(folder / "y.png")
    maps = tmp_path / "maps"
    maps.mkdir()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(maps / "y.map.png")  # the user's file under a map name
    mine = (maps / "y.map.png").read_bytes()
    out = tmp_path / "s.csv"
    assert main(["score", str(folder), "-o", str(out), "--maps", str(maps), "-m", "spatial_information", "-q",
                 "--workers", "0"]) == 0  # scores are all written: a refused map is not a failed input
    assert "open score range" in caplog.text
    assert sorted(p.name for p in maps.iterdir()) == ["x.jpg.map.npy", "x.jpg.map.png", "x.png.map.npy",
                                                      "x.png.map.png", "y.map.png"]
    assert (maps / "y.map.png").read_bytes() == mine
    meta = json.loads((tmp_path / "s.csv.meta.json").read_text())["maps"]
    assert meta["scale"] == "per-image" and meta["range"] is None
    assert meta["written"] == 2 and meta["errors"] == 1 and "not a map pyica wrote" in meta["failures"][0]
    assert not np.array_equal(np.load(maps / "x.jpg.map.npy"), np.load(maps / "x.png.map.npy"))

    out2 = tmp_path / "s2.csv"
    assert main(["score", str(folder / "x.png"), "-o", str(out2), "--maps", str(tmp_path / "m2"), "-m", "entropy",
                 "--map-scale", "per-image", "-q", "--workers", "0"]) == 0
    assert json.loads((tmp_path / "s2.csv.meta.json").read_text())["maps"]["scale"] == "per-image"
    assert (tmp_path / "m2" / "x.png.map.png").exists()  # x.jpg beside it: the whole name, as in every run
    out3 = tmp_path / "s3.csv"
    assert main(["score", str(folder / "x.png"), "-o", str(out3), "--maps", str(tmp_path / "m3"), "-m", "entropy",
                 "-q", "--workers", "0"]) == 0
    assert json.loads((tmp_path / "s3.csv.meta.json").read_text())["maps"]["range"] == [0.0, 8.0]


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


def test_a_large_jpeg_scores_the_same_with_and_without_maps(tmp_path):
    """Maps decode what the score decodes (a reduced JPEG), so --maps never changes a score."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.kron(rng.integers(0, 256, (60, 80, 3)), np.ones((20, 20, 1))).astype(np.uint8)  # 1600 x 1200
    Image.fromarray(pixels).save(folder / "big.jpg", quality=90)
    plain, mapped = tmp_path / "plain.csv", tmp_path / "mapped.csv"
    assert main(["score", str(folder), "-o", str(plain), "-q", "--workers", "0"]) == 0
    assert main(["score", str(folder), "-o", str(mapped), "-q", "--workers", "0", "--maps", str(tmp_path / "m")]) == 0
    assert read_scores(plain)[0]["score"] == read_scores(mapped)[0]["score"]
    assert (tmp_path / "m" / "big.map.npy").exists()
