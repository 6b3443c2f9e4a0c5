"""pyica tiles: the grid at image edges, stride, NMS, scores of flat vs noise tiles, lossless crops that never
replace a file nor leave the tiles folder, the manifest (resume, error rows) and the CLI's exit codes."""

from __future__ import annotations

import csv
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

import pyica
from pyica.cli import main
from pyica.registry import create_model
from pyica.tiling import COLUMNS, iou, run_tiles, select_tiles, tile_grid, tile_path, write_new_png

CLASSIC = "spatial_information"  # fast, and a flat tile scores 0 while noise scores high


def _half_noise(width=300, height=200, seed=0) -> np.ndarray:
    """Flat grey on the left half, uniform noise on the right half."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[:, width // 2:] = rng.integers(0, 256, (height, width - width // 2, 3), dtype=np.uint8)
    return pixels


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- the grid -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height,size,stride", [(1000, 700, 256, 256), (513, 512, 512, 512), (300, 200, 64, 48),
                                                      (1030, 600, 512, 256), (64, 64, 64, 1)])
def test_tile_grid_covers_the_image_with_whole_tiles_flush_at_the_edges(width, height, size, stride):
    boxes = tile_grid(width, height, size, stride)
    covered = np.zeros((height, width), bool)
    for left, top, right, bottom in boxes:
        assert right - left == size and bottom - top == size  # no partial tile
        assert 0 <= left and 0 <= top and right <= width and bottom <= height
        covered[top:bottom, left:right] = True
    assert covered.all()
    xs = sorted({b[0] for b in boxes})
    assert xs[-1] == width - size  # the last column ends at the border
    assert all(b - a == stride for a, b in zip(xs[:-2], xs[1:-1]))  # stride between all but the flush last one
    assert 0 < xs[-1] - xs[-2] <= stride if len(xs) > 1 else True


def test_tile_grid_counts_and_defaults():
    assert len(tile_grid(4000, 3000, 512)) == 8 * 6  # 7 strided + 1 flush column, 5 + 1 rows
    assert tile_grid(1024, 512, 512) == [(0, 0, 512, 512), (512, 0, 1024, 512)]  # divisible: no extra tile
    assert [b[0] for b in tile_grid(1024, 512, 512, 256)] == [0, 256, 512]
    assert [b[0] for b in tile_grid(1100, 512, 512, 512)] == [0, 512, 588]
    assert tile_grid(511, 2000, 512) == [] and tile_grid(2000, 100, 512) == []  # smaller than a tile: none
    assert tile_grid(512, 512, 512) == [(0, 0, 512, 512)]
    with pytest.raises(ValueError):
        tile_grid(100, 100, 0)
    with pytest.raises(ValueError):
        tile_grid(100, 100, 10, 0)


def test_iou_and_nms():
    a, b, c = (0, 0, 10, 10), (5, 0, 15, 10), (20, 20, 30, 30)
    assert iou(a, a) == 1.0 and iou(a, c) == 0.0
    assert iou(a, b) == pytest.approx(50 / 150)
    boxes = [(0, 0, 10, 10), (2, 0, 12, 10), (20, 0, 30, 10), (40, 0, 50, 10)]
    scores = [0.9, 0.95, 0.5, float("nan")]
    assert select_tiles(boxes, scores, nms=None) == [1, 0, 2]  # score order, NaN never kept
    assert select_tiles(boxes, scores, nms=0.3) == [1, 2]  # 0 overlaps 1 (IoU 8/12): dropped
    assert select_tiles(boxes, scores, nms=1.0) == [1, 0, 2]
    assert select_tiles(boxes, scores, nms=0.3, top=1) == [1]
    assert select_tiles(boxes, scores, nms=None, min_score=0.9) == [1, 0]
    assert select_tiles(boxes, [0.5, 0.5, 0.5, 0.5], nms=None, top=2) == [0, 1]  # ties: grid order
    # half-tile stride: neighbours (IoU 1/3) are suppressed at the default 0.3, diagonal ones (1/7) are not
    grid = tile_grid(1024, 1024, 512, 256)
    kept = select_tiles(grid, [1.0 if i == 4 else 0.5 for i in range(len(grid))])
    assert kept[0] == 4 and all(iou(grid[4], grid[k]) <= 0.3 for k in kept[1:])


# --- scores ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [CLASSIC, pyica.DEFAULT_MODEL])
def test_a_flat_tile_scores_below_a_noise_tile(tmp_path, name):
    path = tmp_path / "half.png"
    Image.fromarray(_half_noise(256, 128)).save(path)
    rows = pyica.tiles([str(path)], model=name, size=128, nms=None, device="cpu", num_workers=0)
    by_x = {r.x: r.score for r in rows}
    assert set(by_x) == {0, 128}
    assert by_x[0] < by_x[128]
    assert rows[0].x == 128 and rows[0].rank == 1 and rows[0].kept == 2 and rows[0].tile is None


def test_tile_scores_equal_scoring_the_crop_as_an_image(tmp_path):
    pixels = _half_noise(300, 200)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    model = create_model(CLASSIC, device="cpu")
    run = run_tiles([str(tmp_path / "a.png")], model, size=96, stride=64, nms=None, collect=True, num_workers=0)
    assert run.scored == 1 and len(run.rows) == len(tile_grid(300, 200, 96, 64))
    for row in run.rows:
        crop = Image.fromarray(pixels[row.y:row.y + row.h, row.x:row.x + row.w])
        assert row.score == pytest.approx(float(model.score_images([crop])[0]), rel=1e-5, abs=1e-6)


# --- crops ----------------------------------------------------------------------------------------------------

def test_crops_are_the_source_pixels_and_the_manifest_names_them(tmp_path):
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    pixels = _half_noise(300, 200, seed=3)
    Image.fromarray(pixels).save(src / "pic.png")
    Image.fromarray(pixels).save(src / "pic.jpg", quality=95)
    out = tmp_path / "crops"
    code = main(["tiles", str(tmp_path / "in"), "-m", CLASSIC, "--size", "100", "--top", "2", "--to", str(out),
                 "-q", "--workers", "0"])
    assert code == 0
    rows = _rows(out / "tiles.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert len(rows) == 4 and {r["rank"] for r in rows} == {"1", "2"} and {r["kept"] for r in rows} == {"2"}
    from pyica.loading import load_image
    for row in rows:
        tile = row["tile"]
        assert os.path.isabs(tile) and tile.startswith(str(out / "sub") + os.sep) and tile.endswith(".png")
        # pic.png and pic.jpg share a stem: each keeps its extension in the name
        assert os.path.basename(tile).startswith(os.path.basename(row["path"]) + "__x")
        x, y, w, h = (int(row[k]) for k in ("x", "y", "w", "h"))
        source = np.asarray(load_image(row["path"]))
        assert np.array_equal(np.asarray(Image.open(tile)), source[y:y + h, x:x + w])  # lossless
    assert sorted(os.listdir(src)) == ["pic.jpg", "pic.png"]  # the originals are untouched, nothing added


def test_write_new_png_never_replaces_and_never_leaves_the_folder(tmp_path):
    out = tmp_path / "out"
    image = Image.fromarray(_half_noise(20, 10))
    target = out / "a" / "t.png"
    assert write_new_png(out, target, image) == "written"
    assert write_new_png(out, target, image) == "present"  # the same bytes: a rerun is idempotent
    with pytest.raises(FileExistsError):
        write_new_png(out, target, Image.fromarray(_half_noise(20, 10, seed=1)))
    (out / "b.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(FileExistsError):
        write_new_png(out, out / "b.png", image)
    assert not (tmp_path / "elsewhere.png").exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        write_new_png(out, out / "link" / "t.png", image)
    assert os.listdir(outside) == []
    assert not [n for n in os.listdir(out / "a") if n.endswith(".tmp")]


def test_hostile_names_stay_inside_the_tiles_folder(tmp_path):
    out = tmp_path / "out"
    box = (0, 0, 8, 8)
    for member in ("../../evil.jpg", "/abs/evil.jpg", "a/../../../x.jpg", "..", "d\\..\\..\\y.jpg"):
        shard = tmp_path / "s.tar"
        shard.write_bytes(b"")
        target = tile_path(out, f"{shard}:{member}", box, str(tmp_path))
        assert ".." not in target.relative_to(out).parts
    outside = tile_path(out, "/somewhere/else/p.jpg", box, str(tmp_path))
    assert outside.parent == out and outside.name.startswith("p.")  # flat, with a digest of its path
    weird = tile_path(out, str(tmp_path / "new\nline -x.jpg"), box, str(tmp_path))
    assert weird.parent == out and weird.name == "new\nline -x__x0_y0_s8.png"


def test_archive_members_with_hostile_names(tmp_path):
    data = tmp_path / "img.png"
    Image.fromarray(_half_noise(64, 64)).save(data)
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(data, arcname="../../escape.png")
        tar.add(data, arcname="ok/img.png")
    out = tmp_path / "out"
    rows = pyica.tiles([str(shard)], model=CLASSIC, size=32, top=1, to=str(out), device="cpu", num_workers=0)
    assert len(rows) == 2 and not any(r.error for r in rows)
    for row in rows:
        assert os.path.realpath(row.tile).startswith(str(out.resolve()) + os.sep)
    assert not (tmp_path.parent / "escape.png").exists()
    assert sorted(os.listdir(tmp_path)) == ["img.png", "out", "shard.tar"]


def test_a_clashing_file_fails_its_image_only(tmp_path):
    Image.fromarray(_half_noise(64, 64)).save(tmp_path / "a.png")
    Image.fromarray(_half_noise(64, 64, seed=2)).save(tmp_path / "b.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a__x0_y0_s64.png").write_bytes(b"somebody else's file")
    code = main(["tiles", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-m", CLASSIC, "--size", "64", "--top",
                 "1", "--to", str(out), "-q", "--workers", "0"])
    assert code == 1
    rows = {os.path.basename(r["path"]): r for r in _rows(out / "tiles.csv")}
    assert "refused" in rows["a.png"]["error"] and rows["b.png"]["tile"]
    assert (out / "a__x0_y0_s64.png").read_bytes() == b"somebody else's file"


# --- the manifest and the CLI ---------------------------------------------------------------------------------

def _folder(tmp_path, n=4):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        Image.fromarray(_half_noise(160, 96, seed=i)).save(src / f"im{i}.png")
    return src


def test_error_rows_small_images_and_exit_codes(tmp_path, capsys):
    src = _folder(tmp_path, 2)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.fromarray(_half_noise(40, 40)).save(src / "small.png")
    out = tmp_path / "out"
    code = main(["tiles", str(src), "-m", CLASSIC, "--size", "64", "--top", "1", "--to", str(out), "-q",
                 "--workers", "0"])
    assert code == 1
    rows = {os.path.basename(r["path"]): r for r in _rows(out / "tiles.csv")}
    assert set(rows) == {"im0.png", "im1.png", "broken.jpg", "small.png"}
    assert rows["broken.jpg"]["error"] and not rows["broken.jpg"]["tile"]
    assert "smaller than a 64 px tile" in rows["small.png"]["error"]
    meta = json.loads((out / "tiles.csv.meta.json").read_text())
    assert meta["status"] == "finished" and meta["scored"] == 2 and meta["errors"] == 2
    assert meta["tiles"]["written"] == 2 and meta["identity"]["size"] == 64
    assert "2 of 4 inputs failed" in capsys.readouterr().err
    # all good: 0; an existing manifest: refused (2); nothing readable: 2; no --top/--min-score: 2
    assert main(["tiles", str(src / "im0.png"), "-m", CLASSIC, "--size", "64", "--top", "1", "--to",
                 str(tmp_path / "o2"), "-q", "--workers", "0"]) == 0
    assert main(["tiles", str(src / "im0.png"), "-m", CLASSIC, "--size", "64", "--top", "1", "--to",
                 str(tmp_path / "o2"), "-q", "--workers", "0"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["tiles", str(src / "broken.jpg"), "-m", CLASSIC, "--size", "64", "--top", "1", "--to",
                 str(tmp_path / "o3"), "-q", "--workers", "0"]) == 2
    assert main(["tiles", str(src), "-m", CLASSIC, "--to", str(tmp_path / "o4"), "-q"]) == 2
    assert "--top" in capsys.readouterr().err
    assert not (tmp_path / "o4").exists()


def test_min_score_keeps_a_row_for_an_image_without_tiles(tmp_path):
    Image.fromarray(np.full((64, 128, 3), 90, np.uint8)).save(tmp_path / "flat.png")
    Image.fromarray(_half_noise(128, 64)).save(tmp_path / "half.png")
    rows = pyica.tiles([str(tmp_path)], model=CLASSIC, size=64, min_score=1.0, device="cpu", num_workers=0)
    by = {}
    for r in rows:
        by.setdefault(os.path.basename(r.path), []).append(r)
    assert [(r.kept, r.tile, r.error) for r in by["flat.png"]] == [(0, None, None)]
    assert [r.x for r in by["half.png"]] == [64]


def test_resume_skips_done_images_and_redoes_a_torn_one(tmp_path):
    src = _folder(tmp_path, 4)
    out = tmp_path / "out"
    args = ["tiles", str(src), "-m", CLASSIC, "--size", "48", "--top", "3", "--to", str(out), "-q", "--workers", "0"]
    assert main(args) == 0
    reference = (out / "tiles.csv").read_text()
    # a run killed while writing the third image's rows: a finished part cut inside that image's rows
    lines = reference.splitlines(keepends=True)
    part = out / "tiles.csv.part"
    part.write_text("".join(lines[:1 + 3 * 2 + 1]))  # header, two images, one row of the third
    (out / "tiles.csv").unlink()
    meta = json.loads((out / "tiles.csv.meta.json").read_text())
    meta["status"] = "running"
    (out / "tiles.csv.meta.json").write_text(json.dumps(meta))
    assert main(args + ["--resume"]) == 0
    assert (out / "tiles.csv").read_text() == reference  # crops already there are the same bytes: accepted
    meta = json.loads((out / "tiles.csv.meta.json").read_text())
    assert meta["skipped_already_done"] == 2 and meta["scored"] == 2
    assert meta["tiles"]["already_present"] == 6 and meta["tiles"]["written"] == 0
    # another setup is refused on resume
    other = list(args)
    other[other.index("--top") + 1] = "2"
    assert main(other + ["--resume"]) == 2


def test_tiles_folder_inside_an_input_folder_is_left_out(tmp_path):
    src = _folder(tmp_path, 2)
    out = src / "tiles"
    assert main(["tiles", str(src), "-m", CLASSIC, "--size", "48", "--top", "2", "--to", str(out), "-q",
                 "--workers", "0"]) == 0
    assert main(["tiles", str(src), "-m", CLASSIC, "--size", "48", "--top", "2", "--to", str(out), "-q",
                 "--workers", "0", "-o", str(tmp_path / "again.csv")]) == 0
    assert {os.path.basename(r["path"]) for r in _rows(tmp_path / "again.csv")} == {"im0.png", "im1.png"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_manifest_formats(tmp_path, fmt):
    pytest.importorskip("pyarrow") if fmt == "parquet" else None
    src = _folder(tmp_path, 2)
    manifest = tmp_path / f"tiles.{fmt}"
    assert main(["tiles", str(src), "-m", CLASSIC, "--size", "48", "--top", "2", "--to", str(tmp_path / "out"),
                 "-o", str(manifest), "-q", "--workers", "0"]) == 0
    from pyica.writers import read_scores
    rows = read_scores(manifest)
    assert len(rows) == 4 and isinstance(rows[0]["x"], int) and isinstance(rows[0]["score"], float)
