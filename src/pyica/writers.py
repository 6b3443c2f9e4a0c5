"""Score writers: CSV or JSONL rows, written so that no finished work is lost.

While a job runs, rows go to ``OUT.part`` and are flushed after every batch; when the job ends the
file is renamed to ``OUT`` in one atomic step. A job that stopped early leaves ``OUT.part`` behind,
and ``--resume`` continues from it (a half-written last line is dropped and its input is redone).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["ScoreWriter", "read_scores", "write_json_atomic", "write_text_atomic", "replace_atomically", "infer_format", "FORMATS", "SCORE_COLUMNS"]

FORMATS = ("csv", "jsonl")
SCORE_COLUMNS = ("path", "model", "score", "error")


def infer_format(path: str | os.PathLike | None, explicit: str | None = None) -> str:
    """The output format: ``explicit`` if given, else from the extension (``.jsonl``/``.ndjson``), else CSV."""
    if explicit:
        if explicit not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {explicit!r}")
        return explicit
    if path is not None and Path(path).suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl"
    return "csv"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and ``os.replace``."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def replace_atomically(path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call ``write(temp_path)`` on a temporary file next to ``path``, then move it over ``path``.

    Readers see the old file or the new one, never a half-written one, and a failure leaves
    ``path`` as it was. ``suffix`` is the temporary file's extension, for writers that infer the
    format from it (``np.save`` appends ``.npy`` to any other name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`replace_atomically`)."""
    replace_atomically(path, lambda temp: Path(temp).write_text(text, encoding="utf-8", newline=""))


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline: it was being written when the job stopped."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_scores(path: str | os.PathLike, fmt: str | None = None) -> list[dict[str, Any]]:
    """Rows of a score file (CSV or JSONL) as dicts with ``score`` as float or ``None``."""
    path = Path(path)
    fmt = infer_format(path.with_suffix("") if path.suffix == ".part" else path, fmt)
    rows: list[dict[str, Any]] = []
    with open(path, newline="", encoding="utf-8") as f:
        if fmt == "jsonl":
            for line_no, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    break  # torn last line
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
        else:
            for row in csv.DictReader(f):
                score = row.get("score")
                row["score"] = float(score) if score not in (None, "") else None
                row["error"] = row.get("error") or None
                rows.append(row)
    return rows


class ScoreWriter:
    """Writes :class:`~pyica.scoring.ScoreRecord` rows to a file (atomically finished) or to stdout.

    ``resume=True`` continues an earlier run of the same output: ``done`` then holds the paths it
    already wrote, which the caller skips. Without ``resume``, an existing output is an error
    unless ``overwrite=True``.
    """

    def __init__(self, path: str | os.PathLike | None, fmt: str | None = None, resume: bool = False, overwrite: bool = False):
        self.path = Path(path) if path is not None else None
        self.fmt = infer_format(self.path, fmt)
        self.done: set[str] = set()
        self.rows_written = 0
        self._needs_header = True
        if self.path is None:
            self._stream = sys.stdout
            return
        self.part = self.path.with_name(self.path.name + ".part")
        self._prepare(resume, overwrite)
        self._stream = open(self.part, "a", encoding="utf-8", newline="")

    def _prepare(self, resume: bool, overwrite: bool) -> None:
        exists = self.path.exists() or self.part.exists()
        if exists and not (resume or overwrite):
            existing = self.path if self.path.exists() else self.part
            raise FileExistsError(f"{existing} exists: pass --resume to continue it or --overwrite to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            for p in (self.path, self.part):
                if p.exists():
                    p.unlink()
            return
        if self.path.exists() and not self.part.exists():
            os.replace(self.path, self.part)  # continue a finished file: it is renamed back at the end
        if self.part.exists():
            _drop_torn_tail(self.part)
            rows = read_scores(self.part, self.fmt)
            self.done = {str(r["path"]) for r in rows}
            self._needs_header = self.part.stat().st_size == 0

    def write(self, records: Iterable) -> None:
        """Append records and flush, so that a crash loses at most the batch being written."""
        buffer = io.StringIO()
        if self.fmt == "csv":
            writer = csv.writer(buffer, lineterminator="\n")
            if self._needs_header:
                writer.writerow(SCORE_COLUMNS)
                self._needs_header = False
            for r in records:
                writer.writerow([r.path, r.model, "" if r.score is None else repr(r.score), r.error or ""])
                self.rows_written += 1
        else:
            for r in records:
                buffer.write(json.dumps(r.as_dict(), ensure_ascii=False) + "\n")
                self.rows_written += 1
        self._stream.write(buffer.getvalue())
        self._stream.flush()

    def close(self, finished: bool = True) -> None:
        """Close; when ``finished``, atomically rename ``OUT.part`` to ``OUT``."""
        if self.path is None:
            self._stream.flush()
            return
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        if finished:
            os.replace(self.part, self.path)
