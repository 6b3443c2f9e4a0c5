"""pyica.data.suites: shifted copies keep the labels, constructed suites are deterministic and ordered."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyica.data.dataset import ComplexityDataset
from pyica.data.suites import (DEFAULT_SHIFTS, SHIFTS, SUITES, apply_shift, cache_root, make_suite, otsu_threshold,
                               shifted_copies, shifted_copy)

REPO = Path(__file__).resolve().parents[1]
SAVOIAS = REPO.parent / "shared" / "data" / "savoias"
SMALL = dict(groups=3, levels=5, size=96, photos=[])


def pixels(ds: ComplexityDataset, i: int) -> np.ndarray:
    with Image.open(ds.full_path(i)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int64)


def by_group(ds: ComplexityDataset, measure) -> dict[str, list[float]]:
    """``measure`` of each image, per group, in level order."""
    out: dict[str, list[float]] = {}
    for i in np.lexsort((ds.scores, ds.categories)):
        out.setdefault(ds.categories[i], []).append(measure(pixels(ds, i)))
    return out


def dark(rgb: np.ndarray) -> float:
    return float((rgb.mean(-1) < 128).sum())


def transitions(rgb: np.ndarray) -> float:
    return float((np.diff(rgb.mean(-1), axis=1) != 0).sum())


def flat_grey(rgb: np.ndarray) -> float:
    return float(((rgb.mean(-1) > 40) & (rgb.mean(-1) < 215)).sum())


def gradient(rgb: np.ndarray) -> float:
    return float(np.abs(np.diff(rgb, axis=0)).sum() + np.abs(np.diff(rgb, axis=1)).sum())


@pytest.fixture
def labelled(tmp_path) -> ComplexityDataset:
    rng = np.random.default_rng(0)
    folder = tmp_path / "tiny"
    folder.mkdir()
    paths = []
    for i in range(6):
        y, x = np.mgrid[0:80, 0:100]
        image = (np.stack([x * 2, y * 3, (x + y) % 256], -1) + rng.integers(0, 40, (80, 100, 3))).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i}.jpg")
        paths.append(f"{i}.jpg")
    return ComplexityDataset("tiny", folder, np.array(paths), np.arange(6.0), np.array(["a", "b"] * 3),
                             np.array(["", "", "d", "d", "", ""]), per_category_scale=True, score_scale=(0, 100))


def test_shifted_copies_keep_labels_and_are_reused(labelled, tmp_path):
    cache = tmp_path / "cache"
    copies = shifted_copies(labelled, tuple(SHIFTS), cache_dir=cache)
    assert set(copies) == set(SHIFTS)
    for shift, copy in copies.items():
        assert copy.name == f"tiny.{shift}" and cache in copy.root.parents
        np.testing.assert_array_equal(copy.scores, labelled.scores)
        np.testing.assert_array_equal(copy.categories, labelled.categories)
        np.testing.assert_array_equal(copy.groups, labelled.groups)
        assert copy.per_category_scale and copy.score_scale == (0, 100)
        assert all(Path(p).is_file() for p in copy.full_paths())
    edges, binary = pixels(copies["edges"], 0), pixels(copies["binarised"], 0)
    assert set(np.unique(edges)) <= {0, 255} and (edges == 255).mean() > 0.5  # dark lines on white
    assert set(np.unique(binary)) == {0, 255}
    assert max(Image.open(copies["downscaled"].full_path(0)).size) == 64
    grey = pixels(copies["greyscale"], 0)
    assert (grey[..., 0] == grey[..., 2]).all()
    mtimes = [Path(p).stat().st_mtime_ns for p in copies["edges"].full_paths()]
    again = shifted_copy(labelled, "edges", cache_dir=cache)
    assert [Path(p).stat().st_mtime_ns for p in again.full_paths()] == mtimes
    assert not list(cache.rglob("*.tmp*")) and not list(cache.rglob(".*"))


def test_unreadable_image_keeps_its_original_path(labelled, tmp_path):
    (labelled.root / "0.jpg").unlink()
    copy = shifted_copy(labelled, "greyscale", cache_dir=tmp_path / "cache")
    assert copy.full_paths()[0] == str((labelled.root / "0.jpg").resolve())
    assert Path(copy.full_paths()[1]).is_file()


def test_shift_names_and_otsu():
    with pytest.raises(ValueError, match="shift must be one of"):
        apply_shift(Image.new("RGB", (4, 4)), "sepia")
    assert set(DEFAULT_SHIFTS) <= set(SHIFTS)
    two_levels = np.array([[10] * 5 + [200] * 5], dtype=np.uint8)
    assert 10 < otsu_threshold(two_levels) < 200


def test_cache_inside_the_repository_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="inside the repository"):
        cache_root(REPO / "suites-cache")
    monkeypatch.setenv("PYICA_SUITES_CACHE", str(tmp_path / "env"))
    assert cache_root() == (tmp_path / "env").resolve()


@pytest.mark.parametrize("name", sorted(SUITES))
def test_suites_are_deterministic_and_labelled_by_level(name, tmp_path):
    first = make_suite(name, cache_dir=tmp_path / "one", **SMALL)
    second = make_suite(name, cache_dir=tmp_path / "two", **SMALL)
    assert len(first) == 15 and first.category_names() == ["g00", "g01", "g02"]
    np.testing.assert_array_equal(first.scores, np.tile(np.arange(5.0), 3))
    for i in range(len(first)):
        np.testing.assert_array_equal(pixels(first, i), pixels(second, i))
    other_seed = make_suite(name, cache_dir=tmp_path / "one", seed=1, **SMALL)
    assert other_seed.root != first.root
    assert any((pixels(first, i) != pixels(other_seed, i)).any() for i in range(len(first)))


ORDERS = {  # a measure that must increase strictly with the level in every group
    "masked_patterns": lambda rgb: -flat_grey(rgb),
    "strokes": dark,
    "pasted_objects": lambda rgb: gradient(rgb),
    "degraded_photos": gradient,
}


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_suite_orders_are_right(name, tmp_path):
    for values in by_group(make_suite(name, cache_dir=tmp_path, **SMALL), ORDERS[name]).values():
        assert np.all(np.diff(values) > 0), values


def test_grid_variants_finer_cells_and_more_cells(tmp_path):
    suite = make_suite("grid_patterns", cache_dir=tmp_path, **SMALL)
    finer, more = by_group(suite, transitions), by_group(suite, dark)
    for g in suite.category_names():  # even groups: finer cells; odd groups: more black cells
        assert np.all(np.diff((finer if int(g[1:]) % 2 == 0 else more)[g]) > 0)


def test_suite_with_photos_and_unknown_name(tmp_path):
    photo = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    suite = make_suite("degraded_photos", cache_dir=tmp_path, groups=2, levels=3, size=96, photos=[photo])
    np.testing.assert_array_equal(pixels(suite, 2), photo)  # the top level is the photo itself
    with pytest.raises(ValueError, match="suite must be one of"):
        make_suite("clouds", cache_dir=tmp_path)


def test_nothing_is_written_inside_the_repository(labelled, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PYICA_SUITES_CACHE", raising=False)
    before = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                            capture_output=True, text=True).stdout
    copy = shifted_copy(labelled, "edges")
    suite = make_suite("strokes", **SMALL)
    assert (tmp_path / "home") in copy.root.parents and (tmp_path / "home") in suite.root.parents
    after = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                           capture_output=True, text=True).stdout
    new = set(after.splitlines()) - set(before.splitlines())
    assert not [line for line in new if line.endswith(".png")]


@pytest.mark.skipif(not (SAVOIAS / "labels.csv").exists(), reason="SAVOIAS not found at ../shared/data/savoias")
def test_savoias_shifted_copy_keeps_per_category_scores(tmp_path):
    from pyica.data import load_dataset

    ds = load_dataset("savoias", root=SAVOIAS)
    part = ds.subset(np.concatenate([np.flatnonzero(ds.categories == c)[:3] for c in ds.category_names()]))
    copy = shifted_copy(part, "binarised", cache_dir=tmp_path)
    np.testing.assert_array_equal(copy.scores, part.scores)
    np.testing.assert_array_equal(copy.categories, part.categories)
    assert copy.per_category_scale and all(Path(p).is_file() for p in copy.full_paths())
