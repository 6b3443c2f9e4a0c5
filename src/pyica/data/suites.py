"""Evaluation suites whose human order is known: for selecting models by how they generalise.

SAVOIAS is the only labelled dataset here, and its categories are all photographs, paintings or charts.
A model that is good on it may still order line drawings, binary patterns or single objects badly. Two
kinds of suite probe that without new labels:

**Shifted copies** of a labelled dataset (:func:`shifted_copy`, :func:`shifted_copies`): every image
re-rendered in another domain (:data:`SHIFTS`: ``greyscale``, ``edges`` (line art: dark Canny edges on
white), ``binarised`` (Otsu threshold of the luma), ``downscaled`` (longest side 64 px), ``posterised``
(2 bits per channel), ``jpeg_q10``). The human order is taken to be the original's, so the copies keep
its scores, categories and duplicate groups.

**Constructed-order suites** (:func:`make_suite`, :data:`SUITES`), synthetic and deterministic from a
seed: ``groups`` groups of ``levels`` images each, where level ``k + 1`` is more complex than level ``k``
by construction (score = level). The dataset's ``categories`` are the group ids, so the per-category
SRCC is the within-group rank agreement and the category mean summarises the suite:

* ``grid_patterns``: black/white grids; even groups get finer cells with the level (2 to 64 cells a
  side), odd groups a 16x16 grid with more black cells (up to half of them);
* ``masked_patterns``: one fine random grid per group, all but ``(k + 1) / levels`` of it (from one side)
  hidden under a flat grey region;
* ``strokes``: black random curves on white, nested: level ``k`` draws the first ``2**k - 1`` strokes
  of the group (level 0 is blank);
* ``pasted_objects``: a background with the first ``0, 1, 2, 4, 8, ...`` of the group's objects
  (disks, boxes, triangles, filled with flat colour or with a photo crop) pasted on it, nested;
* ``degraded_photos``: one photo per group, the top level the photo itself, lower levels blurred (even
  groups) or reduced to fewer colours (odd groups), more strongly the lower the level.

Photos (``pasted_objects``, ``degraded_photos``) are scikit-image's bundled samples when scikit-image is
installed (:func:`sample_photos`), else synthetic pictures; pass ``photos`` to choose.

Files go to a cache folder outside the repository (:func:`cache_root`: ``$PYICA_SUITES_CACHE``, else
``~/.cache/pyica/suites``), are written atomically and are reused when present, so building a suite a
second time reads nothing but the folder listing. Derived images of a research-only dataset (SAVOIAS)
must stay out of the repository: a cache folder inside the pyica checkout is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from ..writers import replace_atomically
from .dataset import ComplexityDataset

__all__ = ["SHIFTS", "DEFAULT_SHIFTS", "SUITES", "cache_root", "apply_shift", "shifted_copy", "shifted_copies",
           "make_suite", "make_suites", "sample_photos", "otsu_threshold"]

#: bump when a generator or shift changes its pixels, so stale cached files are not reused
SUITES_VERSION = 1
DOWNSCALED_SIDE = 64
_REPO = Path(__file__).resolve().parents[3]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$PYICA_SUITES_CACHE``, else ``~/.cache/pyica/suites``; never inside the checkout."""
    root = Path(cache_dir or os.environ.get("PYICA_SUITES_CACHE") or Path.home() / ".cache" / "pyica" / "suites")
    root = root.expanduser().resolve()
    if (_REPO / "pyproject.toml").is_file() and root.is_relative_to(_REPO):
        raise ValueError(f"{root}: suite images must not be written inside the repository ({_REPO})")
    return root


def _save(image: Image.Image, path: Path, **options) -> None:
    """Write ``image`` to ``path`` atomically (the format from the extension)."""
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    replace_atomically(path, lambda temp: image.save(temp, format=fmt, **options), suffix=path.suffix)


# --- shifted copies -------------------------------------------------------------------------------------------


