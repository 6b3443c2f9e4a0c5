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

Paths are absolute and normalised (:func:`os.path.abspath`, symbolic links not resolved), so one
file named two ways is one output key. Members of archives are named ``ARCHIVE:MEMBER`` (the
archive's absolute path, a colon, the member's name inside it, e.g.
``/data/shards/x-000.tar:0001/img.jpg``); that name is the ``path`` of scoring's output rows and what
``--resume`` matches. An uncompressed ``.tar`` shard is indexed once (:func:`index_shard`: one pass
over the tar headers, no decoding; each member's data offset and size is kept), and members are
later read by one seek (:class:`ShardReader`); a ``.zip`` member is read by name; a compressed tar
(``.tar.gz``, ``.tgz``, ...) cannot be read by seek, so the main process streams it once and hands
each member's bytes to the workers (:class:`MemberBytes`).

One bad entry never stops a job: what fails at discovery (a folder that cannot be listed, a broken
or looping symbolic link, an archive or manifest that breaks midway) is yielded as an
:class:`UnreadableInput` and becomes an error row like an unreadable image.

Pixels follow :func:`pyica.loading.load_image`'s rules; :func:`decode_image` adds the optional reduced
JPEG decode pretraining uses.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import errno
import glob
import gzip
import itertools
import logging
import lzma
import os
import re
import tarfile
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from .archive_names import archive_kind, is_archive
from .loading import ImageLoadError, image_extensions, load_image
from .runtime import default_num_workers

__all__ = ["TarMember", "MemberBytes", "ZipMember", "UnreadableInput", "ShardIndex", "ShardReader", "OPEN_SHARDS",
           "MAX_MEMBER_BYTES", "index_shard", "is_archive", "decode_image", "expand_braces", "expand_sources", "expand_input",
           "check_inputs", "iter_image_paths", "iter_loaded", "iter_batches", "count_inputs", "STDIN"]

log = logging.getLogger(__name__)

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_GLOB_CHARS = re.compile(r"[*?\[]")

#: Tar files a reader (one per DataLoader worker) keeps open at once.
OPEN_SHARDS = 4

#: Largest archive member read into memory (its declared size): a bigger one is an error row, so that
#: a member of zeros that compresses to almost nothing cannot exhaust memory.
MAX_MEMBER_BYTES = 1 << 30

#: The input that means "paths on standard input, one per line".
STDIN = "-"

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


# --- archives -----------------------------------------------------------------------------------------


class UnreadableInput(str):
    """An input that failed at discovery (a folder that cannot be listed, a broken symbolic link, an
    archive or manifest that cannot be read): its absolute path (a ``str``) with the ``reason``.

    :func:`iter_image_paths` yields it in the input's place, and loading turns it into an error row
    ``"{path}: {reason}"`` (like :class:`~pyica.loading.ImageLoadError`) without opening anything.
    """

    def __new__(cls, path: str, reason: str):
        self = super().__new__(cls, path)
        self.reason = reason
        return self

    def __reduce__(self):  # pickled as its parts (DataLoader workers receive paths through a queue)
        return UnreadableInput, (str(self), self.reason)

    @property
    def message(self) -> str:
        return f"{self}: {self.reason}"


@dataclass
class ShardIndex:
    """Image members of one tar file: names, data offsets and sizes, in tar order."""

    path: str
    names: list[str]
    offsets: np.ndarray
    sizes: np.ndarray


class _Tap:
    """A read-only file wrapper that keeps the last block read, to tell why :mod:`tarfile` stopped: it
    ends an archive silently on a bad or cut header after the first member."""

    def __init__(self, f):
        self.f = f
        self.last: tuple[int, bytes] = (-1, b"")

    def read(self, size: int = -1) -> bytes:
        pos = self.f.tell()
        data = self.f.read(size)
        self.last = (pos, data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()


def _tar_end_problem(tap: _Tap, offset: int) -> str | None:
    """Why a tar read through ``tap`` ended at header ``offset``: ``None`` for an end-of-archive block
    (or a file ending exactly between members), else what was found there."""
    pos, block = tap.last
    if pos != offset or not block or not block.strip(b"\0"):
        return None
    if len(block) < tarfile.BLOCKSIZE:
        return f"truncated header at byte {offset}"
    return f"invalid tar header at byte {offset}"


def _describe_error(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text if text and not isinstance(err, (EOFError, UnicodeError)) else f"{type(err).__name__}: {err}"


def _wanted(name: str, extensions: frozenset[str]) -> bool:
    base = os.path.basename(name)
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in extensions


def _scan_tar(path: str, extensions: frozenset[str]) -> tuple[ShardIndex, str | None]:
    """The image members of the uncompressed tar ``path`` (one pass over the headers) and, when the
    tar cannot be read to its end, what went wrong (the members before the break are kept)."""
    names, offsets, sizes = [], [], []
    problem = None
    try:
        with open(path, "rb") as f:
            tap = _Tap(f)
            tar = tarfile.TarFile(fileobj=tap, mode="r")
            while (member := tar.next()) is not None:
                tar.members.clear()  # the index below is all that is kept
                if member.isfile() and _wanted(member.name, extensions):
                    names.append(member.name)
                    offsets.append(member.offset_data)
                    sizes.append(member.size)
            problem = _tar_end_problem(tap, tar.offset)
    except Exception as err:  # noqa: BLE001 - a hostile archive is one error, never a crash
        problem = _describe_error(err)
    return ShardIndex(path, names, np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64)), problem


def index_shard(path: str, extensions: frozenset[str] | None = None) -> ShardIndex:
    """The members of the tar file ``path`` with an image extension (default :func:`image_extensions`),
    hidden files skipped. A shard that breaks midway keeps the members read so far (logged)."""
    index, problem = _scan_tar(path, image_extensions() if extensions is None else extensions)
    if problem:
        log.warning("%s: cannot read tar shard after %d images (%s); using those", path, len(index.names), problem)
    return index


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


class MemberBytes(str):
    """The name ``ARCHIVE:MEMBER`` of an image read from a compressed tar (a ``str``) with its ``data``.

    A compressed tar cannot be read by seek, so the main process streams it once and hands each
    member's bytes to the workers; memory stays bounded because the sampler pulls paths lazily.
    """

    def __new__(cls, archive: str, member: str, data: bytes):
        self = super().__new__(cls, f"{archive}:{member}")
        self.archive, self.data = archive, data
        return self

    def __reduce__(self):
        return MemberBytes, (self.archive, str(self)[len(self.archive) + 1:], self.data)


class ZipMember(str):
    """The name ``ARCHIVE.zip:MEMBER`` of an image inside a zip file (a ``str``); read by name in the worker."""

    def __new__(cls, archive: str, member: str):
        self = super().__new__(cls, f"{archive}:{member}")
        self.archive, self.member = archive, member
        return self

    def __reduce__(self):
        return ZipMember, (self.archive, self.member)


class ShardReader:
    """Reads tar members by seek and zip members by name, keeping the last :data:`OPEN_SHARDS` archives
    open (one reader per process or DataLoader worker; :meth:`close` when done)."""

    def __init__(self):
        self._open: OrderedDict[str, Any] = OrderedDict()

    def _get(self, path: str, open_it: Callable[[str], Any]):
        f = self._open.pop(path, None)
        if f is None:
            if len(self._open) >= OPEN_SHARDS:
                self._open.popitem(last=False)[1].close()
            f = open_it(path)
        self._open[path] = f
        return f

    def read(self, shard: str, offset: int, size: int, name: str) -> bytes:
        """The ``size`` bytes at ``offset`` of ``shard``; :class:`ImageLoadError` naming ``name`` when the
        shard cannot be opened or the member is truncated or empty."""
        try:
            f = self._get(shard, lambda p: open(p, "rb"))
        except OSError as err:
            raise ImageLoadError(name, f"cannot open tar shard ({err.strerror or err})") from err
        available = max(0, os.fstat(f.fileno()).st_size - offset)  # a lying header must not size the read
        f.seek(offset)
        data = f.read(min(size, available))
        if len(data) < size:
            raise ImageLoadError(name, f"tar member truncated ({len(data)} of {size} bytes)")
        if not data:
            raise ImageLoadError(name, "empty file (0 bytes)")
        return data

    def read_zip(self, archive: str, member: str, name: str) -> bytes:
        """The bytes of ``member`` of the zip file ``archive``; :class:`ImageLoadError` naming ``name``
        when it cannot be read (missing, corrupt, encrypted, unsupported compression)."""
        try:
            data = self._get(archive, zipfile.ZipFile).read(member)
        except Exception as err:  # noqa: BLE001 - zipfile raises many kinds; each is this member's error
            raise ImageLoadError(name, f"cannot read zip member ({_describe_error(err)})") from err
        if not data:
            raise ImageLoadError(name, "empty file (0 bytes)")
        return data

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


#: Compressed tar suffixes (:data:`pyica.archive_names.COMPRESSED_TAR_SUFFIXES`) -> how to open their stream.
_COMPRESSED_TARS: dict[str, Callable[[Any], Any]] = {
    ".tar.gz": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    ".tgz": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    ".tar.bz2": lambda f: bz2.BZ2File(f, mode="rb"),
    ".tbz2": lambda f: bz2.BZ2File(f, mode="rb"),
    ".tar.xz": lambda f: lzma.LZMAFile(f, mode="rb"),
    ".txz": lambda f: lzma.LZMAFile(f, mode="rb"),
}


def _too_large(name: str, size: int) -> UnreadableInput:
    return UnreadableInput(name, f"archive member too large ({size:,} bytes, over the limit of {MAX_MEMBER_BYTES:,})")


def _archive_failed(archive: str, problem: str, images: int) -> UnreadableInput:
    after = f"; the {images} image{'s' if images != 1 else ''} before it were read" if images else ""
    return UnreadableInput(archive, f"cannot read archive ({problem}){after}")


def _tar_members(shard: str, extensions: frozenset[str]) -> Iterator[str]:
    """The image members of one uncompressed tar, in tar order (only this shard's index is held in
    memory), then an :class:`UnreadableInput` for the shard if it cannot be read to its end."""
    index, problem = _scan_tar(shard, extensions)
    for name, offset, size in zip(index.names, index.offsets.tolist(), index.sizes.tolist()):
        yield TarMember(shard, name, offset, size) if size <= MAX_MEMBER_BYTES else _too_large(f"{shard}:{name}", size)
    if problem:
        yield _archive_failed(shard, problem, len(index.names))
    elif not index.names:
        log.warning("%s: archive holds no images", shard)


def _compressed_tar_members(archive: str, suffix: str, extensions: frozenset[str]) -> Iterator[str]:
    """The image members of a compressed tar, streamed in one pass, each as :class:`MemberBytes`; then
    an :class:`UnreadableInput` for the archive if it cannot be read to its end."""
    images, problem = 0, None
    try:
        with open(archive, "rb") as raw, _COMPRESSED_TARS[suffix](raw) as stream:
            tap = _Tap(stream)
            tar = tarfile.TarFile(fileobj=tap, mode="r")
            while (member := tar.next()) is not None:
                tar.members.clear()  # nothing of earlier members is kept
                if member.isfile() and _wanted(member.name, extensions):
                    images += 1
                    if member.size > MAX_MEMBER_BYTES:
                        yield _too_large(f"{archive}:{member.name}", member.size)
                        continue
                    f = tar.extractfile(member)  # read in chunks: memory follows the data actually there
                    yield MemberBytes(archive, member.name, b"".join(iter(lambda: f.read(1 << 20), b"")))
            problem = _tar_end_problem(tap, tar.offset)
    except Exception as err:  # noqa: BLE001 - a hostile archive is one error, never a crash
        problem = _describe_error(err)
    if problem:
        yield _archive_failed(archive, problem, images)
    elif not images:
        log.warning("%s: archive holds no images", archive)


def _zip_members(archive: str, extensions: frozenset[str]) -> Iterator[str]:
    """The image members of a zip file, in archive order, each as :class:`ZipMember`; an
    :class:`UnreadableInput` for the archive if its directory cannot be read."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(i.filename, i.file_size) for i in zf.infolist()
                       if not i.is_dir() and _wanted(i.filename, extensions)]
    except Exception as err:  # noqa: BLE001 - a hostile archive is one error, never a crash
        yield _archive_failed(archive, _describe_error(err), 0)
        return
    if not members:
        log.warning("%s: archive holds no images", archive)
    for name, size in members:  # zipfile never reads more than the declared size
        yield ZipMember(archive, name) if size <= MAX_MEMBER_BYTES else _too_large(f"{archive}:{name}", size)

# --- decoding -------------------------------------------------------------------------------------------


def decode_image(source: str | bytes, name: str, min_side: int = 0, max_pixels: int | None = None,
                 draft: bool = False, decode_size=None) -> Image.Image:
    """RGB image of ``source`` by :func:`load_image`'s rules, its errors naming ``name``. JPEGs are
    decoded reduced (see ``load_image``'s ``decode_size``): to ``decode_size`` when given, else, when
    ``draft``, keeping the shorter side >= ``min_side``."""
    if decode_size is None and draft:
        decode_size = (min_side, min_side)
    try:
        return load_image(source, max_pixels, decode_size=decode_size)
    except ImageLoadError as err:
        raise ImageLoadError(name, err.reason) from None


# --- discovery -------------------------------------------------------------------------------------------


class _BadManifestLine(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _manifest_lines(f) -> Iterator[str]:
    """The lines of a manifest opened as text with ``errors="surrogateescape"``; a line holding bytes
    that are not UTF-8 (they come back as lone surrogates) raises :class:`_BadManifestLine` naming it."""
    for number, line in enumerate(f, 1):
        bad = next((i for i, ch in enumerate(line) if "\udc80" <= ch <= "\udcff"), None)
        if bad is not None:
            raise _BadManifestLine(f"line {number} is not valid UTF-8 (byte 0x{ord(line[bad]) - 0xDC00:02x} "
                                   f"at character {bad + 1})")
        yield line


def _open_manifest(csv_path: str):
    return open(csv_path, newline="", encoding="utf-8-sig", errors="surrogateescape")


def _manifest_column(csv_path: str | Path, reader: csv.DictReader) -> str:
    columns = reader.fieldnames or []
    column = next((c for c in _PATH_COLUMNS if c in columns), None)
    if column is None:
        raise ValueError(
            f"{csv_path}: no image path column (looked for {', '.join(_PATH_COLUMNS)}; found {', '.join(columns) or 'none'})"
        )
    return column


def _manifest_paths(csv_path: str) -> Iterator[str]:
    """Image paths listed in the CSV manifest ``csv_path`` (absolute), resolved against its folder,
    absolute. A manifest that cannot be read to its end (unreadable, not UTF-8, not CSV) yields the
    rows before the problem, then an :class:`UnreadableInput` for the manifest naming the line."""
    folder = os.path.dirname(csv_path)
    reader = None
    try:
        with _open_manifest(csv_path) as f:
            reader = csv.DictReader(_manifest_lines(f))
            column = _manifest_column(csv_path, reader)
            for row in reader:
                value = (row.get(column) or "").strip()
                if not value:
                    continue
                path = os.path.abspath(os.path.join(folder, value))
                if "\0" in value:
                    yield UnreadableInput(path, f"path on line {reader.line_num} of {csv_path} holds a NUL character")
                else:
                    yield path
    except _BadManifestLine as err:
        yield UnreadableInput(csv_path, f"cannot read manifest ({err.reason}); the rows before it were read")
    except csv.Error as err:
        line = reader.line_num if reader is not None else 0
        yield UnreadableInput(csv_path, f"cannot parse manifest at line {line} ({err}); the rows before it were read")
    except OSError as err:
        yield UnreadableInput(csv_path, f"cannot read manifest ({err.strerror or err})")


def _listed_paths(stream: BinaryIO, folder: str, source: str) -> Iterator[str]:
    """Paths of a plain list, one per line (bytes, decoded as file names are, so any name works);
    blank lines and ``#`` comments skipped; relative paths resolved against ``folder``."""
    for line in stream:
        value = os.fsdecode(line.rstrip(b"\r\n")).strip()
        if not value or value.startswith("#"):
            continue
        path = os.path.abspath(os.path.join(folder, value))
        yield UnreadableInput(path, f"path listed in {source} holds a NUL character") if "\0" in value else path


def _path_list(list_path: str) -> Iterator[str]:
    """The paths listed in the ``.txt`` file ``list_path`` (see :func:`_listed_paths`)."""
    try:
        with open(list_path, "rb") as f:
            yield from _listed_paths(f, os.path.dirname(list_path), list_path)
    except OSError as err:
        yield UnreadableInput(list_path, f"cannot read path list ({err.strerror or err})")


def check_inputs(inputs: Iterable[str | os.PathLike]) -> None:
    """Fail early, before any scoring, on what :func:`iter_image_paths` would stop at midway: a glob that
    matches nothing, a CSV manifest without a path column (only the arguments and manifest headers are
    read). A manifest that cannot be read at all is left to :func:`iter_image_paths` (an error row)."""
    for raw in inputs:
        for item in expand_input(os.fsdecode(raw)):
            if item.lower().endswith(".csv") and os.path.isfile(item):
                try:
                    with _open_manifest(item) as f:
                        _manifest_column(item, csv.DictReader(_manifest_lines(f)))
                except (_BadManifestLine, csv.Error, OSError):
                    pass


def _link_problem(path: str) -> str | None:
    """Why the symbolic link ``path`` cannot be followed (``None`` when it can, or is no link)."""
    try:
        os.stat(path)
        return None
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)" if os.path.islink(path) else None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"symbolic link loop ({err.strerror})"
        return f"cannot follow symbolic link ({err.strerror or err})" if os.path.islink(path) else None


def iter_image_paths(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> Iterator[str]:
    """Expand ``inputs`` into image paths, streaming (nothing is listed in memory first).

    Every path yielded is absolute and normalised (:func:`os.path.abspath`; symbolic links are not
    resolved), so one file named two ways gives one key:

    * a folder: its image files (by extension Pillow knows; hidden files skipped), sorted by name,
      descending into sub-folders (depth first) when ``recursive``; each real folder is walked once
      (a symbolic link cycle is logged and skipped), however deep the tree;
    * a ``.csv`` file: the paths in its image column (``image``/``path``/``file``/...), resolved
      against the manifest's folder;
    * a ``.txt`` file: one path per line (blank lines and ``#`` comments skipped), resolved against the
      list's folder; ``-``: the same from standard input, resolved against the working folder
      (``find photos -name '*.jpg' | pyica score -``);
    * a ``.tar`` file (WebDataset-style shard, uncompressed): its members with an image extension,
      in tar order, each as a :class:`TarMember` named ``/abs/SHARD.tar:MEMBER``, read later by seek;
    * a compressed tar (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tbz2``, ``.tar.xz``, ``.txz``): the same,
      streamed here once, each member as :class:`MemberBytes` carrying its bytes to the workers;
    * a ``.zip`` file: the same, each member as :class:`ZipMember`, read by name in the workers;
    * brace patterns (``shards/x-{000..009}.tar``) and quoted globs are expanded first, unless a
      file of that literal name exists;
    * any other path: taken as an image, whatever its extension (so a bad file is reported, not skipped).

    What fails at discovery never stops the stream: it is yielded as an :class:`UnreadableInput`
    (a folder that cannot be listed, a broken or looping symbolic link, an archive or manifest that
    cannot be read to its end, after the entries read before the break), which loading reports as
    an error row. Only a glob matching nothing and a manifest without a path column raise
    (:func:`check_inputs` finds both before a job starts).
    """
    extensions = image_extensions()
    for raw in inputs:
        if os.fsdecode(raw) == STDIN:
            yield from _listed_paths(sys.stdin.buffer, os.getcwd(), "standard input")
            continue
        for item in expand_input(os.fsdecode(raw)):
            path = os.path.abspath(item)
            problem = _link_problem(path)
            kind = archive_kind(path)
            if problem:
                yield UnreadableInput(path, problem)
            elif os.path.isdir(path):
                yield from _walk_folder(path, extensions, recursive)
            elif path.lower().endswith(".csv") and os.path.isfile(path):
                yield from _manifest_paths(path)
            elif path.lower().endswith(".txt") and os.path.isfile(path):
                yield from _path_list(path)
            elif kind and os.path.isfile(path):
                if kind == "tar":
                    yield from _tar_members(path, extensions)
                elif kind == "zip":
                    yield from _zip_members(path, extensions)
                else:
                    yield from _compressed_tar_members(path, kind, extensions)
            else:
                yield path  # a missing archive is reported by loading, like any other missing file


def count_inputs(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> int | None:
    """How many paths :func:`iter_image_paths` will yield, for a progress bar's total; ``None`` when
    that cannot be known without reading data twice (standard input, compressed tars).

    A first pass over names only: folders are listed, manifests and lists read, tar headers and zip
    directories indexed; no image is opened.
    """
    total = 0
    for raw in inputs:
        if os.fsdecode(raw) == STDIN:
            return None
        for item in expand_input(os.fsdecode(raw)):
            kind = archive_kind(item)
            if kind not in (None, "tar", "zip") and os.path.isfile(item):
                return None  # a compressed tar would have to be decompressed to count its members
            total += sum(1 for _ in iter_image_paths([item], recursive=recursive))
    return total


def _list_folder(folder: str) -> list[os.DirEntry] | UnreadableInput:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as err:
        return UnreadableInput(folder, f"cannot list folder ({err.strerror or err})")


def _walk_folder(folder: str, extensions: frozenset[str], recursive: bool) -> Iterator[str]:
    """The image files under the absolute ``folder``, sorted by name, depth first, walked with an
    explicit stack (no recursion limit); each real folder (``st_dev``, ``st_ino``) once."""
    listing = _list_folder(folder)
    if isinstance(listing, UnreadableInput):
        yield listing
        return
    visited = set()
    with contextlib.suppress(OSError):
        st = os.stat(folder)
        visited.add((st.st_dev, st.st_ino))
    stack = [iter(listing)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        name = entry.name
        if name.startswith("."):
            continue
        image = os.path.splitext(name)[1].lower() in extensions
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError:  # a symbolic link loop (ELOOP), or an entry that vanished
            is_dir = is_file = False
        if is_dir:
            if not recursive:
                continue
            try:
                st = entry.stat()
                key = (st.st_dev, st.st_ino)
            except OSError as err:
                yield UnreadableInput(entry.path, f"cannot list folder ({err.strerror or err})")
                continue
            if key in visited:
                log.warning("%s: folder already walked (a symbolic link cycle, or a second link to it); skipped",
                            entry.path)
                continue
            visited.add(key)
            listing = _list_folder(entry.path)
            if isinstance(listing, UnreadableInput):
                yield listing
            else:
                stack.append(iter(listing))
        elif not is_file and entry.is_symlink() and (problem := _link_problem(entry.path)):
            # A link that cannot be followed: reported when its name says image (or says nothing:
            # it may have been meant as a folder); a broken ``notes.txt`` would be skipped anyway.
            if image or not os.path.splitext(name)[1]:
                yield UnreadableInput(entry.path, problem)
            else:
                log.warning("%s: %s; skipped", entry.path, problem)
        elif image:
            yield entry.path

# --- batches ----------------------------------------------------------------------------------------------


class _ImageFiles(Dataset):
    """Loads and preprocesses one file per item; failures travel as messages, not exceptions.

    Items are ``(position, path)`` pairs (the "index" the sampler hands out), so the dataset holds no
    list of paths; a :class:`TarMember` is read from its shard by one seek, a :class:`ZipMember` by
    name, a :class:`MemberBytes` from the bytes it carries, and an :class:`UnreadableInput` is its
    error without opening anything. The path comes back as a plain ``str`` (no bytes travel back).
    """

    def __init__(self, transform: Callable, max_pixels: int | None):
        self.transform = transform
        self.max_pixels = max_pixels
        # what the model needs decoded (JPEGs reduced in libjpeg, see load_image); None: full resolution
        self.decode_size = getattr(transform, "decode_size", None)
        self.shards = ShardReader()  # open archives of this process

    def __getitem__(self, item: tuple[int, str]):
        index, path = item
        name = str(path)
        if isinstance(path, UnreadableInput):
            return index, name, None, path.message
        try:
            image = self._load(path)
            return index, name, self.transform(image), None
        except ImageLoadError as err:
            return index, name, None, str(err)
        except Exception as err:  # a transform failing on one odd image must not stop the job
            return index, name, None, f"{name}: preprocessing failed ({type(err).__name__}: {err})"

    def _load(self, path: str):
        if isinstance(path, TarMember):
            data = self.shards.read(path.shard, path.offset, path.size, str(path))
        elif isinstance(path, ZipMember):
            data = self.shards.read_zip(path.archive, path.member, str(path))
        elif isinstance(path, MemberBytes):
            data = path.data
        else:
            return load_image(path, self.max_pixels, decode_size=self.decode_size)
        return decode_image(data, str(path), max_pixels=self.max_pixels, decode_size=self.decode_size)

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
                num_workers: int | None, max_pixels: int | None, pin_memory: bool, prefetch_factor: int = 4):
    """``(indices, paths, batch, errors)`` per batch, ``errors`` as ``(position, path, message)``.

    ``num_workers=None``: :func:`~pyica.runtime.default_num_workers`, or none when all the inputs fit in
    one batch: a batch is loaded by one worker, so for a single batch a worker only adds its start-up.
    ``prefetch_factor``: batches each worker loads ahead (lower it when items are large, e.g. map patches)."""
    workers = num_workers
    if workers is None:
        if hasattr(paths, "__len__"):
            count = len(paths)
        else:  # a stream: look at most one batch and one input ahead
            paths = iter(paths)
            head = list(itertools.islice(paths, batch_size + 1))
            count, paths = len(head), itertools.chain(head, paths)
        workers = default_num_workers() if count > batch_size else 0
    dataset = _ImageFiles(transform, max_pixels)
    loader = DataLoader(
        dataset,
        sampler=_Positions(paths),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_CollateWithErrors(collate),
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=max(1, int(prefetch_factor)) if workers > 0 else None,
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
