"""Output files of batch jobs (scores, captions): written so that no work is lost and nothing is destroyed.

The rules, enforced by :class:`OutputFile` for every job that writes rows:

* pyica never deletes, truncates or renames over a file this run did not create. An existing
  output needs ``--resume`` (continue it) or ``--overwrite`` (replace it, at the end, atomically);
  a folder, an input of the same run, or anything that is not a regular file is refused; a FIFO or
  character device is written straight into (no temporary file, no rename, no resume).
* While a job runs, rows go to ``OUT.part`` and are flushed after every batch; at the end the file
  is renamed to ``OUT`` in one atomic step. ``OUT.lock`` (a lock file, left in place) keeps a second
  run off the same output: it refuses at once, naming the holder, or waits with ``wait=True``.
* ``OUT.meta.json`` records what wrote the rows (model, weights, format, ...: the job's *identity*),
  from the start of the run. ``--resume`` with another identity is refused, naming what differs.
* A job that stopped early (even by ``kill -9``) leaves ``OUT.part``; ``--resume`` continues from it:
  the file is cut after its last complete row (a half-written line, or a CSV record torn inside a
  quoted field, is dropped and its input redone), so every input ends up exactly once. Resuming a
  finished ``OUT`` copies it to ``OUT.part`` first; ``OUT`` is replaced only when the job finishes.
  Resuming reads the file once, streaming; what it keeps in memory is the set of paths written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = ["ScoreWriter", "OutputFile", "OutputRefused", "read_scores", "iter_scores", "write_parquet", "write_json_atomic",
           "write_text_atomic", "replace_atomically", "infer_format", "FORMATS", "SCORE_COLUMNS", "drop_torn_tail",
           "text_safe", "current_umask"]

FORMATS = ("csv", "tsv", "jsonl", "parquet")
SCORE_COLUMNS = ("path", "model", "score", "error")
#: File extensions of each format (``-o`` picks the format from them).
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}
#: The rows of a running job (``OUT.part``) are appended as text: Parquet files are written whole at
#: the end, from JSONL rows.
PART_FORMAT = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "parquet": "jsonl"}
_DELIMITER = {"csv": ",", "tsv": "\t"}


def infer_format(path: str | os.PathLike | None, explicit: str | None = None) -> str:
    """The output format: ``explicit`` if given, else from the extension (:data:`EXTENSIONS`); CSV for
    stdout, a name without extension, a FIFO or a device. An unknown extension is refused, so that
    ``-o x.xlsx`` never silently writes CSV."""
    if explicit:
        if explicit not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {explicit!r}")
        return explicit
    if path is None:
        return "csv"
    name = Path(path)
    if name.suffix.lower() == ".part":  # a running job's rows: the format of the file it becomes
        return PART_FORMAT[infer_format(name.with_suffix(""))]
    suffix = name.suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    if not suffix or _file_kind(name) == "stream":
        return "csv"
    raise ValueError(f"{path}: unknown output format {suffix!r}; use one of "
                     f"{', '.join(sorted(EXTENSIONS))}, or name the format with --format")


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
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp makes 0600; the result should be like any file the user writes
        write(temp)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


def text_safe(text: str) -> str:
    """``text`` writable as UTF-8: a file name that is not valid UTF-8 (held by Python as surrogate
    escapes) gets its stray bytes written as ``\\xNN``, so output files stay valid UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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


def _csv_records(f, consumed: list[int], delimiter: str = ",") -> Iterator[list[str]]:
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

    reader = csv.reader(lines(), strict=True, delimiter=delimiter)
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
    """Rows of a score file (CSV, TSV, JSONL or Parquet), streamed, as dicts with ``score`` as float or ``None``.

    A JSONL line with no newline (torn) is left out; CSV and TSV are read as any such file.
    """
    path = Path(path)
    fmt = infer_format(path, fmt)
    if fmt == "parquet":
        yield from _parquet_rows(path)
        return
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
            for row in csv.DictReader(f, delimiter=_DELIMITER[fmt]):
                score = row.get("score")
                try:
                    row["score"] = float(score) if score not in (None, "") else None
                except ValueError:
                    raise ValueError(f"{path}: score {score!r} of {row.get('path')!r} is not a number") from None
                row["error"] = row.get("error") or None
                yield row


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    pq = _pyarrow_parquet()
    try:
        table = pq.ParquetFile(path)
        for batch in table.iter_batches():
            yield from batch.to_pylist()
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        if isinstance(err, ImportError):
            raise
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("Parquet needs pyarrow: pip install 'pyica[parquet]'") from None
    return pq


