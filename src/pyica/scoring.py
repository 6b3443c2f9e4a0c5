"""Batch scoring: files -> loading (DataLoader workers) -> model -> one :class:`ScoreRecord` per input.

A file that cannot be loaded becomes a record with ``score=None`` and an ``error`` naming the file
and the cause; the job goes on. Records come out in input order.

Everything streams: :func:`pyica.inputs.iter_image_paths` walks folders, reads CSV manifests and
indexes tar shards lazily, and :func:`score_paths` accepts any iterable of paths (a list or a
generator), loaded by :func:`pyica.inputs.iter_loaded` (see :mod:`pyica.inputs` for how the
DataLoader workers pull them, so that memory does not grow with the number of inputs).

Members of WebDataset-style ``.tar`` shards are named ``SHARD.tar:MEMBER`` (the shard path as given,
a colon, the member's name inside the tar, e.g. ``shards/x-000.tar:0001/img.jpg``); that name is the
``path`` of their output rows and what ``--resume`` matches.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from .inputs import iter_loaded
from .progress import progress_bar

__all__ = ["ScoreRecord", "score_paths", "inputs_to_score", "score_paths_with_maps", "MapTimes", "MAP_IMAGES_PER_BATCH", "PRECISIONS", "precision_context", "parse_shard", "rank_output_path"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ScoreRecord:
    """One output row: the input path, the model, its score (``None`` on error) and the error."""

    path: str
    model: str
    score: float | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_paths(
    paths: Iterable[str],
    model,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    precision: str = "fp32",
    max_pixels: int | None = None,
    progress: bool = False,
    model_name: str | None = None,
    total: int | None = None,
) -> Iterator[ScoreRecord]:
    """Score ``paths`` with ``model`` (a :class:`~pyica.models.base.ComplexityModel`), yielding records in order.

    ``paths`` may be a sequence or any iterable (a generator is consumed lazily, so memory does not
    grow with its length); the progress bar's total is ``total``, else ``len(paths)`` when it has one.
    """
    with contextlib.closing(_scored(paths, model, batch_size=batch_size, num_workers=num_workers, precision=precision,
                                    max_pixels=max_pixels, progress=progress, model_name=model_name,
                                    total=total)) as scored:
        for record, _ in scored:
            yield record


#: Images per loading batch when maps are made: each carries its preprocessed patches (about 50-80 of
#: them at the model's input size), so batches stay small and workers prefetch less.
MAP_IMAGES_PER_BATCH = 8


@dataclass
class MapTimes:
    """Seconds the main process spent on patch forwards (:func:`score_paths_with_maps`)."""

    forward: float = 0.0


def score_paths_with_maps(
    paths: Iterable[str],
    model,
    *,
    patch_fraction: float = 0.25,
    stride_fraction: float = 0.5,
    batch_size: int = 32,
    map_batch_size: int | None = None,
    num_workers: int | None = None,
    precision: str = "fp32",
    max_pixels: int | None = None,
    progress: bool = False,
    model_name: str | None = None,
    total: int | None = None,
    times: MapTimes | None = None,
) -> Iterator[tuple[ScoreRecord, Any]]:
    """:func:`score_paths` that also makes each image's complexity map from the same decoded image:
    yields ``(record, prepared)`` in input order, ``prepared`` a :class:`pyica.maps.PreparedMap` with its
    ``grid`` (or its ``error``), ``None`` for an input that failed to load.

    The DataLoader workers crop and preprocess the patches (:class:`pyica.maps.MapInputs`) and the patches
    of all the images of a loading batch (at most :data:`MAP_IMAGES_PER_BATCH`) are scored together,
    ``map_batch_size`` (default ``batch_size``) at a time, in fp32 whatever ``precision`` (as
    :func:`pyica.maps.complexity_map` does); the grids equal that function's to float rounding.
    ``times``: accumulates the patch-forward seconds (the scores' own time is the rest).
    """
    from . import maps

    transform, collate = maps.map_inputs(model, patch_fraction, stride_fraction)
    map_batch = map_batch_size or batch_size

    def after(prepared_list):
        t = time.perf_counter()
        maps.score_prepared(model, prepared_list, map_batch)
        if times is not None:
            times.forward += time.perf_counter() - t

    yield from _scored(paths, model, batch_size=min(batch_size, MAP_IMAGES_PER_BATCH), num_workers=num_workers,
                       precision=precision, max_pixels=max_pixels, progress=progress, model_name=model_name,
                       total=total, transform=transform, collate=collate, after=after, prefetch_factor=2)


def precision_context(model, precision: str):
    """The autocast context that runs ``model``'s forwards at ``precision`` (a key of :data:`PRECISIONS`;
    fp32, and devices autocast does not serve, run as they are); a bad value is a :class:`ValueError`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    dtype, device = PRECISIONS[precision], model.device
    if dtype is None or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _scored(paths, model, *, batch_size, num_workers, precision, max_pixels, progress, model_name, total,
            transform=None, collate=None, after=None, prefetch_factor=4) -> Iterator[tuple[ScoreRecord, Any]]:
    """``(record, extra)`` in input order; with ``after``, the collated batch is ``(scores' batch, extras)``
    and ``after(extras)`` runs before the batch's records are yielded (extras of failed inputs: ``None``)."""
    autocast = precision_context(model, precision)
    name = model_name or getattr(model, "name", type(model).__name__)
    device = model.device
    batches = iter_loaded(paths, transform or model.transform, collate or model.collate, batch_size=batch_size,
                          num_workers=num_workers, max_pixels=max_pixels, pin_memory=device.type == "cuda",
                          prefetch_factor=prefetch_factor)
    if total is None and hasattr(paths, "__len__"):
        total = len(paths)
    bar = progress_bar(total, progress)
    try:
        for indices, keys, batch, errors in batches:
            records: dict[int, ScoreRecord] = {i: ScoreRecord(path, name, None, err) for i, path, err in errors}
            extras: dict[int, Any] = {}
            if indices:
                if after is not None:
                    batch, extra = batch
                    extras = dict(zip(indices, extra))
                with autocast:
                    scores = model.score_batch(batch)
                for i, path, value in zip(indices, keys, scores.tolist()):
                    records[i] = ScoreRecord(path, name, float(value), None)
                if after is not None:
                    after(list(extras.values()))
            for i in sorted(records):
                yield records[i], extras.get(i)
            bar.update(len(records))
    finally:
        bar.close()
        batches.close()


