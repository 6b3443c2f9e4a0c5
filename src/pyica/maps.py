"""Complexity maps: where in an image the complexity is, scored patch by patch with the same model.

An image is cut into overlapping square patches on a regular grid (:func:`patch_grid`); each patch
is scored by the model exactly as a whole image would be (:func:`complexity_map`), which gives a
``(rows, cols)`` grid of scores. :func:`overlay` draws the grid, bilinearly upsampled to the image
(:func:`upsample_map`), as a heat map over a greyscale copy of the image; :func:`render_map` adds a
colour bar (with its scale) and the image's score beside it, and :func:`write_map` saves the picture
(PNG) and the raw grid (``.npy``) atomically, under the names of :func:`map_paths`.

**Scale.** By default a map is coloured on a fixed scale, the model's score range (its registry entry
and card: 0..1 for the default model), so that the same colour means the same patch score in every
map of that model; values outside are clipped. A model with an open range (``score_range`` ``None`` or
an infinite bound, e.g. ``spatial_information``) has no fixed scale: its maps are scaled per image (the
map's own min..max), and the colour bar says so. ``value_range=None`` asks for per-image scaling.

**Where maps go.** Only under the maps folder: names are built by :func:`map_paths` from the image's
path relative to the inputs' common folder (never with ``..``), and :func:`write_map` refuses a target
whose folder resolves (through a symbolic link) outside the maps folder. Map files are pyica-named
(``*.map.png``, ``*.map.npy``) and :func:`write_map` replaces only files pyica wrote: a PNG without
pyica's text chunk (:data:`PNG_MARKER`), a ``.npy`` that is not a 2-D float32 array, a link or
anything not a regular file is refused (that map fails; the run goes on).

Because every registered model (classic measure or learned) scores patches through its own
``score_images``, all of them produce maps by this one code path. Map values are patch scores: the
same scale as whole-image scores, but a patch is a different image from the whole, so the mean of
a map need not equal the image's score.

**Native maps.** A model that computes a map itself (ICNet, :mod:`pyica.models.icnet`) has a
``native_map(image) -> (height, width)`` method; :func:`complexity_map` then returns that map, at
the image's own resolution, instead of scoring patches (the patch and stride fractions do not
apply). :func:`upsample_map` passes a grid that already has the image's size through unchanged, so
:func:`overlay` and :func:`write_map` treat both kinds alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from .loading import image_extensions
from .writers import replace_atomically

__all__ = [
    "MIN_PATCH",
    "square_grid",
    "patch_grid",
    "complexity_map",
    "PreparedMap",
    "MapInputs",
    "MapCollate",
    "map_inputs",
    "score_prepared",
    "upsample_map",
    "colormap",
    "overlay",
    "fixed_range",
    "render_map",
    "inputs_root",
    "map_stem",
    "map_paths",
    "mirrored_base",
    "check_inside",
    "write_map",
    "PNG_MARKER",
]

#: The PNG text chunk (key) that marks a map PNG as pyica's; :func:`write_map` replaces only such PNGs.
PNG_MARKER = "pyica-map"

#: Smallest patch side in pixels (unless the image itself is smaller).
MIN_PATCH = 32

Box = tuple[int, int, int, int]

# An inferno-like perceptual ramp (black -> purple -> red -> orange -> pale yellow), 11 anchors at
# t = 0, 0.1, ..., 1, close to matplotlib's "inferno"; linearly interpolated in between.
_ANCHORS = np.array([
    (0, 0, 4), (22, 11, 57), (66, 10, 104), (106, 23, 110), (147, 38, 103), (188, 55, 84),
    (221, 81, 58), (243, 120, 25), (252, 165, 10), (246, 215, 70), (252, 255, 164),
], dtype=np.float64)
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                 for c in range(3)], axis=1).round().astype(np.uint8)  # (256, 3)


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


def _starts(length: int, side: int, stride: int) -> list[int]:
    starts = list(range(0, length - side + 1, stride))
    if starts[-1] + side < length:
        starts.append(length - side)  # last patch flush with the border
    return starts


def square_grid(width: int, height: int, side: int, stride: int) -> tuple[list[Box], tuple[int, int]]:
    """Squares of ``side`` px every ``stride`` px covering a ``width`` x ``height`` image, and the grid shape
    ``(rows, cols)``: the last row and column are moved flush with the bottom/right border, so every pixel is
    covered and no square reaches outside. Boxes are ``(left, top, right, bottom)``, row-major. ``side`` must
    not exceed either image side (:func:`patch_grid` and :func:`pyica.tiling.tile_grid` decide what then)."""
    width, height, side, stride = int(width), int(height), int(side), int(stride)
    if not 1 <= side <= min(width, height):
        raise ValueError(f"a {side} px square does not fit a {width}x{height} image")
    if stride < 1:
        raise ValueError(f"stride must be at least 1 px, got {stride}")
    xs, ys = _starts(width, side, stride), _starts(height, side, stride)
    return [(x, y, x + side, y + side) for y in ys for x in xs], (len(ys), len(xs))


def patch_grid(width: int, height: int, patch_fraction: float = 0.25,
               stride_fraction: float = 0.5) -> tuple[list[Box], tuple[int, int]]:
    """Square patches covering a ``width`` x ``height`` image, and the grid shape ``(rows, cols)``.

    The patch side is ``patch_fraction`` of the shorter image side, at least :data:`MIN_PATCH` px and
    at most the shorter side. Patches start every ``stride = stride_fraction * side`` px (at least
    1 px); the last row and column are moved flush with the bottom/right border so the whole image
    is covered. Boxes are ``(left, top, right, bottom)`` (PIL crop convention), in row-major order.
    """
    patch_fraction = _check_fraction("patch_fraction", patch_fraction)
    stride_fraction = _check_fraction("stride_fraction", stride_fraction)
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"invalid image size {width}x{height}")
    short = min(width, height)
    side = min(short, max(MIN_PATCH, round(patch_fraction * short)))
    return square_grid(width, height, side, max(1, round(stride_fraction * side)))


def complexity_map(model, image: Image.Image, patch_fraction: float = 0.25, stride_fraction: float = 0.5,
                   batch_size: int = 32) -> np.ndarray:
    """Patch scores of ``image`` as a ``(rows, cols)`` float32 grid (layout of :func:`patch_grid`).

    Each patch is cropped from the RGB image and scored by ``model.score_images`` **as if it were a
    whole image**: it goes through the model's own preprocessing (a classic measure works on the
    crop at its native resolution, shrunk only beyond the measure's working scale; a learned model
    resizes the crop to its input size). So every registered model makes maps the same way.
    Patches are scored ``batch_size`` at a time.

    A model with a ``native_map`` method (see the module doc) gives its own map instead: a
    ``(height, width)`` float32 array at the image's resolution.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    native = getattr(model, "native_map", None)
    if callable(native):
        grid = np.asarray(native(image), dtype=np.float32)
        if grid.shape != (image.height, image.width):
            raise ValueError(f"native_map returned shape {grid.shape} for a {image.width}x{image.height} image")
        return grid
    boxes, shape = patch_grid(image.width, image.height, patch_fraction, stride_fraction)
    batch_size = max(1, int(batch_size))
    scores: list[float] = []
    for i in range(0, len(boxes), batch_size):
        crops = [image.crop(box) for box in boxes[i:i + batch_size]]
        scores.extend(model.score_images(crops).tolist())
    return np.asarray(scores, dtype=np.float32).reshape(shape)