def otsu_threshold(luma: np.ndarray) -> float:
    """Otsu's threshold of a uint8 image: the level that maximises the between-class variance."""
    hist = np.bincount(np.asarray(luma, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256)
    weight = np.cumsum(hist)
    total = weight[-1]
    mean = np.cumsum(hist * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * weight / total - mean) ** 2 / (weight * (total - weight))
    between[~np.isfinite(between)] = -1
    return float(np.argmax(between)) + 0.5


def _greyscale(image: Image.Image) -> Image.Image:
    return image.convert("L")


def _edges(image: Image.Image) -> Image.Image:
    from ..models.classic import canny_edges

    edges = canny_edges(np.asarray(image.convert("L"), dtype=np.float32))
    return Image.fromarray(np.where(edges, 0, 255).astype(np.uint8))


def _binarised(image: Image.Image) -> Image.Image:
    luma = np.asarray(image.convert("L"))
    return Image.fromarray(np.where(luma > otsu_threshold(luma), 255, 0).astype(np.uint8))


def _downscaled(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    scale = DOWNSCALED_SIDE / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BOX)


def _posterised(image: Image.Image) -> Image.Image:
    return ImageOps.posterize(image.convert("RGB"), 2)


def _jpeg_q10(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=10)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


#: shift name -> (image -> shifted image); all keep the human order of the original by assumption
SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "greyscale": _greyscale, "edges": _edges, "binarised": _binarised, "downscaled": _downscaled,
    "posterised": _posterised, "jpeg_q10": _jpeg_q10}
DEFAULT_SHIFTS = ("greyscale", "edges", "binarised", "downscaled")


def apply_shift(image: Image.Image, shift: str) -> Image.Image:
    """``image`` rendered in the domain ``shift`` (one of :data:`SHIFTS`)."""
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, not {shift!r}")
    return SHIFTS[shift](ImageOps.exif_transpose(image))


def _copy_name(ds: ComplexityDataset, i: int) -> Path:
    """Where image ``i``'s copy goes inside a shift's folder: its relative path (absolute paths get a
    hashed folder), as PNG (lossless, so the shift is all that changed)."""
    path = Path(ds.paths[i])
    if path.is_absolute():
        path = Path(hashlib.sha1(str(path.parent).encode()).hexdigest()[:12]) / path.name
    return path.with_suffix(".png")


def shifted_copy(ds: ComplexityDataset, shift: str, cache_dir: str | os.PathLike | None = None) -> ComplexityDataset:
    """``ds`` with every image replaced by its ``shift``-ed copy, same scores, categories, groups and splits.

    Copies are written once to ``<cache>/<ds.name>/<shift>-v<version>/`` (see :func:`cache_root`) and
    reused while newer than their source. Images that cannot be read keep their path in the copy
    (absolute, to the original), so the scorer reports the same load error.
    """
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, not {shift!r}")
    folder = cache_root(cache_dir) / ds.name / f"{shift}-v{SUITES_VERSION}"
    paths = []
    for i in range(len(ds)):
        source, rel = ds.full_path(i), _copy_name(ds, i)
        target = folder / rel
        try:
            if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
                with Image.open(source) as image:
                    _save(apply_shift(image, shift), target)
        except (OSError, ValueError, Image.DecompressionBombError):
            paths.append(str(source.resolve()))
            continue
        paths.append(rel.as_posix())
    return ComplexityDataset(name=f"{ds.name}.{shift}", root=folder, paths=np.array(paths, dtype=str),
                             scores=ds.scores.copy(), categories=ds.categories.copy(), groups=ds.groups.copy(),
                             splits={k: v.copy() for k, v in ds.splits.items()},
                             per_category_scale=ds.per_category_scale, score_scale=ds.score_scale)


def shifted_copies(ds: ComplexityDataset, shifts: Sequence[str] = DEFAULT_SHIFTS,
                   cache_dir: str | os.PathLike | None = None) -> dict[str, ComplexityDataset]:
    """``{shift: shifted_copy(ds, shift)}`` for every shift."""
    return {shift: shifted_copy(ds, shift, cache_dir) for shift in shifts}


# --- constructed-order suites ---------------------------------------------------------------------------------