def inputs_to_score(inputs, *, recursive: bool = True, shard: tuple[int, int] = (0, 1), rank: int = 0,
                    world: int = 1, done: set[str] = frozenset(), counts: dict[str, int] | None = None) -> Iterator[str]:
    """The image paths of ``inputs`` this run scores, streamed: positions p with p % N == I (``shard``
    ``(I, N)``), then every ``world``-th of those from the ``rank``-th, i.e. p % (N * world) == I + N * rank;
    an input named twice is yielded once; inputs whose output key is in ``done`` (``--resume``) are skipped.
    ``counts`` (``inputs``, ``skipped``, ``repeated``) is updated as the stream is read."""
    import itertools

    from .inputs import iter_image_paths
    from .writers import text_safe

    counts = counts if counts is not None else {}
    for key in ("inputs", "skipped", "repeated"):
        counts.setdefault(key, 0)
    shard_i, shard_n = shard
    seen: set[str] = set()
    stream = iter_image_paths(inputs, recursive=recursive)
    for path in itertools.islice(itertools.islice(stream, shard_i, None, shard_n), rank, None, world):
        key = text_safe(path)
        if key in seen:
            counts["repeated"] += 1
            continue
        seen.add(key)
        counts["inputs"] += 1
        if key in done:
            counts["skipped"] += 1
        else:
            yield path


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (``--shard``) -> ``(I, N)``; :class:`ValueError` unless ``N >= 1`` and ``0 <= I < N``."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = -1
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"expected I/N with N >= 1 and 0 <= I < N (e.g. 0/4), not {text!r}")
    return i, n


def rank_output_path(path: str | os.PathLike, rank: int, world: int) -> str:
    """The output file of rank ``rank`` of ``world``: ``scores.csv`` -> ``scores.rank0of4.csv``."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.rank{rank}of{world}{p.suffix}"))