@dataclass
class PreparedMap:
    """One image's map on its way from a DataLoader worker to the model and the writer.

    Made by :class:`MapInputs` in the worker: for patch maps, the patch ``boxes`` and grid ``shape``,
    each patch preprocessed by the model's transform (``patches``) and the image in greyscale (all the
    overlay needs of it); for a model with its own map (``native``), the RGB image. :func:`score_prepared`
    fills ``grid`` (and drops ``patches``); ``error`` says why this map failed (the score is unaffected).
    """

    image: Image.Image | None = None
    boxes: list[Box] | None = None
    shape: tuple[int, int] | None = None
    patches: list | None = None
    native: bool = False
    grid: np.ndarray | None = None
    error: str | None = None


@dataclass(frozen=True)
class MapInputs:
    """A model's transform, extended for maps (picklable: it runs in DataLoader workers).

    ``image -> (transform(image), PreparedMap)``: the score's item exactly as without maps, and the map's
    patches cropped (:func:`patch_grid`) and preprocessed by the same transform, as :func:`complexity_map`
    does, so that an image is decoded once and the CPU work of its map is done in the workers. A
    failure while preparing the map becomes the map's ``error`` and never costs the image its score.
    ``native``: the model computes its own map (module doc): the RGB image is passed on instead.
    """

    transform: Callable
    patch_fraction: float = 0.25
    stride_fraction: float = 0.5
    native: bool = False

    def __call__(self, image: Image.Image):
        item = self.transform(image)
        try:
            if image.mode != "RGB":
                image = image.convert("RGB")
            if self.native:
                prepared = PreparedMap(image=image, native=True)
            else:
                boxes, shape = patch_grid(image.width, image.height, self.patch_fraction, self.stride_fraction)
                patches = [self.transform(image.crop(box)) for box in boxes]
                prepared = PreparedMap(image=image.convert("L"), boxes=boxes, shape=shape, patches=patches)
        except Exception as err:  # noqa: BLE001 - this map fails, the score goes on
            prepared = PreparedMap(error=f"preparing the map failed ({type(err).__name__}: {err})")
        return item, prepared

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """What the model's transform asks to decode (``pyica.loading.load_image``), so that a score is the
        same with or without ``--maps``; the map's patches are cut from that image. Native maps: full size."""
        inner = getattr(self.transform, "decode_size", None)
        return None if self.native or inner is None else inner(width, height)


