"""Complexity maps: where in an image the complexity is, scored patch by patch with the same model.

An image is cut into overlapping square patches on a regular grid (:func:`patch_grid`); each patch
is scored by the model exactly as a whole image would be (:func:`complexity_map`), which gives a
``(rows, cols)`` grid of scores. :func:`overlay` draws the grid, bilinearly upsampled to the image
(:func:`upsample_map`), as a heat map over a greyscale copy of the image, and :func:`write_map`
saves the overlay (PNG) and the raw grid (``.npy``) atomically.

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
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .writers import replace_atomically

__all__ = [
    "MIN_PATCH",
    "patch_grid",
    "complexity_map",
    "upsample_map",
    "colormap",
    "overlay",
    "inputs_root",
    "map_paths",
    "write_map",
]

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
    stride = max(1, round(stride_fraction * side))
    xs, ys = _starts(width, side, stride), _starts(height, side, stride)
    boxes = [(x, y, x + side, y + side) for y in ys for x in xs]
    return boxes, (len(ys), len(xs))


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


def map_paths(out_dir: str | os.PathLike, image_path: str | os.PathLike,
              inputs_root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Where the map of ``image_path`` goes: ``(overlay .png, grid .npy)``.

    Naming rule, so that no two inputs share a map file:

    * an image under ``inputs_root`` keeps its path relative to it, mirrored under ``out_dir``, with
      its full file name (extension included, so ``x.jpg`` and ``x.png`` differ):
      ``ROOT/a/x.jpg`` -> ``OUT/a/x.jpg.map.png`` and ``OUT/a/x.jpg.map.npy``;
    * any other image (no root given, or outside it) goes flat into ``out_dir`` with the first 8 hex
      digits of the SHA-1 of its absolute path: ``OUT/x.jpg.1f0c3a9b.map.png``.

    Both rules are deterministic, so a rerun overwrites the same files.
    """
    image = Path(os.path.abspath(image_path))
    rel = None
    if inputs_root is not None:
        with contextlib.suppress(ValueError):
            rel = image.relative_to(os.path.abspath(inputs_root))
    if rel is None or not rel.name:
        digest = hashlib.sha1(str(image).encode("utf-8", "surrogateescape")).hexdigest()[:8]
        rel = Path(f"{image.name}.{digest}")
    base = Path(out_dir) / rel
    return base.with_name(base.name + ".map.png"), base.with_name(base.name + ".map.npy")


def write_map(out_dir: str | os.PathLike, image_path: str | os.PathLike, grid: np.ndarray,
              overlay_img: Image.Image, inputs_root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write the overlay PNG and the float32 grid ``.npy`` of ``image_path`` (names: :func:`map_paths`),
    each atomically (temporary file + ``os.replace``). Returns the two paths."""
    png, npy = map_paths(out_dir, image_path, inputs_root)
    replace_atomically(npy, lambda temp: np.save(temp, np.asarray(grid, dtype=np.float32), allow_pickle=False),
                       suffix=".npy")
    replace_atomically(png, lambda temp: overlay_img.save(temp, format="PNG"), suffix=".png")
    return png, npy
