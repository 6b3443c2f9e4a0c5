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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from .inputs import iter_loaded
from .progress import progress_bar

__all__ = ["ScoreRecord", "score_paths", "PRECISIONS", "parse_shard", "rank_output_path"]

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
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    name = model_name or getattr(model, "name", type(model).__name__)
    device = model.device
    batches = iter_loaded(paths, model.transform, model.collate, batch_size=batch_size, num_workers=num_workers,
                          max_pixels=max_pixels, pin_memory=device.type == "cuda")
    dtype = PRECISIONS[precision]
    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype)
        if dtype is not None and device.type in ("cuda", "cpu")
        else contextlib.nullcontext()
    )
    if total is None and hasattr(paths, "__len__"):
        total = len(paths)
    bar = progress_bar(total, progress)
    try:
        for indices, keys, batch, errors in batches:
            records: dict[int, ScoreRecord] = {i: ScoreRecord(path, name, None, err) for i, path, err in errors}
            if indices:
                with autocast:
                    scores = model.score_batch(batch)
                for i, path, value in zip(indices, keys, scores.tolist()):
                    records[i] = ScoreRecord(path, name, float(value), None)
            for i in sorted(records):
                yield records[i]
            bar.update(len(records))
    finally:
        bar.close()
        batches.close()


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