@dataclass(frozen=True)
class MapCollate:
    """Collates the score items with the model's rule; the :class:`PreparedMap` objects travel as a list."""

    collate: Callable

    def __call__(self, items):
        return self.collate([item for item, _ in items]), [prepared for _, prepared in items]


def map_inputs(model, patch_fraction: float = 0.25, stride_fraction: float = 0.5) -> tuple[MapInputs, MapCollate]:
    """The transform and collate that load an image once for both its score and its map (see
    :class:`MapInputs`); a model with a ``native_map`` method gets its own map (module doc)."""
    _check_fraction("patch_fraction", patch_fraction)
    _check_fraction("stride_fraction", stride_fraction)
    native = callable(getattr(model, "native_map", None))
    return (MapInputs(model.transform, float(patch_fraction), float(stride_fraction), native),
            MapCollate(model.collate))


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def score_prepared(model, prepared: Sequence[PreparedMap], batch_size: int = 32) -> None:
    """Fill the ``grid`` of each :class:`PreparedMap` (or its ``error``), in place.

    The patches of all the maps are scored together, ``batch_size`` at a time, through the model's
    collate and ``score_batch``: the same numbers as :func:`complexity_map` on each image (to float
    rounding of the batch composition). A batch that fails is retried map by map, so one bad map does
    not fail the others. Native maps go through :func:`complexity_map` one image at a time.
    """
    batch_size = max(1, int(batch_size))
    todo = [p for p in prepared if p.error is None and not p.native and p.patches is not None]
    for p in prepared:
        if p.error is None and p.native:
            try:
                p.grid = complexity_map(model, p.image)
            except Exception as err:  # noqa: BLE001 - one bad map must not stop the job
                p.error = _describe(err)
    if todo:
        items = [item for p in todo for item in p.patches]
        try:
            scores = np.concatenate([model.score_batch(model.collate(items[i:i + batch_size])).numpy()
                                     for i in range(0, len(items), batch_size)])
            if scores.shape != (len(items),):
                raise ValueError(f"{len(items)} patches gave {scores.shape[0]} scores")
        except Exception:  # noqa: BLE001 - find which map fails: score each on its own
            scores = None
        start = 0
        for p in todo:
            n = len(p.patches)
            try:
                if scores is not None:
                    values = scores[start:start + n]
                else:
                    values = np.concatenate([model.score_batch(model.collate(p.patches[i:i + batch_size])).numpy()
                                             for i in range(0, n, batch_size)])
                p.grid = np.asarray(values, dtype=np.float32).reshape(p.shape)
            except Exception as err:  # noqa: BLE001
                p.error = _describe(err)
            start += n
    for p in prepared:
        p.patches = None  # the memory goes as soon as the scores are in


def _interp_weights(n_out: int, centres: Sequence[float]) -> np.ndarray:
    """``(n_out, len(centres))`` linear-interpolation weights from grid centres to pixel centres."""
    pixels = np.arange(n_out) + 0.5
    eye = np.eye(len(centres))
    return np.stack([np.interp(pixels, centres, e) for e in eye], axis=1).astype(np.float32)


