"""Tiles (`pyica tiles`, `pyica.tiles`): the most complex crops of each image, scored by the same model, written
losslessly with a manifest. (Named ``tiling`` so that the module does not shadow the function ``pyica.tiles``.)

Every image is cut into square tiles of ``size`` px on a grid of ``stride`` px (:func:`tile_grid`; the last
row and column are moved flush with the bottom/right border, so there are no partial tiles and every pixel
is covered). Each tile is scored **as if it were a whole image**, through the model's own transform, the
tiles of several images together in batches: the patch-scoring pieces of :mod:`pyica.maps`
(:func:`~pyica.maps.square_grid`, :class:`~pyica.maps.PreparedMap`, :func:`~pyica.maps.score_prepared`),
so every registered model (classic measures included) makes tiles by one code path. Images are decoded once,
at full resolution (tiles are cut from full-resolution pixels, never from a reduced JPEG decode), in the
DataLoader workers, which also crop and preprocess the tiles.

**Which tiles are kept** (:func:`select_tiles`): candidates in score order (highest first), those below
``min_score`` dropped; then non-maximum suppression: a tile whose IoU with an already kept tile exceeds
``nms`` is dropped (default :data:`DEFAULT_NMS`; with ``stride == size`` only the border-flush tiles
overlap, so it drops only near-duplicates; ``nms=1`` keeps every tile); then the first ``top``.

**An image smaller than a tile** (either side below ``size``) gives no tile: it gets an error row saying so
(a tile is always ``size`` x ``size``; pick a smaller ``size`` for such images).

**Crops** are PNG files (lossless) of the pixels pyica scored: upright 8-bit sRGB, the loading rules of
:mod:`pyica.loading` (for an 8-bit RGB source without ICC profile or alpha, exactly the source's pixels).
A JPEG cannot be cropped losslessly as a JPEG by Pillow, so every crop is PNG, whatever the source.
Names: :func:`tile_path`. Nothing is written outside the tiles folder (the names never hold ``..``, and a
target whose folder resolves through a link outside it is refused), and no file is ever replaced: each
crop is written to a temporary file and linked into place (``os.link`` fails if the name exists). A name
that already holds exactly the bytes of the crop counts as written (a rerun or a resumed run after a kill
between crop and manifest row); a name holding anything else is refused, which fails that image (an
error row), and the run goes on. The originals are only read.

**Manifest**: one row per kept tile (``path`` the source, ``tile`` the crop's path, the box ``x, y, w, h``,
``score``, ``rank`` within the image from 1, ``kept`` tiles of that image, ``model``, ``error``); an image
that keeps no tile has one row with an empty ``tile`` and ``kept`` 0; an unreadable image one error row.
Written through :class:`pyica.writers.OutputFile` (lock, identity sidecar, ``OUT.part``, atomic finish,
``resume``: the images already in it are skipped; an image's rows are written together, and a resumed
manifest whose last image has fewer rows than its ``kept`` loses them and redoes that image).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from . import maps
from .archive_names import split_archive_member
from .inputs import count_inputs, iter_loaded
from .progress import progress_bar
from .scoring import inputs_to_score, precision_context
from .writers import OutputFile, current_umask, infer_format, iter_scores, text_safe, write_text_atomic

__all__ = ["COLUMNS", "DEFAULT_NMS", "TileRow", "tile_grid", "iou", "select_tiles", "tile_path", "write_new_png",
           "TileInputs", "TileRun", "tile_paths", "run_tiles"]

#: Manifest columns; the first is the source (what ``--resume`` matches).
COLUMNS = ("path", "tile", "x", "y", "w", "h", "score", "rank", "kept", "model", "error")
_INT_COLUMNS = ("x", "y", "w", "h", "rank", "kept")

#: Default IoU above which a tile overlapping a better-scored kept tile is dropped. Tiles half a tile
#: apart (``stride = size / 2``) have IoU 1/3, so they are kept apart; grid neighbours at ``stride = size``
#: (IoU 0) and diagonal neighbours are never dropped.
DEFAULT_NMS = 0.3

#: Images per loading batch: each carries its full-resolution pixels and all its preprocessed tiles.
TILE_IMAGES_PER_BATCH = 2

Box = tuple[int, int, int, int]


@dataclass
class TileRow:
    """One manifest row (see the module doc); ``x, y, w, h`` in the source's upright pixels."""

    path: str
    model: str
    tile: str | None = None
    x: int | None = None
    y: int | None = None
    w: int | None = None
    h: int | None = None
    score: float | None = None
    rank: int | None = None
    kept: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        return {c: row[c] for c in COLUMNS}


