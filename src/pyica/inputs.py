"""Inputs: finding the images a job reads, reading their bytes, decoding them, batching them.

Everything that turns what a user names (files, folders, CSV manifests, tar shards, globs, brace
patterns) into decoded, preprocessed images lives here, so that scoring, the datasets and
pretraining read inputs the same way. Data flows one way: files -> inputs -> models -> scores ->
writers/reports; nothing here imports scoring or training.

Everything streams: :func:`iter_image_paths` walks folders, reads CSV manifests and indexes tar shards
lazily, and :func:`iter_batches` / :func:`iter_loaded` accept any iterable of paths (a list or a
generator). The main process pulls paths from the iterable only as DataLoader workers need them
(``prefetch_factor`` batches per worker ahead), batch ``j`` is loaded by worker ``j % num_workers``,
and PyTorch hands the batches back in order; so memory does not grow with the number of inputs.

Members of WebDataset-style ``.tar`` shards are named ``SHARD.tar:MEMBER`` (the shard path as given,
a colon, the member's name inside the tar, e.g. ``shards/x-000.tar:0001/img.jpg``); that name is the
``path`` of scoring's output rows and what ``--resume`` matches. A shard is indexed once
(:func:`index_shard`: one pass over the tar headers, no decoding; each member's data offset and size
is kept), and members are later read by one seek (:class:`ShardReader`).

Pixels follow :func:`pyica.loading.load_image`'s rules; :func:`decode_image` adds the optional reduced
JPEG decode pretraining uses.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import re
import tarfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from .loading import DEFAULT_MAX_PIXELS, ImageLoadError, image_extensions, load_image, to_rgb
from .runtime import default_num_workers

__all__ = ["TarMember", "ShardIndex", "ShardReader", "OPEN_SHARDS", "index_shard", "decode_image",
           "expand_braces", "expand_sources", "expand_input", "check_inputs", "iter_image_paths",
           "iter_loaded", "iter_batches"]

log = logging.getLogger(__name__)

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_GLOB_CHARS = re.compile(r"[*?\[]")

#: Tar files a reader (one per DataLoader worker) keeps open at once.
OPEN_SHARDS = 4

# Manifest columns that may hold the image path, in order of preference.
_PATH_COLUMNS = ("image", "path", "file", "filename", "name")


# --- patterns ---------------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: ``{000..002}`` (zero padding kept) and ``{a,b}``, left to right.

    ``"s-{000..002}.tar"`` -> ``["s-000.tar", "s-001.tar", "s-002.tar"]``. Braces holding neither a
    range nor a comma are kept literally.
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    span = _RANGE.fullmatch(body)
    if span:
        a, b = span.groups()
        lo, hi = int(a), int(b)
        padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (a, b))
        width = max(len(a), len(b)) if padded else 0
        step = 1 if hi >= lo else -1
        options = [str(v).zfill(width) for v in range(lo, hi + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        options = ["{" + body + "}"]
    head = pattern[: m.start()]
    return [head + option + rest for option in options for rest in expand_braces(pattern[m.end():])]


def expand_sources(sources: Iterable[str | os.PathLike]) -> list[str]:
    """Sources with braces and globs expanded (globs sorted). A pattern matching nothing, or a plain
    path that does not exist, raises :class:`FileNotFoundError` naming it."""
    out: list[str] = []
    for source in sources:
        for item in expand_braces(os.fspath(source)):
            if _GLOB_CHARS.search(item):
                matches = sorted(glob.glob(item, recursive=True))
                if not matches:
                    raise FileNotFoundError(f"{item}: no file matches this pattern")
                out.extend(matches)
            elif not os.path.exists(item):
                raise FileNotFoundError(f"{item}: data source not found")
            else:
                out.append(item)
    return out


def expand_input(item: str) -> list[str]:
    """One command-line input with brace patterns (``x-{000..009}.tar``, ``{a,b}``) and globs expanded;
    an input that exists as written is taken literally."""
    if os.path.exists(item):
        return [item]
    out: list[str] = []
    for name in expand_braces(item):
        out.extend(expand_sources([name]) if _GLOB_CHARS.search(name) and not os.path.exists(name) else [name])
    return out


# --- tar shards ---------------------------------------------------------------------------------------


@dataclass
class ShardIndex:
    """Image members of one tar file: names, data offsets and sizes, in tar order."""

    path: str
    names: list[str]
    offsets: np.ndarray
    sizes: np.ndarray


def index_shard(path: str, extensions: frozenset[str] | None = None) -> ShardIndex:
    """The members of the tar file ``path`` with an image extension (default :func:`image_extensions`),
    hidden files skipped. A shard that breaks midway keeps the members read so far (logged)."""
    extensions = image_extensions() if extensions is None else extensions
    names, offsets, sizes = [], [], []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and not base.startswith(".") and os.path.splitext(base)[1].lower() in extensions:
                    names.append(member.name)
                    offsets.append(member.offset_data)
                    sizes.append(member.size)
    except (tarfile.TarError, OSError) as err:
        log.warning("%s: cannot read tar shard after %d images (%s); using those", path, len(names), err)
    return ShardIndex(path, names, np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64))


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


class ShardReader:
    """Reads tar members by seek, keeping the last :data:`OPEN_SHARDS` tar files open (one reader per
    process or DataLoader worker; :meth:`close` when done)."""

    def __init__(self):
        self._open: OrderedDict[str, Any] = OrderedDict()

    def read(self, shard: str, offset: int, size: int, name: str) -> bytes:
        """The ``size`` bytes at ``offset`` of ``shard``; :class:`ImageLoadError` naming ``name`` when the
        shard cannot be opened or the member is truncated or empty."""
        f = self._open.pop(shard, None)
        if f is None:
            if len(self._open) >= OPEN_SHARDS:
                self._open.popitem(last=False)[1].close()
            try:
                f = open(shard, "rb")
            except OSError as err:
                raise ImageLoadError(name, f"cannot open tar shard ({err.strerror or err})") from err
        self._open[shard] = f
        f.seek(offset)
        data = f.read(size)
        if len(data) < size:
            raise ImageLoadError(name, f"tar member truncated ({len(data)} of {size} bytes)")
        if not data:
            raise ImageLoadError(name, "empty file (0 bytes)")
        return data

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


# --- decoding -------------------------------------------------------------------------------------------


def decode_image(source: str | bytes, name: str, min_side: int = 0, max_pixels: int | None = None,
                 draft: bool = False) -> Image.Image:
    """RGB image of ``source``; JPEGs decoded at the smallest DCT scale keeping the shorter side >=
    ``min_side`` when ``draft``. Anything unusual falls back to :func:`load_image` (its errors)."""
    if draft:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                    budget = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
                    if img.format == "JPEG" and 0 < img.width * img.height <= budget:
                        img.draft("RGB", (min_side, min_side))
                        img.load()
                        return to_rgb(img)
        except Exception:  # noqa: BLE001 - load_image below reports the failure properly
            pass
    try:
        return load_image(source, max_pixels)
    except ImageLoadError as err:
        raise ImageLoadError(name, err.reason) from None


# --- discovery -------------------------------------------------------------------------------------------


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


def _tar_members(shard: str, extensions: frozenset[str]) -> Iterator[str]:
    """The image members of one tar shard, in tar order (only this shard's index is held in memory)."""
    if not os.path.isfile(shard):
        yield shard  # reported as a missing/unreadable file, like any other input
        return
    index = index_shard(shard, extensions)
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


# --- batches ----------------------------------------------------------------------------------------------


class _ImageFiles(Dataset):
    """Loads and preprocesses one file per item; failures travel as messages, not exceptions.

    Items are ``(position, path)`` pairs (the "index" the sampler hands out), so the dataset holds no
    list of paths; a :class:`TarMember` is read from its shard by one seek.
    """

    def __init__(self, transform: Callable, max_pixels: int | None):
        self.transform = transform
        self.max_pixels = max_pixels
        self.shards = ShardReader()  # open tar files of this process

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
        data = self.shards.read(member.shard, member.offset, member.size, str(member))
        return decode_image(data, str(member), 0, self.max_pixels, draft=False)

    def close(self) -> None:
        self.shards.close()


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


def iter_loaded(paths: Iterable[str], transform: Callable, collate: Callable, *, batch_size: int,
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
    for indices, _, batch, errors in iter_loaded(paths, transform, collate, batch_size=batch_size,
                                                num_workers=num_workers, max_pixels=max_pixels,
                                                pin_memory=pin_memory):
        yield indices, batch, [(i, err) for i, _, err in errors]
