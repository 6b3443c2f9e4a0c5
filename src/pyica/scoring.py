"""Batch scoring: files -> loading (DataLoader workers) -> model -> one :class:`ScoreRecord` per input.

A file that cannot be loaded becomes a record with ``score=None`` and an ``error`` naming the file
and the cause; the job goes on. Records come out in input order.

Everything streams: :func:`iter_image_paths` walks folders, reads CSV manifests and indexes tar shards
lazily, and :func:`score_paths` / :func:`iter_batches` accept any iterable of paths (a list or a
generator). The main process pulls paths from the iterable only as DataLoader workers need them
(``prefetch_factor`` batches per worker ahead), batch ``j`` is loaded by worker ``j % num_workers``,
and PyTorch hands the batches back in order; so memory does not grow with the number of inputs.

Members of WebDataset-style ``.tar`` shards are named ``SHARD.tar:MEMBER`` (the shard path as given,
a colon, the member's name inside the tar, e.g. ``shards/x-000.tar:0001/img.jpg``); that name is the
``path`` of their output rows and what ``--resume`` matches.
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .loading import ImageLoadError, image_extensions, load_image
from .runtime import default_num_workers

__all__ = ["ScoreRecord", "TarMember", "iter_image_paths", "iter_batches", "score_paths", "progress_bar", "PRECISIONS",
           "parse_shard", "torchrun_env", "rank_output_path", "expand_input", "check_inputs"]

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


def _manifest_column(csv_path: Path, reader: csv.DictReader) -> str:
    columns = reader.fieldnames or []
    column = next((c for c in _PATH_COLUMNS if c in columns), None)
    if column is None:
        raise ValueError(
            f"{csv_path}: no image path column (looked for {', '.join(_PATH_COLUMNS)}; found {', '.join(columns) or 'none'})"
        )
    return column


def _manifest_paths(csv_path: Path) -> Iterator[str]:
    """Image paths listed in a CSV manifest, resolved against the manifest's folder."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        column = _manifest_column(csv_path, reader)
        for row in reader:
            value = (row.get(column) or "").strip()
            if value:
                p = Path(value)
                yield str(p if p.is_absolute() else csv_path.parent / p)


class TarMember(str):
    """The name ``SHARD.tar:MEMBER`` of an image inside a tar shard (a ``str``), with where its bytes lie.

    ``shard`` is the tar file, ``offset``/``size`` the member's data in it, so a worker reads it by one
    seek without listing the tar again.
    """

    def __new__(cls, shard: str, member: str, offset: int, size: int):
        self = super().__new__(cls, f"{shard}:{member}")
        self.shard, self.offset, self.size = shard, int(offset), int(size)
        return self

    def __reduce__(self):  # pickled as its parts (DataLoader workers receive paths through a queue)
        return TarMember, (self.shard, str(self)[len(self.shard) + 1:], self.offset, self.size)


def expand_input(item: str) -> list[str]:
    """One command-line input with brace patterns (``x-{000..009}.tar``, ``{a,b}``) and globs expanded;
    an input that exists as written is taken literally."""
    if os.path.exists(item):
        return [item]
    from .data.streams import _GLOB_CHARS, expand_braces, expand_sources

    out: list[str] = []
    for name in expand_braces(item):
        out.extend(expand_sources([name]) if _GLOB_CHARS.search(name) and not os.path.exists(name) else [name])
    return out


def _tar_members(shard: str, extensions: frozenset[str]) -> Iterator[str]:
    """The image members of one tar shard, in tar order (only this shard's index is held in memory)."""
    if not os.path.isfile(shard):
        yield shard  # reported as a missing/unreadable file, like any other input
        return
    from .data.streams import _index_shard

    index = _index_shard(shard, extensions)
    for name, offset, size in zip(index.names, index.offsets.tolist(), index.sizes.tolist()):
        yield TarMember(shard, name, offset, size)


def check_inputs(inputs: Iterable[str | os.PathLike]) -> None:
    """Fail early, before any scoring, on what :func:`iter_image_paths` would stop at midway: a glob that
    matches nothing, a CSV manifest without a path column (only the arguments and manifest headers are read)."""
    for raw in inputs:
        for item in expand_input(os.fspath(raw)):
            path = Path(item)
            if path.suffix.lower() == ".csv" and path.is_file():
                with open(path, newline="", encoding="utf-8-sig") as f:
                    _manifest_column(path, csv.DictReader(f))