def tile_grid(width: int, height: int, size: int, stride: int | None = None) -> list[Box]:
    """Boxes ``(left, top, right, bottom)`` of the ``size`` x ``size`` tiles of a ``width`` x ``height`` image,
    row-major, every ``stride`` px (default ``size``: no overlap), the last row and column flush with the
    border. An image with a side below ``size`` has no tile: ``[]``."""
    size = int(size)
    stride = size if stride is None else int(stride)
    if size < 1 or stride < 1:
        raise ValueError(f"tile size and stride must be at least 1 px, got {size} and {stride}")
    if min(int(width), int(height)) < size:
        return []
    return maps.square_grid(width, height, size, stride)[0]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def select_tiles(boxes: Sequence[Box], scores: Sequence[float], *, top: int | None = None,
                 min_score: float | None = None, nms: float | None = DEFAULT_NMS) -> list[int]:
    """Indices of the kept tiles, best first (module doc): score order (ties: grid order), NaN and scores below
    ``min_score`` dropped, greedy non-maximum suppression at IoU ``nms`` (``None``: none), at most ``top``."""
    order = sorted((i for i, s in enumerate(scores) if np.isfinite(s) and (min_score is None or s >= min_score)),
                   key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if top is not None and len(kept) >= top:
            break
        if nms is not None and any(iou(boxes[i], boxes[j]) > nms for j in kept):
            continue
        kept.append(i)
    return kept


def tile_path(out_dir: str | os.PathLike, source: str, box: Box, inputs_root: str | None = None) -> Path:
    """Where the crop of ``box`` from ``source`` goes: ``OUT/<folder relative to the inputs' common folder>/
    NAME__x{X}_y{Y}_s{S}.png``, NAME the file name without extension (:func:`pyica.maps.map_stem`: with it when
    another image in the folder shares the stem). Sources outside the common folder go flat into ``OUT`` with
    8 hex digits of their path's SHA-1 (:func:`pyica.maps.mirrored_base`). An archive member ``A.tar:d/x.jpg``
    goes to ``OUT/<A.tar's place>/A.tar/d/x.jpg__x..png``: its member path with empty, ``.`` and ``..`` parts
    dropped, so no member name leads outside ``OUT``."""
    x, y, right, _ = box
    suffix = f"__x{x}_y{y}_s{right - x}.png"
    member = split_archive_member(source)
    if member is None:
        base = maps.mirrored_base(out_dir, source, inputs_root)
        return base.with_name(base.name + suffix)
    archive, name = member
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")] or ["member"]
    base = maps.mirrored_base(out_dir, archive, inputs_root, name=os.path.basename(archive))
    return base.joinpath(*parts[:-1], parts[-1] + suffix)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # compress_level 1: far faster than the default for somewhat larger files; the pixels are the same
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _same_file_content(target: Path, data: bytes) -> bool:
    if target.is_symlink() or not target.is_file():
        raise FileExistsError(f"{target}: refused: exists and is not a regular file")
    if target.stat().st_size != len(data) or target.read_bytes() != data:
        raise FileExistsError(f"{target}: refused: exists with other content (pyica never replaces a file; "
                              "use another --to folder)")
    return True


def write_new_png(out_dir: str | os.PathLike, target: Path, image: Image.Image) -> str:
    """Write ``image`` as the PNG ``target`` inside ``out_dir`` without ever replacing a file (module doc):
    ``"written"``, or ``"present"`` when ``target`` already holds these exact bytes; :class:`FileExistsError`
    when it holds anything else, :class:`ValueError` when its folder resolves outside ``out_dir``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    maps.check_inside(out_dir, target, "tiles")
    target.parent.mkdir(parents=True, exist_ok=True)
    maps.check_inside(out_dir, target, "tiles")  # again: a folder on the way may be a link made meanwhile
    data = _png_bytes(image)
    if os.path.lexists(target):
        _same_file_content(target, data)
        return "present"
    fd, temp = tempfile.mkstemp(prefix=f".{target.name[:80]}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temp, 0o666 & ~current_umask())
        try:
            os.link(temp, target)  # atomic, and fails when the name exists (a rename would replace it)
        except FileExistsError:
            _same_file_content(target, data)
            return "present"
        except OSError:  # a file system without hard links: exclusive create, then write
            with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
                f.write(data)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    return "written"


@dataclass(frozen=True)
class TileInputs:
    """A model's transform, extended for tiles (picklable: it runs in DataLoader workers).

    ``image -> (PreparedMap, pixels)``: the tiles of :func:`tile_grid`, each preprocessed by the model's
    transform as a whole image would be, in a :class:`pyica.maps.PreparedMap` (one row of ``len(boxes)``), and
    the full-resolution pixels as a ``(H, W, 3)`` uint8 tensor (a tensor travels from the workers through
    shared memory) for the crops. It declares no ``decode_size``: images are decoded at full resolution."""

    transform: Callable
    size: int
    stride: int

    def __call__(self, image: Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        boxes = tile_grid(image.width, image.height, self.size, self.stride)
        if not boxes:
            return maps.PreparedMap(error=f"image is {image.width}x{image.height}, smaller than a {self.size} px "
                                          "tile: no tile cut (use a smaller --size)"), None
        try:
            patches = [self.transform(image.crop(box)) for box in boxes]
        except Exception as err:  # noqa: BLE001 - this image fails, the run goes on
            return maps.PreparedMap(error=f"preparing the tiles failed ({type(err).__name__}: {err})"), None
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        return maps.PreparedMap(boxes=boxes, shape=(1, len(boxes)), patches=patches), pixels


def _as_list(items):
    return list(items)


def _image_rows(model_name: str, source: str, prepared, pixels, *, top, min_score, nms, out_dir, inputs_root,
                stats: dict) -> list[TileRow]:
    """The rows of one scored image; its kept crops written (when ``out_dir``) before its rows."""
    if prepared.error:
        return [TileRow(source, model_name, error=f"{source}: {prepared.error}")]
    scores = prepared.grid.reshape(-1)
    kept = select_tiles(prepared.boxes, scores.tolist(), top=top, min_score=min_score, nms=nms)
    if not kept:
        return [TileRow(source, model_name, kept=0)]
    rows = []
    image = Image.fromarray(pixels.numpy(), mode="RGB") if out_dir is not None else None
    for rank, i in enumerate(kept, 1):
        box = prepared.boxes[i]
        tile = None
        if out_dir is not None:
            target = tile_path(out_dir, source, box, inputs_root)
            stats[write_new_png(out_dir, target, image.crop(box))] += 1
            tile = str(target)
        rows.append(TileRow(source, model_name, tile, box[0], box[1], box[2] - box[0], box[3] - box[1],
                            float(scores[i]), rank, len(kept)))
    return rows


def tile_paths(paths: Iterable[str], model, *, size: int, stride: int | None = None, top: int | None = None,
               min_score: float | None = None, nms: float | None = DEFAULT_NMS, out_dir: str | os.PathLike | None = None,
               inputs_root: str | None = None, model_name: str | None = None, batch_size: int = 32,
               num_workers: int | None = None, precision: str = "fp32", max_pixels: int | None = None,
               progress: bool = False, total: int | None = None, stats: dict | None = None) -> Iterator[list[TileRow]]:
    """The rows of each input, one list per input, in input order (module doc). ``batch_size``: tiles per
    forward. ``stats`` counts crops ``written`` and already ``present``."""
    name = model_name or getattr(model, "name", type(model).__name__)
    stats = stats if stats is not None else {}
    stats.setdefault("written", 0)
    stats.setdefault("present", 0)
    stride = int(size) if stride is None else int(stride)
    tile_grid(size, size, size, stride)  # refuses a size or stride below 1 before any work
    context = precision_context(model, precision)
    batches = iter_loaded(paths, TileInputs(model.transform, int(size), stride), _as_list,
                          batch_size=TILE_IMAGES_PER_BATCH, num_workers=num_workers, max_pixels=max_pixels,
                          pin_memory=False, prefetch_factor=2)
    bar = progress_bar(total, progress)
    try:
        for indices, keys, batch, errors in batches:
            rows: dict[int, list[TileRow]] = {i: [TileRow(path, name, error=err)] for i, path, err in errors}
            if indices:
                with context:
                    maps.score_prepared(model, [p for p, _ in batch], batch_size)
                for i, source, (prepared, pixels) in zip(indices, keys, batch):
                    try:
                        rows[i] = _image_rows(name, source, prepared, pixels, top=top, min_score=min_score, nms=nms,
                                              out_dir=out_dir, inputs_root=inputs_root, stats=stats)
                    except (OSError, ValueError) as err:  # a crop that cannot be written fails its image only
                        rows[i] = [TileRow(source, name, error=f"{source}: writing a tile failed ({err})")]
            for i in sorted(rows):
                yield rows[i]
            bar.update(len(rows))
    finally:
        bar.close()
        batches.close()


# --- the manifest -------------------------------------------------------------------------------------------

class _ManifestRows:
    """Serialises :class:`TileRow` s as CSV/TSV/JSONL text (Parquet runs write JSONL rows to ``OUT.part``)."""

    def __init__(self, fmt: str, header: bool):
        self.fmt, self.header = fmt, header

    def text(self, rows: Iterable[TileRow | dict]) -> tuple[str, int]:
        buffer = io.StringIO()
        count = 0
        dicts = [r.as_dict() if isinstance(r, TileRow) else r for r in rows]
        if self.fmt in ("csv", "tsv"):
            writer = csv.writer(buffer, lineterminator="\n", delimiter="," if self.fmt == "csv" else "\t",
                                quoting=csv.QUOTE_MINIMAL)
            if self.header:
                writer.writerow(COLUMNS)
                self.header = False
            for row in dicts:
                values = ["" if row[c] is None else (repr(row[c]) if c == "score" else
                          text_safe(" ".join(str(row[c]).splitlines())) if c == "error" else text_safe(str(row[c])))
                          for c in COLUMNS]
                if any("\r" in v for v in values):  # csv quotes "\n" but not a lone "\r": quote the whole row
                    csv.writer(buffer, lineterminator="\n", delimiter="," if self.fmt == "csv" else "\t",
                               quoting=csv.QUOTE_ALL).writerow(values)
                else:
                    writer.writerow(values)
                count += 1
        else:
            for row in dicts:
                row = {c: (text_safe(row[c]) if isinstance(row[c], str) else row[c]) for c in COLUMNS}
                buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        return buffer.getvalue(), count


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _drop_incomplete_images(output: OutputFile) -> int:
    """After a resume's cut: drop the rows of images with fewer rows than their ``kept`` (a run stopped while
    writing them), so they are redone. Returns how many images were dropped."""
    counts: dict[str, list[int]] = {}
    for row in iter_scores(output.part, output.part_fmt):
        seen = counts.setdefault(str(row["path"]), [0, 1])
        seen[0] += 1
        kept = _as_int(row.get("kept"))
        seen[1] = max(seen[1], kept if kept else 1)
    torn = {path for path, (n, kept) in counts.items() if n < kept}
    if not torn:
        return 0
    rows = []
    for row in iter_scores(output.part, output.part_fmt):
        if str(row["path"]) not in torn:
            rows.append({c: (_as_int(row.get(c)) if c in _INT_COLUMNS else row.get(c) or None)
                         if c != "score" else row.get("score") for c in COLUMNS})
    text, _ = _ManifestRows(output.part_fmt, header=output.part_fmt != "jsonl").text(rows)
    output.stream.close()
    write_text_atomic(output.part, text)  # the lock is ours: nobody else reads or writes the part meanwhile
    output.stream = open(output.part, "a", encoding="utf-8", newline="")
    output.done -= torn
    output.has_header = output.part_fmt != "jsonl"
    return len(torn)


@dataclass
class TileRun:
    """What a tiles run did: counts (as ``pyica score`` reports them), the crops, and the rows when collected."""

    inputs: int = 0
    scored: int = 0
    errors: int = 0
    skipped: int = 0
    repeated: int = 0
    in_output: int = 0
    tiles: int = 0
    written: int = 0
    present: int = 0
    done_errors: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    rows: list[TileRow] | None = None


def _outside(out_dir: str | None, paths: Iterable[str], run: TileRun) -> Iterator[str]:
    """``paths`` without those inside the tiles folder (a run reading its own crops would never end)."""
    if out_dir is None:
        yield from paths
        return
    root = os.path.realpath(out_dir).rstrip(os.sep) + os.sep
    for path in paths:
        split = split_archive_member(path)
        real = os.path.realpath(split[0] if split else path)
        if real.startswith(root):
            run.in_output += 1
            continue
        yield path


def run_tiles(inputs: Sequence[str], model, *, size: int = 512, stride: int | None = None, top: int | None = None,
              min_score: float | None = None, nms: float | None = DEFAULT_NMS, out_dir: str | os.PathLike | None = None,
              output: str | os.PathLike | None = None, fmt: str | None = None, identity: dict | None = None,
              resume: bool = False, overwrite: bool = False, wait: bool = False, recursive: bool = True,
              model_name: str | None = None, batch_size: int = 32, num_workers: int | None = None,
              precision: str = "fp32", max_pixels: int | None = None, progress: bool = False, collect: bool = False,
              meta: Callable[[TileRun], dict] | None = None) -> TileRun:
    """Tile ``inputs`` (files, folders, manifests, archives) with ``model``: crops into ``out_dir`` (none when
    ``None``), rows into the manifest ``output`` (none when ``None``; resumable), the rows themselves in the
    result when ``collect``. ``meta(run)``: the sidecar's fields at the end."""
    if top is not None and top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    if nms is not None and not 0.0 <= nms <= 1.0:
        raise ValueError(f"nms must be an IoU in [0, 1], got {nms}")
    out_dir = os.path.abspath(out_dir) if out_dir is not None else None  # tile paths absolute, as sources are
    name = model_name or getattr(model, "name", type(model).__name__)
    run = TileRun(rows=[] if collect else None)
    t0 = time.perf_counter()
    writer = None
    if output is not None:
        fmt = infer_format(output, fmt)
        reads = [p for p in inputs if os.path.isfile(p)]
        writer = OutputFile(output, fmt, identity={**(identity or {}), "model": name}, resume=resume,
                            overwrite=overwrite, reads=reads, wait=wait, model=name, columns=COLUMNS,
                            column_types={c: "int64" for c in _INT_COLUMNS})
    finished = False
    try:
        if writer is not None and resume:
            _drop_incomplete_images(writer)
        done = writer.done if writer is not None else set()
        if writer is not None:
            run.done_errors = writer.done_errors
        serialise = _ManifestRows(writer.part_fmt, not writer.has_header) if writer is not None else None
        counts = {"inputs": 0, "skipped": 0, "repeated": 0}
        paths = _outside(out_dir, inputs_to_score(inputs, recursive=recursive, done=done, counts=counts), run)
        total = None
        if progress:
            listed = count_inputs(inputs, recursive=recursive)
            total = None if listed is None else max(0, listed - len(done))
        stats = {"written": 0, "present": 0}
        root = maps.inputs_root(inputs)
        for rows in tile_paths(paths, model, size=size, stride=stride, top=top, min_score=min_score, nms=nms,
                               out_dir=out_dir, inputs_root=root, model_name=name, batch_size=batch_size,
                               num_workers=num_workers, precision=precision, max_pixels=max_pixels,
                               progress=progress, total=total, stats=stats):
            if rows[0].error:
                run.errors += 1
                run.first_error = run.first_error or rows[0].error
            else:
                run.scored += 1
                run.tiles += sum(r.tile is not None or r.rank is not None for r in rows)
            if writer is not None:
                writer.write(*serialise.text(rows))  # an image's rows in one write (see _drop_incomplete_images)
            if collect:
                run.rows.extend(rows)
        run.inputs, run.skipped, run.repeated = counts["inputs"] - run.in_output, counts["skipped"], counts["repeated"]
        run.written, run.present = stats["written"], stats["present"]
        run.seconds = time.perf_counter() - t0
        if writer is not None:
            writer.finish(meta(run) if meta else None)
        finished = True
    finally:
        if writer is not None and not finished:
            writer.abort()
    return run