def write_parquet(path: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: Iterable[str] = SCORE_COLUMNS,
                  types: dict[str, str] | None = None) -> None:
    """Write ``rows`` (dicts) as one Parquet file, atomically. ``score`` is float64, the rest strings, unless
    ``types`` names a column's pyarrow type (e.g. ``{"x": "int64"}``)."""
    pq = _pyarrow_parquet()
    import pyarrow as pa

    columns = list(columns)
    types = {"score": pa.float64(), **{c: pa.type_for_alias(t) for c, t in (types or {}).items()}}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in columns])

    def write(temp: str) -> None:
        with pq.ParquetWriter(temp, schema) as writer:
            chunk: list[dict[str, Any]] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) >= 65536:
                    writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                    chunk = []
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))  # (a file with no rows keeps its schema)

    replace_atomically(path, write, suffix=".parquet")


def read_scores(path: str | os.PathLike, fmt: str | None = None) -> list[dict[str, Any]]:
    """Rows of a score file (CSV or JSONL) as dicts with ``score`` as float or ``None`` (see :func:`iter_scores`)."""
    return list(iter_scores(path, fmt))



class OutputRefused(ValueError):
    """An output this job may not write (exists, is a folder or an input, locked, another identity).

    The message is one line naming the file and what to do instead.
    """


def _complete_rows(part: Path, fmt: str, model: str | None = None) -> tuple[set[str], bool, int]:
    """Cut ``part`` after its last complete row; return the paths of its rows, whether it has a header
    and how many of its rows are error rows.

    One streaming pass: nothing but the set of paths is kept. With ``model``, a row of another model
    is refused (the file was written by another job).
    """
    drop_torn_tail(part)
    done: set[str] = set()
    errors = 0

    def check_model(found) -> None:
        if model is not None and found not in (None, "", model):
            raise OutputRefused(f"{part}: holds rows of model {found!r}, this run scores with {model!r}: "
                                "use another output, or --overwrite to start over")

    if fmt == "jsonl":
        for row in iter_scores(part, fmt):
            done.add(str(row["path"]))
            errors += bool(row.get("error"))
            check_model(row.get("model"))
        return done, False, errors
    consumed = [0]
    with open(part, "rb") as f:
        records = _csv_records(f, consumed, _DELIMITER[fmt])
        header = next(records, None)
        if header is not None and header[:1] != ["path"]:
            raise OutputRefused(f"{part}: not a pyica score file (first row {header!r}, expected {list(SCORE_COLUMNS)})")
        model_column = header.index("model") if header and "model" in header else None
        error_column = header.index("error") if header and "error" in header else None
        for record in records:
            if record:
                done.add(record[0])
                errors += error_column is not None and len(record) > error_column and bool(record[error_column])
                if model_column is not None and len(record) > model_column:
                    check_model(record[model_column])
    if part.stat().st_size > consumed[0]:
        with open(part, "rb+") as f:
            f.truncate(consumed[0])
    return done, header is not None, errors


def _sniff_format(path: Path) -> str | None:
    """The format of a score file from its first bytes (``csv``, ``tsv``, ``jsonl``, ``parquet``);
    ``None`` when empty; refused when it is none of them."""
    with open(path, "rb") as f:
        first = f.readline(65536)
    if first.startswith(b"PAR1"):
        return "parquet"
    first = first.lstrip(b"\xef\xbb\xbf").strip()
    if not first:
        return None
    if first.startswith(b"{"):
        return "jsonl"
    if first.split(b"\t")[0] == b"path" and b"\t" in first:
        return "tsv"
    if first.split(b",")[0].strip(b'"') == b"path":
        return "csv"
    raise OutputRefused(f"{path}: not a pyica output file (first line {first[:60]!r}): refusing to resume or append to it")


