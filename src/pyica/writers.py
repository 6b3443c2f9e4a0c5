"""Score writers: CSV or JSONL rows, written so that no finished work is lost.

While a job runs, rows go to ``OUT.part`` and are flushed after every batch; when the job ends the
file is renamed to ``OUT`` in one atomic step. A job that stopped early (even by ``kill -9``) leaves
``OUT.part`` behind, and ``--resume`` continues from it: the file is cut after its last complete row
(a half-written line, or a CSV record torn inside a quoted field, is dropped and its input redone),
so every input ends up in the output exactly once. Resuming reads the file once, streaming; what it
keeps in memory is the set of paths already written.
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
from typing import Any, Callable, Iterable, Iterator

__all__ = ["ScoreWriter", "read_scores", "iter_scores", "write_json_atomic", "write_text_atomic", "replace_atomically", "infer_format", "FORMATS", "SCORE_COLUMNS",
           "drop_torn_tail"]

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


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline: it was being written when the job stopped.

    Reads only the file's tail (backwards, in blocks), not the whole file.
    """
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            if pos == end and block.endswith(b"\n"):
                return  # the file ends with a whole line
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            pos = start
        if end:
            f.truncate(0)  # not one whole line


def _csv_records(f, consumed: list[int]) -> Iterator[list[str]]:
    """CSV records of the binary file ``f``; ``consumed[0]`` is the byte length of the records read so far.

    Stops before a last line with no newline, and before a last record torn inside a quoted field
    (``csv`` reads a record's lines only as it needs them, so the count is exact after each record).
    """
    position = [0]

    def lines():
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            position[0] += len(raw)
            yield raw.decode("utf-8")

    reader = csv.reader(lines(), strict=True)
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error:  # the file ends inside a quoted field: a torn record
            return
        consumed[0] = position[0]
        yield record


def iter_scores(path: str | os.PathLike, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a score file (CSV or JSONL), streamed, as dicts with ``score`` as float or ``None``.

    A JSONL line with no newline (torn) is left out; CSV is read as any CSV file.
    """
    path = Path(path)
    fmt = infer_format(path.with_suffix("") if path.suffix == ".part" else path, fmt)
    with open(path, newline="", encoding="utf-8") as f:
        if fmt == "jsonl":
            for line_no, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    break  # torn last line
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
        else:
            for row in csv.DictReader(f):
                score = row.get("score")
                row["score"] = float(score) if score not in (None, "") else None
                row["error"] = row.get("error") or None
                yield row


def read_scores(path: str | os.PathLike, fmt: str | None = None) -> list[dict[str, Any]]:
    """Rows of a score file (CSV or JSONL) as dicts with ``score`` as float or ``None`` (see :func:`iter_scores`)."""
    return list(iter_scores(path, fmt))


def _complete_rows(part: Path, fmt: str) -> tuple[set[str], bool]:
    """Cut ``part`` after its last complete row; return the paths of its rows and whether it has a header.

    One streaming pass: nothing but the set of paths is kept.
    """
    drop_torn_tail(part)
    done: set[str] = set()
    if fmt == "jsonl":
        for row in iter_scores(part, fmt):
            done.add(str(row["path"]))
        return done, False
    consumed = [0]
    with open(part, "rb") as f:
        records = _csv_records(f, consumed)
        header = next(records, None)
        if header is not None and header[:1] != ["path"]:
            raise ValueError(f"{part}: not a pyica score file (first row {header!r}, expected {list(SCORE_COLUMNS)})")
        for record in records:
            if record:
                done.add(record[0])
    if part.stat().st_size > consumed[0]:
        with open(part, "rb+") as f:
            f.truncate(consumed[0])
    return done, header is not None


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
            self.done, has_header = _complete_rows(self.part, self.fmt)
            self._needs_header = not has_header

    def write(self, records: Iterable) -> None:
        """Append records and flush, so that a crash loses at most the batch being written."""
        buffer = io.StringIO()
        if self.fmt == "csv":
            writer = csv.writer(buffer, lineterminator="\n")
            if self._needs_header:
                writer.writerow(SCORE_COLUMNS)
                self._needs_header = False
            for r in records:  # error messages on one line, so that a row is one line whenever the path is
                error = " ".join((r.error or "").splitlines())
                writer.writerow([r.path, r.model, "" if r.score is None else repr(r.score), error])
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