def iter_image_paths(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> Iterator[str]:
    """Expand ``inputs`` into image paths, streaming (nothing is listed in memory first).

    * a folder: its image files (by extension Pillow knows; hidden files skipped), sorted by name,
      descending into sub-folders when ``recursive``;
    * a ``.csv`` file: the paths in its image column (``image``/``path``/``file``/...);
    * a ``.tar`` file (WebDataset-style shard, uncompressed): its members with an image extension,
      in tar order, each as a :class:`TarMember` named ``SHARD.tar:MEMBER``;
    * brace patterns (``shards/x-{000..009}.tar``) and quoted globs are expanded first, unless a
      file of that literal name exists;
    * any other path: taken as an image, whatever its extension (so a bad file is reported, not skipped).
    """
    extensions = image_extensions()
    for raw in inputs:
        for item in expand_input(os.fspath(raw)):
            path = Path(item)
            if path.is_dir():
                yield from _walk_folder(path, extensions, recursive)
            elif path.suffix.lower() == ".csv" and path.is_file():
                yield from _manifest_paths(path)
            elif path.suffix.lower() == ".tar":
                yield from _tar_members(item, extensions)
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


_OPEN_SHARDS = 4  # tar files a worker keeps open at once


class _ImageFiles(Dataset):
    """Loads and preprocesses one file per item; failures travel as messages, not exceptions.

    Items are ``(position, path)`` pairs (the "index" the sampler hands out), so the dataset holds no
    list of paths; a :class:`TarMember` is read from its shard by one seek.
    """

    def __init__(self, transform: Callable, max_pixels: int | None):
        self.transform = transform
        self.max_pixels = max_pixels
        self._shards: OrderedDict[str, Any] = OrderedDict()  # open tar files of this process

    def __getitem__(self, item: tuple[int, str]):
        index, path = item
        try:
            image = self._load_tar_member(path) if isinstance(path, TarMember) else load_image(path, self.max_pixels)
            return index, path, self.transform(image), None
        except ImageLoadError as err:
            return index, path, None, str(err)
        except Exception as err:  # a transform failing on one odd image must not stop the job
            return index, path, None, f"{path}: preprocessing failed ({type(err).__name__}: {err})"

    def _load_tar_member(self, member: TarMember):
        from .data.streams import _decode

        f = self._shards.pop(member.shard, None)
        if f is None:
            if len(self._shards) >= _OPEN_SHARDS:
                self._shards.popitem(last=False)[1].close()
            try:
                f = open(member.shard, "rb")
            except OSError as err:
                raise ImageLoadError(str(member), f"cannot open tar shard ({err.strerror or err})") from err
        self._shards[member.shard] = f
        f.seek(member.offset)
        data = f.read(member.size)
        if len(data) < member.size:
            raise ImageLoadError(str(member), f"tar member truncated ({len(data)} of {member.size} bytes)")
        return _decode(data, str(member), 0, self.max_pixels, draft=False)

    def close(self) -> None:
        while self._shards:
            self._shards.popitem()[1].close()


class _Positions(Sampler):
    """``(position, path)`` for each path, pulled from ``paths`` only as the DataLoader asks (no length)."""

    def __init__(self, paths: Iterable[str]):
        self.paths = paths

    def __iter__(self):
        return enumerate(self.paths)


class _CollateWithErrors:
    """Collates the good items with the model's rule and passes errors alongside."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, samples):
        good = [(i, path, item) for i, path, item, err in samples if err is None]
        errors = [(i, path, err) for i, path, item, err in samples if err is not None]
        batch = self.collate([item for _, _, item in good]) if good else None
        return [i for i, _, _ in good], [str(p) for _, p, _ in good], batch, [(i, str(p), e) for i, p, e in errors]


def _iter_loaded(paths: Iterable[str], transform: Callable, collate: Callable, *, batch_size: int,
                 num_workers: int | None, max_pixels: int | None, pin_memory: bool):
    """``(indices, paths, batch, errors)`` per batch, ``errors`` as ``(position, path, message)``."""
    workers = default_num_workers() if num_workers is None else num_workers
    dataset = _ImageFiles(transform, max_pixels)
    loader = DataLoader(
        dataset,
        sampler=_Positions(paths),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_CollateWithErrors(collate),
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    try:
        yield from loader
    finally:
        dataset.close()


def iter_batches(
    paths: Iterable[str],
    transform: Callable,
    collate: Callable,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    max_pixels: int | None = None,
    pin_memory: bool = False,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """Load and preprocess ``paths`` (a sequence or any iterable, consumed lazily) in DataLoader workers, in order.

    Yields ``(indices, batch, errors)`` per batch: the positions of the good images, their collated
    batch (``None`` when none loaded) and ``(position, message)`` for each file that failed.
    Shared by scoring and by feature extraction for training, so both read images the same way.
    """
    for indices, _, batch, errors in _iter_loaded(paths, transform, collate, batch_size=batch_size,
                                                 num_workers=num_workers, max_pixels=max_pixels,
                                                 pin_memory=pin_memory):
        yield indices, batch, [(i, err) for i, _, err in errors]


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
) -> Iterator[ScoreRecord]:
    """Score ``paths`` with ``model`` (a :class:`~pyica.models.base.ComplexityModel`), yielding records in order.

    ``paths`` may be a sequence or any iterable (a generator is consumed lazily, so memory does not
    grow with its length); the progress bar has a total only when ``paths`` has a length.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    name = model_name or getattr(model, "name", type(model).__name__)
    device = model.device
    batches = _iter_loaded(paths, model.transform, model.collate, batch_size=batch_size, num_workers=num_workers,
                           max_pixels=max_pixels, pin_memory=device.type == "cuda")
    dtype = PRECISIONS[precision]
    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype)
        if dtype is not None and device.type in ("cuda", "cpu")
        else contextlib.nullcontext()
    )
    bar = progress_bar(len(paths) if hasattr(paths, "__len__") else None, progress)
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


def progress_bar(total: int | None, enabled: bool):
    """A tqdm bar on stderr counting images (disabled, but still callable, when not ``enabled``;
    without a ``total`` it shows the count and the rate)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=not enabled, dynamic_ncols=True, smoothing=0.1)


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


def torchrun_env() -> tuple[int, int, int, int]:
    """``(rank, world_size, local_rank, local_world_size)`` from torchrun's environment variables
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); ``(0, 1, 0, 1)`` unless ``WORLD_SIZE > 1``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return 0, 1, 0, 1
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError) as err:
        raise ValueError(f"WORLD_SIZE > 1 but RANK, LOCAL_RANK or LOCAL_WORLD_SIZE is missing or not an integer ({err})") from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in 0..{world - 1} (WORLD_SIZE={world})")
    return rank, world, local_rank, local_world


def rank_output_path(path: str | os.PathLike, rank: int, world: int) -> str:
    """The output file of rank ``rank`` of ``world``: ``scores.csv`` -> ``scores.rank0of4.csv``."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.rank{rank}of{world}{p.suffix}"))
