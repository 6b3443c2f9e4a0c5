"""Batch scoring: files -> loading (DataLoader workers) -> model -> one :class:`ScoreRecord` per input.

A file that cannot be loaded becomes a record with ``score=None`` and an ``error`` naming the file
and the cause; the job goes on. Records come out in input order.
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .loading import ImageLoadError, image_extensions, load_image
from .runtime import default_num_workers

__all__ = ["ScoreRecord", "iter_image_paths", "iter_batches", "score_paths", "progress_bar", "PRECISIONS"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Manifest columns that may hold the image path, in order of preference.
_PATH_COLUMNS = ("image", "path", "file", "filename", "name")


@dataclass
class ScoreRecord:
    """One output row: the input path, the model, its score (``None`` on error) and the error."""

    path: str
    model: str
    score: float | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _manifest_paths(csv_path: Path) -> Iterator[str]:
    """Image paths listed in a CSV manifest, resolved against the manifest's folder."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        column = next((c for c in _PATH_COLUMNS if c in columns), None)
        if column is None:
            raise ValueError(
                f"{csv_path}: no image path column (looked for {', '.join(_PATH_COLUMNS)}; found {', '.join(columns) or 'none'})"
            )
        for row in reader:
            value = (row.get(column) or "").strip()
            if value:
                p = Path(value)
                yield str(p if p.is_absolute() else csv_path.parent / p)


def iter_image_paths(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> Iterator[str]:
    """Expand ``inputs`` into image paths, streaming (nothing is listed in memory first).

    * a folder: its image files (by extension Pillow knows; hidden files skipped), sorted by name,
      descending into sub-folders when ``recursive``;
    * a ``.csv`` file: the paths in its image column (``image``/``path``/``file``/...);
    * any other path: taken as an image, whatever its extension (so a bad file is reported, not skipped).
    """
    extensions = image_extensions()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from _walk_folder(path, extensions, recursive)
        elif path.suffix.lower() == ".csv" and path.is_file():
            yield from _manifest_paths(path)
        else:
            yield str(path)


def _walk_folder(folder: Path, extensions: frozenset[str], recursive: bool) -> Iterator[str]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise ImageLoadError(str(folder), f"cannot list folder ({err.strerror or err})") from err
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=True):
            if recursive:
                yield from _walk_folder(Path(entry.path), extensions, recursive)
        elif os.path.splitext(entry.name)[1].lower() in extensions:
            yield entry.path


class _ImageFiles(Dataset):
    """Loads and preprocesses one file per item; failures travel as messages, not exceptions."""

    def __init__(self, paths: Sequence[str], transform: Callable, max_pixels: int | None):
        self.paths = paths
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            return index, self.transform(load_image(path, self.max_pixels)), None
        except ImageLoadError as err:
            return index, None, str(err)
        except Exception as err:  # a transform failing on one odd image must not stop the job
            return index, None, f"{path}: preprocessing failed ({type(err).__name__}: {err})"


class _CollateWithErrors:
    """Collates the good items with the model's rule and passes errors alongside."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, samples):
        good = [(i, item) for i, item, err in samples if err is None]
        errors = [(i, err) for i, item, err in samples if err is not None]
        batch = self.collate([item for _, item in good]) if good else None
        return [i for i, _ in good], batch, errors


def iter_batches(
    paths: Sequence[str],
    transform: Callable,
    collate: Callable,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    max_pixels: int | None = None,
    pin_memory: bool = False,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """Load and preprocess ``paths`` in DataLoader workers, in order.

    Yields ``(indices, batch, errors)`` per batch: the positions of the good images, their collated
    batch (``None`` when none loaded) and ``(position, message)`` for each file that failed.
    Shared by scoring and by feature extraction for training, so both read images the same way.
    """
    workers = default_num_workers() if num_workers is None else num_workers
    loader = DataLoader(
        _ImageFiles(paths, transform, max_pixels),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_CollateWithErrors(collate),
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    yield from loader


def score_paths(
    paths: Sequence[str],
    model,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    precision: str = "fp32",
    max_pixels: int | None = None,
    progress: bool = False,
    model_name: str | None = None,
) -> Iterator[ScoreRecord]:
    """Score ``paths`` with ``model`` (a :class:`~pyica.models.base.ComplexityModel`), yielding records in order."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    name = model_name or getattr(model, "name", type(model).__name__)
    device = model.device
    batches = iter_batches(paths, model.transform, model.collate, batch_size=batch_size, num_workers=num_workers,
                           max_pixels=max_pixels, pin_memory=device.type == "cuda")
    dtype = PRECISIONS[precision]
    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype)
        if dtype is not None and device.type in ("cuda", "cpu")
        else contextlib.nullcontext()
    )
    bar = progress_bar(len(paths), progress)
    try:
        for indices, batch, errors in batches:
            records: dict[int, ScoreRecord] = {i: ScoreRecord(paths[i], name, None, err) for i, err in errors}
            if indices:
                with autocast:
                    scores = model.score_batch(batch)
                for i, value in zip(indices, scores.tolist()):
                    records[i] = ScoreRecord(paths[i], name, float(value), None)
            for i in sorted(records):
                yield records[i]
            bar.update(len(records))
    finally:
        bar.close()


def progress_bar(total: int, enabled: bool):
    """A tqdm bar on stderr counting images (disabled, but still callable, when not ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=not enabled, dynamic_ncols=True, smoothing=0.1)