def sample_photos(size: int = 256) -> list[np.ndarray]:
    """scikit-image's bundled colour and grey photos as uint8 RGB arrays cropped square at ``size``,
    or ``[]`` when scikit-image is not installed."""
    try:
        from skimage import data
    except ImportError:
        return []
    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "camera", "coins", "moon", "clock", "gravel", "brick", "retina", "stereo_motorcycle"):
        try:
            image = getattr(data, name)()
        except Exception:  # a sample that needs a download (none of these should) is left out
            continue
        image = image[0] if isinstance(image, tuple) else image
        photos.append(np.asarray(ImageOps.fit(Image.fromarray(image).convert("RGB"), (size, size))))
    return photos


def _synthetic_photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """A stand-in photo: a smooth colour gradient, many soft-edged shapes and some grain."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([rng.uniform(40, 215) + rng.uniform(-60, 60) * (x * c + y * (1 - c))
                     for c in rng.uniform(0, 1, 3)], -1)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0 = rng.uniform(-0.1, 1, 2) * size
        w, h = rng.uniform(0.03, 0.3, 2) * size
        draw.ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1))
    noise = rng.normal(0, 6, (size, size, 3))
    return np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


def _grid(cells: np.ndarray, size: int) -> Image.Image:
    """A boolean ``(n, n)`` cell array as a black (True) on white image ``size`` px square."""
    return Image.fromarray(np.where(cells, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)


def _grid_patterns(rng, levels, size, group, photos):
    if group % 2 == 0:  # finer cells with the level
        sides = [2 ** (k + 1) for k in range(levels)]
        return [_grid(rng.random((n, n)) < 0.5, size) for n in sides]
    n = 16  # the same grid, more black cells with the level (nested, up to half of the cells)
    order = rng.permutation(n * n)
    counts = [round(n * n * 0.5 * (k + 1) / levels) for k in range(levels)]
    return [_grid(np.isin(np.arange(n * n), order[:c]).reshape(n, n), size) for c in counts]


def _masked_patterns(rng, levels, size, group, photos):
    cells = _grid(rng.random((32, 32)) < 0.5, size)
    grey = int(rng.integers(64, 192))
    out = []
    for k in range(levels):
        image = cells.copy()
        hidden = round(size * (1 - (k + 1) / levels))
        if hidden:
            box = [[0, 0, hidden - 1, size - 1], [0, 0, size - 1, hidden - 1],
                   [size - hidden, 0, size - 1, size - 1], [0, size - hidden, size - 1, size - 1]][group % 4]
            ImageDraw.Draw(image).rectangle(box, fill=grey)
        out.append(image)
    return out


def _stroke(rng, size) -> list[tuple[float, float]]:
    """Points of a random quadratic Bezier curve across the canvas."""
    p0, p1, p2 = (rng.uniform(0.05, 0.95, 2) * size for _ in range(3))
    t = np.linspace(0, 1, 40)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    return [tuple(p) for p in points]


def _strokes(rng, levels, size, group, photos):
    total = 2 ** (levels - 1) - 1
    strokes = [(_stroke(rng, size), int(rng.integers(2, 5))) for _ in range(total)]
    out = []
    for k in range(levels):
        image = Image.new("L", (size, size), 255)
        draw = ImageDraw.Draw(image)
        for points, width in strokes[:2 ** k - 1]:
            draw.line(points, fill=0, width=width, joint="curve")
        out.append(image)
    return out


def _object_counts(levels: int) -> list[int]:
    return [0] + [2 ** (k - 1) for k in range(1, levels)]


def _pasted_objects(rng, levels, size, group, photos):
    y, x = np.mgrid[0:size, 0:size] / size
    top, bottom = rng.integers(60, 230, (2, 3))
    background = Image.fromarray((top + (bottom - top) * (0.6 * y + 0.4 * x)[..., None]).astype(np.uint8))
    objects = []
    for _ in range(_object_counts(levels)[-1]):
        w, h = (rng.uniform(0.12, 0.3, 2) * size).astype(int)
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        mask = Image.new("L", (w, h), 0)
        shape = int(rng.integers(3))
        draw = ImageDraw.Draw(mask)
        if shape == 0:
            draw.ellipse([0, 0, w - 1, h - 1], fill=255)
        elif shape == 1:
            draw.rectangle([0, 0, w - 1, h - 1], fill=255)
        else:
            draw.polygon([(w / 2, 0), (w - 1, h - 1), (0, h - 1)], fill=255)
        if photos and rng.random() < 0.5:
            photo = photos[int(rng.integers(len(photos)))]
            px, py = int(rng.integers(0, photo.shape[1] - w)), int(rng.integers(0, photo.shape[0] - h))
            fill = Image.fromarray(photo[py:py + h, px:px + w])
        else:
            fill = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        objects.append((fill, mask, (x0, y0)))
    out = []
    for count in _object_counts(levels):
        image = background.copy()
        for fill, mask, corner in objects[:count]:
            image.paste(fill, corner, mask)
        out.append(image)
    return out


def _degraded_photos(rng, levels, size, group, photos):
    photo = Image.fromarray(photos[group % len(photos)] if photos else _synthetic_photo(rng, size))
    out = []
    for k in range(levels):
        strength = levels - 1 - k  # 0 at the top level: the photo itself
        if strength == 0:
            out.append(photo)
        elif group % 2 == 0:
            out.append(photo.filter(ImageFilter.GaussianBlur(2 ** (strength - 1))))
        else:
            out.append(photo.quantize(min(256, 2 ** (k + 1))).convert("RGB"))  # 2, 4, 8, ... colours
    return out


#: suite name -> generator ``(rng, levels, size, group, photos) -> [image of level 0, 1, ...]``
SUITES: dict[str, Callable] = {"grid_patterns": _grid_patterns, "masked_patterns": _masked_patterns,
                               "strokes": _strokes, "pasted_objects": _pasted_objects,
                               "degraded_photos": _degraded_photos}


def make_suite(name: str, *, groups: int = 8, levels: int = 6, size: int = 256, seed: int = 0,
               photos: Sequence[np.ndarray] | None = None,
               cache_dir: str | os.PathLike | None = None) -> ComplexityDataset:
    """The constructed-order suite ``name`` (one of :data:`SUITES`) as a labelled dataset.

    ``groups`` groups (category ``g00``, ``g01``, ...) of ``levels`` images of ``size`` px each, score =
    level (higher = more complex by construction). Deterministic in (name, groups, levels, size, seed,
    photos): group ``g`` draws from ``numpy.random.default_rng([seed, g])``. ``photos`` (uint8 RGB arrays
    of at least ``size`` px a side) default to :func:`sample_photos`; ``[]`` means synthetic ones.
    Images are PNG files under ``<cache>/constructed/<name>-...`` (see :func:`cache_root`), reused when present.
    """
    if name not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}, not {name!r}")
    if levels < 2 or groups < 1:
        raise ValueError("a suite needs at least 1 group of at least 2 levels")
    photos = sample_photos(size) if photos is None else list(photos)
    tag = hashlib.sha1(b"".join(np.ascontiguousarray(p).tobytes() for p in photos)).hexdigest()[:8] if photos else "synthetic"
    folder = (cache_root(cache_dir) / "constructed"
              / f"{name}-v{SUITES_VERSION}-seed{seed}-{groups}x{levels}-{size}px-{tag}")
    paths, scores, categories = [], [], []
    for g in range(groups):
        files = [folder / f"g{g:02d}" / f"level{k}.png" for k in range(levels)]
        if not all(f.exists() for f in files):
            images = SUITES[name](np.random.default_rng([seed, g]), levels, size, g, photos)
            for image, file in zip(images, files):
                _save(image, file)
        paths += [f.relative_to(folder).as_posix() for f in files]
        scores += list(range(levels))
        categories += [f"g{g:02d}"] * levels
    return ComplexityDataset(name=f"suite_{name}", root=folder, paths=np.array(paths), scores=np.array(scores, float),
                             categories=np.array(categories), groups=np.array([""] * len(paths)),
                             per_category_scale=True, score_scale=(0.0, float(levels - 1)))


def make_suites(names: Sequence[str] = tuple(SUITES), **options) -> dict[str, ComplexityDataset]:
    """``{name: make_suite(name, **options)}``; the photos are loaded once for all of them."""
    if options.get("photos") is None:
        options["photos"] = sample_photos(options.get("size", 256))
    return {name: make_suite(name, **options) for name in names}
