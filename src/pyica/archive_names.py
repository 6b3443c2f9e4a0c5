"""Names of archives and of their members (``ARCHIVE:MEMBER``), without reading anything.

Kept apart from :mod:`pyica.inputs` (which reads archives, and imports torch for its DataLoader) so that
torch-free commands such as ``pyica select`` parse the same names by the same rules.
"""

from __future__ import annotations

import os

__all__ = ["COMPRESSED_TAR_SUFFIXES", "archive_kind", "is_archive", "split_archive_member"]

#: Suffixes of the compressed tars that are read by streaming (:mod:`pyica.inputs` opens each).
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def archive_kind(path: str) -> str | None:
    """``"tar"``, ``"zip"``, one of :data:`COMPRESSED_TAR_SUFFIXES`, or ``None`` for any other name."""
    lower = path.lower()
    if lower.endswith(".tar"):
        return "tar"
    if lower.endswith(".zip"):
        return "zip"
    return next((suffix for suffix in COMPRESSED_TAR_SUFFIXES if lower.endswith(suffix)), None)


def is_archive(path: str) -> bool:
    """Whether ``path`` names an archive whose members pyica reads (.tar, .tar.gz, .tgz, .zip, ...)."""
    return archive_kind(path) is not None


def split_archive_member(path: str) -> tuple[str, str] | None:
    """``(archive, member)`` for an ``ARCHIVE:MEMBER`` name (``/d/x.tar:a/b.png``), else ``None``.

    A file that exists under the whole name is a plain file. Otherwise the first ``:`` after an archive
    name whose prefix is an existing file splits the name; when no such prefix exists, the first one
    does (the archive is then reported missing when it is read)."""
    if ":" not in path or os.path.lexists(path):  # most names are plain files: one stat at most
        return None
    first = None
    start = 0
    while (cut := path.find(":", start)) >= 0:
        start = cut + 1
        if not is_archive(path[:cut]):
            continue
        archive, member = path[:cut], path[cut + 1:]
        if os.path.isfile(archive):
            return archive, member
        first = first or (archive, member)
    return first