def upsample_map(grid: np.ndarray, width: int, height: int, boxes: Sequence[Box] | None = None) -> np.ndarray:
    """Bilinear upsampling of a ``(rows, cols)`` grid to a ``(height, width)`` float32 array.

    With ``boxes`` (from :func:`patch_grid`), each value sits at the centre of its patch; without,
    the grid is taken as ``rows`` x ``cols`` equal tiles with values at the tile centres. Beyond the
    outermost centres the border values are held (no extrapolation).

    A grid that already has the image's size (a model's native map) is returned as is, ``boxes``
    unused.
    """
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"grid must be a non-empty 2-D array, got shape {grid.shape}")
    if grid.shape == (int(height), int(width)):
        return grid.copy()
    rows, cols = grid.shape
    if boxes is not None:
        if len(boxes) != rows * cols:
            raise ValueError(f"{len(boxes)} boxes do not match a {rows}x{cols} grid")
        xs = [(b[0] + b[2]) / 2 for b in boxes[:cols]]
        ys = [(b[1] + b[3]) / 2 for b in boxes[::cols]]
    else:
        xs = (np.arange(cols) + 0.5) * width / cols
        ys = (np.arange(rows) + 0.5) * height / rows
    return _interp_weights(int(height), ys) @ grid @ _interp_weights(int(width), xs).T


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN counts as 0) -> uint8 RGB of the inferno-like ramp, shape ``(..., 3)``."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    return _LUT[np.rint(np.clip(v, 0.0, 1.0) * 255).astype(np.intp)]