def _file_kind(path: Path) -> str:
    """``missing``, ``file``, ``folder``, ``stream`` (FIFO or character device) or ``other``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing" if not os.path.islink(path) else "file"  # a dangling link is replaced like a file
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return "stream"
    return "other"


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


class OutputFile:
    """One output file of a batch job: checks, lock, identity, ``OUT.part``, atomic finish (see the module).

    ``identity`` describes what writes the rows (model, weights hash, format, ...); it is recorded in
    ``OUT.meta.json`` and compared on ``resume``. ``reads`` are the files this job reads (the output
    must not be one of them). ``model`` (score files) refuses to resume a file holding rows of another
    model even when its sidecar is gone. After construction, ``done`` holds the paths already written.
    ``columns`` and ``column_types`` (see :func:`write_parquet`): the rows' columns, for a Parquet output,
    whose rows are written whole at the end; the first column is always ``path``.
    """

    def __init__(self, path: str | os.PathLike, fmt: str, *, identity: dict[str, Any] | None = None,
                 resume: bool = False, overwrite: bool = False, reads: Iterable[str | os.PathLike] = (),
                 wait: bool = False, model: str | None = None, columns: Iterable[str] = SCORE_COLUMNS,
                 column_types: dict[str, str] | None = None):
        self.path = Path(path)
        self.fmt = fmt
        self.columns, self.column_types = tuple(columns), dict(column_types or {})
        self.part_fmt = PART_FORMAT.get(fmt, fmt)  # the rows of OUT.part (JSONL while a Parquet job runs)
        self.identity = dict(identity or {}, format=fmt)
        self.part = self.path.with_name(self.path.name + ".part")
        self.meta_path = self.path.with_name(self.path.name + ".meta.json")
        self.done: set[str] = set()
        self.done_errors = 0  # error rows among them
        self.has_header = False
        self.rows_written = 0
        self._lock = None
        self._created: list[Path] = []  # files this run made, removed if it ends before writing a row
        kind = _file_kind(self.path)
        if kind == "folder":
            raise OutputRefused(f"{self.path} is a folder: give a file name, e.g. {self.path / ('scores.' + fmt)}")
        if kind == "other":
            raise OutputRefused(f"{self.path} is not a regular file (a socket or block device): refusing to write to it")
        for source in reads:
            if any(_same_file(source, p) for p in (self.path, self.part, self.meta_path) if os.path.lexists(p)):
                raise OutputRefused(f"{self.path} is also an input of this run ({source}): choose another output")
        self.streaming = kind == "stream"
        if self.streaming:  # a FIFO or device: written straight into; there is nothing to rename or resume
            if resume:
                raise OutputRefused(f"{self.path} is a FIFO or device: it cannot be resumed")
            if fmt == "parquet":
                raise OutputRefused(f"{self.path} is a FIFO or device: Parquet is written whole, to a file")
            self.stream = open(self.path, "w", encoding="utf-8", newline="")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire(wait)
        try:
            self._prepare(resume, overwrite)
            self.stream = open(self.part, "a", encoding="utf-8", newline="")
        except BaseException:
            self._remove_created()
            self._release()
            raise

    # --- setup ---------------------------------------------------------------------------------------------

    def _acquire(self, wait: bool) -> None:
        import filelock

        lock = filelock.FileLock(str(self.path) + ".lock")
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except filelock.Timeout:
            holder = (self._read_meta() or {}).get("running") or {}
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_utc')}"
                   if holder else "another process")
            raise OutputRefused(f"{self.path} is being written by another pyica run ({who}): wait for it to "
                                "finish, or pass --wait") from None
        except OSError as err:
            raise OutputRefused(f"{self.path}.lock: cannot create the lock file ({err.strerror or err})") from None
        self._lock = lock

    def _read_meta(self) -> dict | None:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def _prepare(self, resume: bool, overwrite: bool) -> None:
        existing = [p for p in (self.path, self.part) if os.path.lexists(p)]
        for p in existing:
            if _file_kind(p) not in ("file", "missing"):
                raise OutputRefused(f"{p} is not a regular file: refusing to replace it")
        if existing and not (resume or overwrite):
            raise OutputRefused(f"{existing[0]} exists: pass --resume to continue it or --overwrite to replace it")
        if self.meta_path.exists() and not (resume or overwrite) and self._read_meta() is None:
            raise OutputRefused(f"{self.meta_path} exists and is not a pyica sidecar: refusing to replace it")
        if resume and existing:
            self._check_identity()
            source, expected = (self.part, self.part_fmt) if self.part.exists() else (self.path, self.fmt)
            sniffed = _sniff_format(source)
            if sniffed is not None and sniffed != expected:
                raise OutputRefused(f"{source} holds {sniffed.upper()} rows but this run writes {expected.upper()}: "
                                    "resume with the same format, or choose another output")
            if not self.part.exists():  # continue a finished file on a copy: OUT is replaced only at the end
                self._created.append(self.part)
                if self.fmt == "parquet":
                    rows = iter_scores(self.path, "parquet")
                    write_text_atomic(self.part, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                else:
                    shutil.copyfile(self.path, self.part)
            self.done, self.has_header, self.done_errors = _complete_rows(self.part, self.part_fmt,
                                                                          self.identity.get("model"))
        else:
            # a fresh start; with --overwrite, OUT is replaced only when this run finishes
            if not self.part.exists():
                self._created.append(self.part)
            with open(self.part, "w", encoding="utf-8"):
                pass
        if not self.meta_path.exists():
            self._created.append(self.meta_path)
        self.write_meta({"status": "running"})

    def _check_identity(self) -> None:
        recorded = (self._read_meta() or {}).get("identity")
        if not isinstance(recorded, dict):
            return  # written before sidecars recorded identities: the format and model checks still apply
        differ = [f"{key} was {recorded.get(key)!r}, now {value!r}" for key, value in self.identity.items()
                  if key in recorded and recorded.get(key) != value]
        if differ:
            raise OutputRefused(f"{self.path} was written by another setup ({'; '.join(differ)}): resume with "
                                "the same settings, use another output, or --overwrite to start over")

    # --- rows and the end ----------------------------------------------------------------------------------

    def write_meta(self, fields: dict[str, Any]) -> None:
        """Write ``OUT.meta.json``: ``fields`` plus the identity (and, while running, who holds the lock)."""
        if self.streaming:
            return
        meta = {**fields, "identity": self.identity}
        if fields.get("status") == "running":
            meta["running"] = {"pid": os.getpid(), "host": socket.gethostname(),
                               "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json_atomic(self.meta_path, meta)

    def write(self, text: str, rows: int) -> None:
        """Append ``text`` (whole rows) and flush, so that a crash loses at most the rows being written."""
        self.stream.write(text)
        self.stream.flush()
        self.rows_written += rows

    def finish(self, meta: dict[str, Any] | None = None) -> None:
        """Close and atomically rename ``OUT.part`` to ``OUT``; record ``meta`` in the sidecar."""
        try:
            self.stream.flush()
            if self.streaming:
                self.stream.close()
                return
            os.fsync(self.stream.fileno())
            self.stream.close()
            if self.fmt == "parquet":  # written whole from the part's JSONL rows, then the part goes
                write_parquet(self.path, iter_scores(self.part, "jsonl"), self.columns, self.column_types)
                self.part.unlink()
            else:
                os.replace(self.part, self.path)
            self.write_meta({"status": "finished", **(meta or {})})
        finally:
            self._release()

    def abort(self, discard: bool = False) -> None:
        """Close after a failure: ``OUT.part`` stays for ``--resume``, unless this run made it and wrote
        nothing, or ``discard`` (the rows are derived data not worth resuming): then what this run made goes."""
        try:
            with contextlib.suppress(OSError, ValueError):
                self.stream.close()
            if not self.streaming and (discard or self.rows_written == 0):
                self._remove_created()
        finally:
            self._release()

    def _remove_created(self) -> None:
        for p in self._created:
            with contextlib.suppress(OSError):
                p.unlink()
        self._created = []

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class ScoreWriter:
    """Writes :class:`~pyica.scoring.ScoreRecord` rows as CSV or JSONL to an :class:`OutputFile` or to stdout.

    ``resume=True`` continues an earlier run of the same output: ``done`` then holds the paths it
    already wrote (as :func:`text_safe` writes them), which the caller skips. Without ``resume``, an
    existing output is refused unless ``overwrite=True``. ``identity``, ``reads`` and ``wait`` go to
    :class:`OutputFile`.
    """

    def __init__(self, path: str | os.PathLike | None, fmt: str | None = None, resume: bool = False,
                 overwrite: bool = False, *, identity: dict[str, Any] | None = None,
                 reads: Iterable[str | os.PathLike] = (), wait: bool = False):
        self.path = Path(path) if path is not None else None
        self.fmt = infer_format(self.path, fmt)
        if self.path is None and self.fmt == "parquet":
            raise ValueError("Parquet is written to a file: give -o NAME.parquet")
        self.rows_format = PART_FORMAT[self.fmt]  # what write() produces: JSONL rows for a Parquet output
        self.rows_written = 0
        self._needs_header = True
        self.output: OutputFile | None = None
        self.done: set[str] = set()
        self.done_errors = 0
        if self.path is None:
            self._stream = sys.stdout
            return
        identity = dict(identity or {})
        self.output = OutputFile(self.path, self.fmt, identity=identity, resume=resume, overwrite=overwrite,
                                 reads=reads, wait=wait, model=identity.get("model"))
        self.done, self.done_errors = self.output.done, self.output.done_errors
        self._needs_header = not self.output.has_header

    def write(self, records: Iterable) -> None:
        """Append records and flush, so that a crash loses at most the batch being written."""
        buffer = io.StringIO()
        count = 0
        if self.rows_format in ("csv", "tsv"):
            delimiter = _DELIMITER[self.rows_format]
            plain = csv.writer(buffer, lineterminator="\n", delimiter=delimiter)
            quoted = csv.writer(buffer, lineterminator="\n", delimiter=delimiter, quoting=csv.QUOTE_ALL)
            if self._needs_header:
                plain.writerow(SCORE_COLUMNS)
                self._needs_header = False
            for r in records:  # error messages on one line, so that a row is one line whenever the path is
                error = text_safe(" ".join((r.error or "").splitlines()))
                path = text_safe(r.path)
                row = [path, r.model, "" if r.score is None else repr(r.score), error]
                # csv quotes a field holding "\n" but not one holding only "\r": quote every field of such a row
                (quoted if "\r" in path else plain).writerow(row)
                count += 1
        else:
            for r in records:
                row = {**r.as_dict(), "path": text_safe(r.path), "error": text_safe(r.error) if r.error else r.error}
                buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        self.rows_written += count
        if self.output is None:
            self._stream.write(buffer.getvalue())
            self._stream.flush()
        else:
            self.output.write(buffer.getvalue(), count)

    def close(self, finished: bool = True, meta: dict[str, Any] | None = None, discard: bool = False) -> None:
        """Close; when ``finished``, atomically rename ``OUT.part`` to ``OUT`` (``meta`` goes to the sidecar);
        else keep ``OUT.part`` for ``--resume`` (``discard``: remove what this run created)."""
        if self.output is None:
            self._stream.flush()
        elif finished:
            self.output.finish(meta)
        else:
            self.output.abort(discard=discard)