def _normalise(values: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
    else:
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if not hi > lo:  # a constant map (or degenerate range): everything at the low end
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


def overlay(image: Image.Image, grid: np.ndarray, alpha: float = 0.5,
            value_range: tuple[float, float] | None = None, boxes: Sequence[Box] | None = None) -> Image.Image:
    """The image in greyscale blended with a heat map of ``grid``: an RGB image of the image's size.

    The grid is upsampled with :func:`upsample_map` (pass the ``boxes`` of :func:`patch_grid` to place
    values at patch centres) and normalised to [0, 1] by ``value_range`` when given (e.g. the model's
    ``score_range``; values outside are clipped), else by the grid's own min/max; a constant grid
    maps to the low end of the ramp. ``alpha`` is the heat map's weight (0 = just the grey image).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    width, height = image.size
    grid = np.asarray(grid, dtype=np.float32)
    heat = colormap(_normalise(upsample_map(grid, width, height, boxes), value_range))
    grey = image.convert("L").convert("RGB")
    return Image.blend(grey, Image.fromarray(heat, mode="RGB"), float(alpha))


def fixed_range(score_range) -> tuple[float, float] | None:
    """A model's ``score_range`` as a fixed colour scale ``(lo, hi)``, or ``None`` when the range is open
    (``None``, a non-finite bound, or ``hi <= lo``): such maps are scaled per image."""
    if score_range is None:
        return None
    try:
        lo, hi = (float(v) for v in score_range)
    except (TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and hi > lo else None


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def render_map(image: Image.Image, grid: np.ndarray, *, score: float | None = None,
               value_range: tuple[float, float] | None = None, boxes: Sequence[Box] | None = None,
               alpha: float = 0.5) -> Image.Image:
    """The map picture :func:`write_map` saves: the :func:`overlay` of ``grid`` at the image's size in
    the top-left corner, and to its right a panel with the colour bar (top = high), its scale labels and
    the image's ``score``, written above the bar and marked on it (a white line with a black edge).

    ``value_range``: the fixed scale (:func:`fixed_range` of the model's ``score_range``); ``None``: the
    map's own finite min..max (per image), labelled "per-image scale". Only Pillow draws (no matplotlib).
    The picture is at least 160 px high so that the bar and its labels stay legible for small images."""
    grid = np.asarray(grid, dtype=np.float32)
    if value_range is None:
        finite = grid[np.isfinite(grid)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scale_note = "per-image scale"
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
        scale_note = "fixed scale"
    over = overlay(image, grid, alpha=alpha, value_range=(lo, hi), boxes=boxes)
    height = max(over.height, 160)
    font_size = max(10, min(32, round(height / 24)))
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> int:
        left, _, right, _ = measure.textbbox((0, 0), text, font=font)
        return int(right - left)

    score_text = f"score {_fmt(score)}" if score is not None and math.isfinite(score) else "score -"
    labels = [_fmt(hi), _fmt((lo + hi) / 2), _fmt(lo)]
    pad, bar_w = max(4, font_size // 2), max(12, font_size)
    panel_w = pad + max(bar_w + pad + max(text_width(t) for t in labels),
                        text_width(score_text), text_width(scale_note)) + pad
    canvas = Image.new("RGB", (over.width + panel_w, height), (24, 24, 24))
    canvas.paste(over, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = over.width + pad
    line_h = font_size + pad // 2
    draw.text((x0, pad), score_text, fill=(255, 255, 255), font=font)
    top, bottom = pad + line_h + pad, height - pad - line_h - pad
    if bottom - top < 8:  # never: height >= 160
        bottom = top + 8
    ramp = colormap(np.linspace(1.0, 0.0, bottom - top, dtype=np.float32))  # (rows, 3), top = high
    bar = np.repeat(ramp[:, None, :], bar_w, axis=1)
    canvas.paste(Image.fromarray(bar, mode="RGB"), (x0, top))
    draw.rectangle((x0 - 1, top - 1, x0 + bar_w, bottom), outline=(200, 200, 200))
    for text, y in zip(labels, (top, (top + bottom) / 2, bottom)):
        _, t, _, b = draw.textbbox((0, 0), text, font=font)
        draw.text((x0 + bar_w + pad, y - (t + b) / 2), text, fill=(230, 230, 230), font=font)
    draw.text((x0, height - pad - line_h), scale_note, fill=(200, 200, 200), font=font)
    if score is not None and math.isfinite(score):
        t = 0.0 if not hi > lo else min(1.0, max(0.0, (float(score) - lo) / (hi - lo)))
        y = round(bottom - 1 - t * (bottom - top - 1))
        draw.rectangle((x0 - 3, y - 2, x0 + bar_w + 2, y + 2), fill=(0, 0, 0))
        draw.line((x0 - 2, y, x0 + bar_w + 1, y), fill=(255, 255, 255), width=1)
    return canvas


def inputs_root(inputs: Iterable[str | os.PathLike]) -> str | None:
    """The deepest folder containing every input (a folder counts as itself, a file or manifest as
    its folder): the root under which :func:`map_paths` mirrors image paths. ``None`` if there is none
    (e.g. inputs on different drives)."""
    folders = []
    for item in inputs:
        path = os.path.abspath(item)
        folders.append(path if os.path.isdir(path) else os.path.dirname(path))
    try:
        return os.path.commonpath(folders) if folders else None
    except ValueError:
        return None


_LISTINGS: dict[str, tuple[int, dict[str, int], frozenset[str]]] = {}


def _folder_names(folder: str) -> tuple[dict[str, int], frozenset[str]]:
    """(case-folded stem -> how many image files have it, case-folded full names) of the image files in
    ``folder`` (by the extensions Pillow opens, hidden files skipped); cached while its mtime stays."""
    mtime = os.stat(folder).st_mtime_ns
    cached = _LISTINGS.get(folder)
    if cached is not None and cached[0] == mtime:
        return cached[1], cached[2]
    extensions = image_extensions()
    stems: dict[str, int] = {}
    names = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if entry.name.startswith(".") or ext.lower() not in extensions:
                continue
            stems[stem.casefold()] = stems.get(stem.casefold(), 0) + 1
            names.add(entry.name.casefold())
    if len(_LISTINGS) > 4096:
        _LISTINGS.clear()
    _LISTINGS[folder] = (mtime, stems, frozenset(names))
    return stems, frozenset(names)


def map_stem(image_path: str | os.PathLike) -> str:
    """The name an image's map files start with: the file name without its extension (``x.jpg`` -> ``x``),
    or the whole file name (``x.jpg``) when that could clash: when another image file in the same folder
    has the same name before its extension (``x.jpg`` and ``x.png`` give ``x.jpg`` and ``x.png``), or
    when the stem is another image file's whole name (``x.jpg.png`` beside ``x.jpg``). Names compare
    without regard to case. The rule reads only the image's own folder, so every run, shard and rank
    names an image alike. A folder that cannot be listed gives the whole file name."""
    path = os.path.abspath(image_path)
    name = os.path.basename(path)
    stem, ext = os.path.splitext(name)
    if not ext or not stem:
        return name
    try:
        stems, names = _folder_names(os.path.dirname(path))
    except OSError:
        return name
    key, own = stem.casefold(), name.casefold()
    others = stems.get(key, 0) - (1 if own in names else 0)
    return name if others > 0 or key in names else stem


def map_paths(out_dir: str | os.PathLike, image_path: str | os.PathLike,
              inputs_root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Where the map of ``image_path`` goes: ``(picture .png, grid .npy)``.

    Naming rule, so that no two inputs share a map file (``NAME`` is :func:`map_stem`: ``x`` for
    ``x.jpg``, or ``x.jpg`` when another image in its folder is also ``x.*``):

    * an image under ``inputs_root`` keeps its folder relative to it, mirrored under ``out_dir``:
      ``ROOT/a/x.jpg`` -> ``OUT/a/x.map.png`` and ``OUT/a/x.map.npy``;
    * any other image (no root given, or outside it) goes flat into ``out_dir`` with the first 8 hex
      digits of the SHA-1 of its absolute path: ``OUT/x.1f0c3a9b.map.png``.

    The result is always inside ``out_dir`` (the relative part never holds ``..``). Both rules are
    deterministic, so a rerun replaces the same files.
    """
    base = mirrored_base(out_dir, image_path, inputs_root)
    return base.with_name(base.name + ".map.png"), base.with_name(base.name + ".map.npy")


def mirrored_base(out_dir: str | os.PathLike, image_path: str | os.PathLike,
                  inputs_root: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """The naming rule of :func:`map_paths` without the suffix: ``OUT/<folder relative to inputs_root>/NAME``,
    or ``OUT/NAME.<8 hex digits of the path's SHA-1>`` for an image outside the root. ``NAME`` is
    :func:`map_stem` unless ``name`` is given. Always inside ``out_dir`` (the relative part holds no ``..``)."""
    image = Path(os.path.abspath(image_path))
    name = map_stem(image) if name is None else name
    rel = None
    if inputs_root is not None:
        with contextlib.suppress(ValueError):
            rel = image.relative_to(os.path.abspath(inputs_root))
    if rel is None or not rel.name or ".." in rel.parts:
        digest = hashlib.sha1(str(image).encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return Path(out_dir) / f"{name}.{digest}"
    return Path(out_dir) / rel.parent / name


def check_inside(out_dir: str | os.PathLike, target: Path, what: str = "maps") -> None:
    """Refuse ``target`` unless its folder, with every link resolved, lies inside ``out_dir``'s (the deepest
    existing ancestor is checked, since the rest is created as folders)."""
    root = os.path.realpath(out_dir)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    real = os.path.realpath(folder)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise ValueError(f"{target}: refused: its folder resolves to {real}, outside the {what} folder {root}")


def _replaceable(path: Path) -> None:
    """Refuse to replace ``path`` unless it is absent or a map pyica wrote (module doc)."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_file():
        raise FileExistsError(f"{path}: refused: exists and is not a regular file pyica wrote")
    try:
        if path.suffix == ".png":
            with Image.open(path) as im:
                ours = PNG_MARKER in getattr(im, "text", {})
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            ours = array.dtype == np.float32 and array.ndim == 2
    except Exception:  # unreadable: not a map of ours
        ours = False
    if not ours:
        raise FileExistsError(f"{path}: refused: exists and is not a map pyica wrote (move it away)")


def write_map(out_dir: str | os.PathLike, image_path: str | os.PathLike, grid: np.ndarray,
              picture: Image.Image, inputs_root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write the map picture PNG (:func:`render_map`, marked with :data:`PNG_MARKER`) and the float32 grid
    ``.npy`` of ``image_path`` (names: :func:`map_paths`), each atomically (temporary file + ``os.replace``).
    Refused, before anything is written, when a target's folder resolves outside ``out_dir`` or a target
    exists and is not a map pyica wrote (module doc). Returns the two paths."""
    png, npy = map_paths(out_dir, image_path, inputs_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for target in (png, npy):
        check_inside(out_dir, target)
        _replaceable(target)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_MARKER, f"complexity map of {os.path.basename(os.fspath(image_path))}")
    replace_atomically(npy, lambda temp: np.save(temp, np.asarray(grid, dtype=np.float32), allow_pickle=False),
                       suffix=".npy")
    # compress_level 1: a third of the default level's time for somewhat larger files (the same pixels)
    replace_atomically(png, lambda temp: picture.save(temp, format="PNG", pnginfo=info, compress_level=1),
                       suffix=".png")
    return png, npy
