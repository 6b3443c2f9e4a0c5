"""``pyica select``: choose images from finished score files, list them in a manifest, copy or link them.

Reading: every row of one or more score files (CSV, TSV, JSONL, Parquet; merged outputs of sharded or
Ray runs; manifests this module wrote), concatenated. Rows of several models need ``model`` to choose
one; a path listed twice is refused (which score counts would be a guess). A row without a finite score
is an *error row*.

Filters, in this order, each on what the previous one kept (``--errors`` instead selects the error rows
and takes no other filter):

1. ``min_score`` / ``max_score``: the score lies in the range (bounds included);
2. ``quantile=(lo, hi)``: the score lies between the lo and hi quantiles of the scores left (linear
   interpolation between order statistics, as numpy's default);
3. ``top`` / ``bottom``: the K highest / lowest scores left (both: the union of the two ends);
4. ``balance``: N rows spread evenly over the scores left: the sorted scores are cut into N bins of
   equal count and the row at each bin's centre is taken (all rows when there are no more than N).

With ``per_folder``, steps 2-4 run within each source folder (a member of an archive: its folder
inside the archive), e.g. per class. Ties are broken by path, so a selection is deterministic.
``rank`` is a row's 1-based position by descending score among all scored rows read (within its folder
with ``per_folder``), before any filter: where the image sits in the whole file. ``reason`` names the
filters the row passed.

Copying (:func:`copy_selected`): into DEST, keeping the sources' folder layout relative to their common
folder (or ``relative_to``); ``ARCHIVE:MEMBER`` becomes ``ARCHIVE/MEMBER``, read from the archive
(copies only). The originals are only read. Nothing is written outside DEST and nothing in it is
overwritten, whatever the score file says: names are checked part by part (no ``..``, no absolute
member names, no NUL), folders inside DEST are opened one at a time relative to their parent without
following symbolic links (a link planted inside DEST is refused, not followed), and a copy is written
to a temporary file and then hard-linked to its name, which fails if the name exists, so an
interrupted copy never leaves a half file under the final name. This module imports no torch.
"""

from __future__ import annotations

import csv
import errno
import glob
import io
import json
import logging
import math
import os
import secrets
import stat
import sys
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Sequence

from .archive_names import split_archive_member
from .writers import PART_FORMAT, OutputFile, infer_format, iter_scores, text_safe

__all__ = ["SelectedRow", "Selection", "CopyReport", "MANIFEST_COLUMNS", "COPY_MODES", "select", "select_rows",
           "copy_selected", "plan_copies", "destinations_existing", "open_manifest", "write_manifest",
           "shown"]

log = logging.getLogger("pyica")

MANIFEST_COLUMNS = ("path", "model", "score", "rank", "reason", "error")
COPY_MODES = ("copy", "hardlink", "symlink")

# Archive names as `pyica score` reads them (pyica.inputs, which imports torch, so repeated here as data).
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SelectedRow:
    """One selected row: the source path (as in the score file), model, score (``None`` for an error
    row), rank (1 = highest score; ``None`` for an error row), why it was selected, and its error."""

    path: str
    model: str | None
    score: float | None
    rank: int | None
    reason: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Row:
    """A row as read: slots, not a dict, since a merged file may hold millions of them (all kept for ranking)."""

    path: str
    model: str | None
    score: float | None
    error: str | None
    file: int  # index of the score file it came from
    rank: int = 0
    why: list[str] | None = None  # the filters it passed


@dataclass
class Selection:
    """What :func:`select_rows` found: the rows, and how many rows were left after each step."""

    rows: list[SelectedRow]
    steps: list[tuple[str, int]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    model: str | None = None
    read: int = 0
    scored: int = 0
    errors: int = 0
    root: str | None = None  # the common folder of every row read: copies keep their layout below it

    @property
    def score_range(self) -> tuple[float, float] | None:
        scores = [r.score for r in self.rows if r.score is not None]
        return (min(scores), max(scores)) if scores else None


def shown(text: str) -> str:
    """``text`` (a path from a score file) fit for one line of a terminal: control characters (newlines,
    escape sequences) written as ``\\n``, ``\\x1b``, ..., stray bytes as ``\\xNN``."""
    text = text_safe(str(text))
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


# --- reading ---------------------------------------------------------------------------------------------


def _expand(files: Iterable[str | os.PathLike]) -> list[str]:
    """Score file names, a quoted glob (``'scores.rank*of8.csv'``) expanded when no file has that name."""
    out: list[str] = []
    for item in files:
        name = os.fspath(item)
        if not os.path.exists(name) and any(c in name for c in "*?["):
            matches = sorted(glob.glob(name))
            if not matches:
                raise FileNotFoundError(f"{name}: no score file matches this pattern")
            out.extend(matches)
        else:
            out.append(name)
    if not out:
        raise ValueError("select needs at least one score file")
    return out


def _read_file(name: str, index: int) -> list[_Row]:
    """The rows of one score file (the ``index``-th); one line naming the file on any problem."""
    if os.path.isdir(name):
        raise ValueError(f"{name}: a folder, not a score file")
    if not os.path.exists(name):
        raise FileNotFoundError(f"{name}: score file not found")
    sidecar = Path(name + ".meta.json")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("status") == "running":
        log.warning("%s: its run has not finished (sidecar status 'running'): selecting from the rows it holds",
                    shown(name))
    rows = []
    try:
        for line, row in enumerate(iter_scores(name), 1):
            if not isinstance(row, dict) or row.get("path") in (None, ""):
                raise ValueError(f"{name}: not a pyica score file (row {line} has no 'path')")
            score = row.get("score")
            if score in (None, ""):
                value = None
            else:
                try:
                    value = float(score)
                except (TypeError, ValueError):
                    raise ValueError(f"{name}: score {score!r} of {shown(str(row['path']))} is not a number") from None
            model = row.get("model")
            error = row.get("error")
            rows.append(_Row(str(row["path"]), str(model) if model not in (None, "") else None, value,
                             str(error) if error not in (None, "") else None, index))
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a UTF-8 score file") from None
    except csv.Error as err:
        raise ValueError(f"{name}: not a readable CSV file ({err})") from None
    except ValueError as err:
        message = str(err)
        raise ValueError(message if message.startswith(name) else f"{name}: {message}") from None
    return rows


def _read_all(files: list[str], model: str | None) -> tuple[list[_Row], str | None]:
    """Rows of every file, of one model (``model``, or the files' only one); a path twice is refused."""
    rows: list[_Row] = []
    for index, name in enumerate(files):
        rows.extend(_read_file(name, index))
    models = sorted({r.model for r in rows if r.model is not None})
    if model is not None:
        if model not in models:
            held = ", ".join(repr(m) for m in models) or "rows without a model column"
            raise ValueError(f"{', '.join(files)}: no rows of model {model!r} (the files hold {held})")
        rows = [r for r in rows if r.model == model]
    elif len(models) > 1:
        raise ValueError(f"{', '.join(files)}: rows of {len(models)} models ({', '.join(map(repr, models))}); "
                         "choose one with -m/--model")
    seen: dict[str, int] = {}
    for r in rows:
        if r.path in seen:
            first, again = files[seen[r.path]], files[r.file]
            where = again if first == again else f"{first} and {again}"
            raise ValueError(f"{where}: {shown(r.path)} is listed more than once; which score counts is "
                             "ambiguous: remove the duplicates (or pyica merge the parts, which refuses overlaps)")
        seen[r.path] = r.file
    return rows, (model if model is not None else (models[0] if models else None))


# --- selecting -------------------------------------------------------------------------------------------


def _absolute_folder(folder: str, cache: dict[str, str]) -> str:
    """``os.path.abspath(folder)``, remembered: a file holds millions of paths in a few folders."""
    found = cache.get(folder)
    if found is None:
        found = cache[folder] = os.path.abspath(folder)
    return found


def _folder(path: str, cache: dict[str, str]) -> str:
    """The group of ``path`` for ``per_folder``: its folder; a member's folder inside its archive."""
    split = split_archive_member(path)
    if split is not None:
        archive, member = split
        inner = member.rsplit("/", 1)[0] if "/" in member else ""
        return f"{os.path.abspath(archive)}:{inner}"
    return _absolute_folder(os.path.dirname(path), cache)


def _anchor(path: str, cache: dict[str, str]) -> str:
    """The folder a source's copy is laid out from: a file's folder; an archive member's archive's folder."""
    split = split_archive_member(path)
    return _absolute_folder(os.path.dirname(path if split is None else split[0]), cache)


def _common_folder(paths: Iterable[str]) -> str | None:
    cache: dict[str, str] = {}
    anchors = {_anchor(p, cache) for p in paths if "\0" not in p}
    return os.path.commonpath(sorted(anchors)) if anchors else None


def _num(x: float) -> str:
    """``x`` short when that is exact (2, 0.5), else in full."""
    return f"{x:g}" if float(f"{x:g}") == x else repr(x)


def _quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted ``values``, interpolated linearly between order statistics."""
    position = round(q * (len(values) - 1), 9)  # 0.7 * 10 must be position 7, not 7.000000000000001
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def _parse_quantile(quantile) -> tuple[float, float] | None:
    if quantile is None:
        return None
    if isinstance(quantile, str):
        lo_text, sep, hi_text = quantile.partition(":")
        try:
            lo, hi = float(lo_text), float(hi_text)
        except ValueError:
            raise ValueError(f"quantile must be LO:HI with 0 <= LO <= HI <= 1, e.g. 0.9:1, not {quantile!r}") from None
        if not sep:
            raise ValueError(f"quantile must be LO:HI with 0 <= LO <= HI <= 1, e.g. 0.9:1, not {quantile!r}")
    else:
        lo, hi = (float(x) for x in quantile)
    if not (0 <= lo <= hi <= 1):
        raise ValueError(f"quantile must be LO:HI with 0 <= LO <= HI <= 1, not {lo:g}:{hi:g}")
    return lo, hi


def _check_filters(min_score, max_score, quantile, top, bottom, balance, per_folder, errors) -> None:
    for name, value in (("min", min_score), ("max", max_score)):
        if value is not None and not math.isfinite(float(value)):
            raise ValueError(f"--{name} must be a finite number, not {value!r}")
    if min_score is not None and max_score is not None and float(min_score) > float(max_score):
        raise ValueError(f"--min {_num(float(min_score))} is above --max {_num(float(max_score))}: nothing can be "
                         "selected")
    for name, value in (("top", top), ("bottom", bottom), ("balance", balance)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"--{name} must be a whole number of at least 1, not {value!r}")
    ranked = quantile is not None or top is not None or bottom is not None or balance is not None
    if errors and (ranked or min_score is not None or max_score is not None or per_folder):
        raise ValueError("--errors selects the rows that failed (they have no score): it takes no score filter")
    if per_folder and not ranked:
        raise ValueError("--per-folder applies --top, --bottom, --quantile or --balance within each folder: "
                         "give one of them")


def select_rows(scores: str | os.PathLike | Iterable[str | os.PathLike], *, model: str | None = None,
                min_score: float | None = None, max_score: float | None = None,
                quantile: str | tuple[float, float] | None = None, top: int | None = None,
                bottom: int | None = None, balance: int | None = None, per_folder: bool = False,
                errors: bool = False) -> Selection:
    """Apply the filters (module docstring) to the rows of ``scores``; the rows and the count after each step."""
    files = _expand([scores] if isinstance(scores, (str, os.PathLike)) else list(scores))
    bounds = _parse_quantile(quantile)
    _check_filters(min_score, max_score, bounds, top, bottom, balance, per_folder, errors)
    rows, chosen = _read_all(files, model)
    scored = [r for r in rows if r.score is not None and math.isfinite(r.score)]
    failed = [r for r in rows if not (r.score is not None and math.isfinite(r.score))]
    result = Selection(rows=[], files=files, model=chosen, read=len(rows), scored=len(scored), errors=len(failed),
                       root=_common_folder(r.path for r in rows))
    if errors:
        result.rows = [SelectedRow(r.path, r.model, None, None, "error",
                                   r.error or ("score is not finite" if r.score is not None else None))
                       for r in failed]
        result.steps.append(("--errors", len(result.rows)))
        return result

    folders: dict[str, str] = {}

    def group_of(r: _Row) -> str:
        return _folder(r.path, folders) if per_folder else ""

    groups: dict[str, list[_Row]] = {}
    for r in scored:
        groups.setdefault(group_of(r), []).append(r)
    for members in groups.values():  # rank before any filter: where the image sits in its file (or folder)
        for i, r in enumerate(sorted(members, key=lambda r: (-r.score, r.path)), 1):
            r.rank = i
    where = " in its folder" if per_folder else ""

    def keep(members: list[_Row], passed: Callable[[_Row], str | None]) -> list[_Row]:
        out = []
        for r in members:
            why = passed(r)
            if why is not None:
                r.why = [*(r.why or []), why]
                out.append(r)
        return out

    if min_score is not None or max_score is not None:
        lo = -math.inf if min_score is None else float(min_score)
        hi = math.inf if max_score is None else float(max_score)
        label = " and ".join(x for x in (f"score >= {_num(lo)}" if min_score is not None else "",
                                         f"score <= {_num(hi)}" if max_score is not None else "") if x)
        groups = {g: keep(m, lambda r: label if lo <= r.score <= hi else None) for g, m in groups.items()}
        flags = " ".join(x for x in (f"--min {_num(lo)}" if min_score is not None else "",
                                     f"--max {_num(hi)}" if max_score is not None else "") if x)
        result.steps.append((flags, sum(map(len, groups.values()))))
    if bounds is not None:
        def in_quantiles(members: list) -> list:
            if not members:
                return members
            values = sorted(r.score for r in members)
            low, high = _quantile(values, bounds[0]), _quantile(values, bounds[1])
            label = f"quantile {bounds[0]:g}:{bounds[1]:g}{where}"
            return keep(members, lambda r: label if low <= r.score <= high else None)

        groups = {g: in_quantiles(m) for g, m in groups.items()}
        result.steps.append((f"--quantile {bounds[0]:g}:{bounds[1]:g}", sum(map(len, groups.values()))))
    if top is not None or bottom is not None:
        def ends(members: list) -> list:
            order = sorted(members, key=lambda r: (-r.score, r.path))
            chosen_ids: dict[int, list[str]] = {}
            for r in order[:top or 0]:
                chosen_ids.setdefault(id(r), []).append(f"top {top}{where}")
            for r in order[::-1][:bottom or 0]:
                chosen_ids.setdefault(id(r), []).append(f"bottom {bottom}{where}")
            return keep(members, lambda r: ", ".join(chosen_ids[id(r)]) if id(r) in chosen_ids else None)

        groups = {g: ends(m) for g, m in groups.items()}
        flags = " ".join(x for x in (f"--top {top}" if top is not None else "",
                                     f"--bottom {bottom}" if bottom is not None else "") if x)
        result.steps.append((flags, sum(map(len, groups.values()))))
    if balance is not None:
        def balanced(members: list) -> list:
            order = sorted(members, key=lambda r: (r.score, r.path))
            n = len(order)
            if n <= balance:
                picks = {id(r): f"balance {i + 1}/{n}{where}" for i, r in enumerate(order)}
            else:  # bin b holds sorted positions [b*n/N, (b+1)*n/N); its centre is distinct for N < n
                picks = {id(order[min(n - 1, math.floor((b + 0.5) * n / balance))]): f"balance {b + 1}/{balance}{where}"
                         for b in range(balance)}
            return keep(members, lambda r: picks.get(id(r)))

        groups = {g: balanced(m) for g, m in groups.items()}
        result.steps.append((f"--balance {balance}", sum(map(len, groups.values()))))
    if per_folder:
        result.steps[-1:] = [(result.steps[-1][0] + f" (per folder, {len(groups)} folders)", result.steps[-1][1])]
    for g in sorted(groups):
        for r in sorted(groups[g], key=lambda r: (-r.score, r.path)):
            result.rows.append(SelectedRow(r.path, r.model, r.score, r.rank, "; ".join(r.why or ()) or "scored", None))
    return result


def select(scores: str | os.PathLike | Iterable[str | os.PathLike], *, model: str | None = None,
           min_score: float | None = None, max_score: float | None = None,
           quantile: str | tuple[float, float] | None = None, top: int | None = None, bottom: int | None = None,
           balance: int | None = None, per_folder: bool = False, errors: bool = False) -> list[SelectedRow]:
    """The rows of the score file(s) ``scores`` that pass the filters, as ``pyica select`` lists them.

    Filters (applied in this order, each on what the previous one kept): ``min_score``/``max_score``,
    ``quantile=(lo, hi)`` (or ``"lo:hi"``), ``top``/``bottom`` K, ``balance`` N (N rows spread evenly over
    the score quantiles); ``per_folder`` applies the last three within each source folder; ``errors``
    selects the rows that failed instead. Rows of several models need ``model``. Returns
    :class:`SelectedRow` (path, model, score, rank, reason, error), highest score first. Copy them with
    :func:`pyica.curation.copy_selected`.
    """
    return select_rows(scores, model=model, min_score=min_score, max_score=max_score, quantile=quantile, top=top,
                       bottom=bottom, balance=balance, per_folder=per_folder, errors=errors).rows


# --- the manifest ----------------------------------------------------------------------------------------


def _manifest_text(rows: Iterable[SelectedRow], fmt: str, header: bool) -> tuple[str, int]:
    """Rows as CSV/TSV/JSONL text; names are data: quoted by csv, ``text_safe`` for stray bytes."""
    buffer = io.StringIO()
    count = 0
    if fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        plain = csv.writer(buffer, lineterminator="\n", delimiter=delimiter)
        quoted = csv.writer(buffer, lineterminator="\n", delimiter=delimiter, quoting=csv.QUOTE_ALL)
        if header:
            plain.writerow(MANIFEST_COLUMNS)
        for r in rows:
            path = text_safe(r.path)
            values = [path, r.model or "", "" if r.score is None else repr(r.score), "" if r.rank is None else r.rank,
                      r.reason, text_safe(" ".join((r.error or "").splitlines()))]
            # csv quotes a field holding "\n" but not one holding only "\r": quote every field of such a row
            (quoted if "\r" in path else plain).writerow(values)
            count += 1
    else:
        for r in rows:
            row = {**r.as_dict(), "path": text_safe(r.path), "error": text_safe(r.error) if r.error else r.error}
            buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return buffer.getvalue(), count


def open_manifest(path: str | os.PathLike, fmt: str | None = None, *, overwrite: bool = False,
                  reads: Iterable[str | os.PathLike] = (), identity: dict[str, Any] | None = None) -> OutputFile:
    """The manifest's :class:`~pyica.writers.OutputFile` (checked and locked: open it before any copy)."""
    fmt = infer_format(path, fmt)
    return OutputFile(path, fmt, identity=identity, overwrite=overwrite, reads=reads, columns=MANIFEST_COLUMNS,
                      column_types={"rank": "int64"})


def write_manifest(rows: Sequence[SelectedRow], output: str | os.PathLike | OutputFile | None, fmt: str | None = None,
                   *, overwrite: bool = False, reads: Iterable[str | os.PathLike] = (),
                   meta: dict[str, Any] | None = None) -> None:
    """Write ``rows`` to ``output`` (CSV, TSV, JSONL or Parquet by extension, the rules of
    :class:`~pyica.writers.OutputFile`), or as CSV to stdout when ``output`` is ``None``."""
    if output is None:
        if fmt not in (None, "csv", "tsv", "jsonl"):
            raise ValueError(f"{fmt} is written to a file: give -o NAME.{fmt}")
        text, _ = _manifest_text(rows, fmt or "csv", header=True)
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    out = output if isinstance(output, OutputFile) else open_manifest(output, fmt, overwrite=overwrite, reads=reads)
    finished = False
    try:
        text, count = _manifest_text(rows, PART_FORMAT[out.fmt], header=True)
        out.write(text, count)
        out.finish({"rows": count, **(meta or {})})
        finished = True
    finally:
        if not finished:  # a manifest is derived data: a failed one leaves nothing behind
            out.abort(discard=True)


# --- copying ---------------------------------------------------------------------------------------------


@dataclass
class CopyReport:
    """What :func:`copy_selected` did: files written, skipped (existing, with ``skip_existing``), and the
    failures as ``(source path, reason)``."""

    dest: str
    mode: str
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Plan:
    row: SelectedRow
    parts: list[str] | None = None  # the destination, relative to DEST, as checked path components
    source: str | None = None  # a plain file's absolute path
    archive: str | None = None  # or an archive's absolute path and the member's name in it
    member: str | None = None
    problem: str | None = None


class _Unsafe(Exception):
    """A destination that would leave DEST, follow a link planted in it, or overwrite a file."""


def _checked_parts(relative: str, what: str) -> list[str]:
    """``relative`` (a destination under DEST) as path components; refused if one could lead out of DEST."""
    if "\0" in relative:
        raise _Unsafe(f"{what} holds a NUL character")
    if relative.startswith("/") or relative.startswith(os.sep):
        raise _Unsafe(f"{what} is an absolute name")
    parts = [p for p in relative.replace(os.sep, "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _Unsafe(f"{what} leads out of its folder ('..')")
    if not parts:
        raise _Unsafe(f"{what} names no file")
    return parts


def plan_copies(rows: Sequence[SelectedRow], relative_to: str | os.PathLike | None = None) -> list[_Plan]:
    """Where each row goes under DEST: its path relative to ``relative_to`` (default: the rows' common folder);
    an archive member under ``ARCHIVE/MEMBER``. A row that cannot be placed safely gets a ``problem``."""
    plans = []
    for row in rows:
        plan = _Plan(row)
        if "\0" in row.path:
            plan.problem = "the name holds a NUL character"
        else:
            split = split_archive_member(row.path)
            if split is None:
                plan.source = os.path.abspath(row.path)
            else:
                plan.archive, plan.member = os.path.abspath(split[0]), split[1]
        plans.append(plan)
    if relative_to is not None:
        root = os.path.abspath(relative_to)
    else:
        root = _common_folder(p.row.path for p in plans if p.problem is None) or os.sep
    for plan in plans:
        if plan.problem is not None:
            continue
        where = plan.source or plan.archive
        if os.path.commonpath([root, where]) != root:
            plan.problem = f"not under --relative-to {root}"
            continue
        try:
            parts = _checked_parts(os.path.relpath(where, root), "the path")
            if plan.member is not None:
                parts += _checked_parts(plan.member, "the archive member's name")
        except _Unsafe as err:
            plan.problem = str(err)
            continue
        plan.parts = parts
    seen: dict[tuple[str, ...], str] = {}
    for plan in plans:
        if plan.parts is None:
            continue
        key = tuple(plan.parts)
        if key in seen:
            plan.problem, plan.parts = f"goes to the same place as {shown(seen[key])}", None
        else:
            seen[key] = plan.row.path
    return plans


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NEW_FILE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))


def _supports_safe_writes() -> bool:
    needed = (os.open, os.mkdir, os.link, os.symlink, os.unlink, os.stat)
    return all(f in os.supports_dir_fd for f in needed) and hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")


def _open_folder(root_fd: int, parts: list[str]) -> int:
    """A descriptor of the folder ``parts`` under ``root_fd``, made as needed; every step is opened
    relative to its parent and without following a symbolic link, so nothing planted inside DEST (a
    link to elsewhere, or a link swapped in meanwhile) can move the destination out of it."""
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            try:
                os.mkdir(name, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise _Unsafe(f"{shown('/'.join(parts[:i + 1]))} inside the destination is a symbolic link or "
                                  "a file, not a folder: not followed") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _exists_at(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _write_new(folder_fd: int, name: str, fill: Callable[[int], None]) -> None:
    """Create ``name`` in ``folder_fd`` with what ``fill(fd)`` writes, never over an existing name.

    The bytes go to a temporary file beside it, which is then hard-linked to ``name`` (``linkat`` fails
    if ``name`` exists, even as a dangling link), so ``name`` appears only whole. On a file system
    without hard links, ``name`` is created exclusively and written in place (removed again on failure).
    """
    for _ in range(100):
        temp = f".pyica-{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(temp, _NEW_FILE, 0o666, dir_fd=folder_fd)  # the umask applies, as for any new file
            break
        except FileExistsError:
            continue
    else:
        raise OSError(errno.EEXIST, "no free temporary name")
    try:
        try:
            fill(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd, follow_symlinks=False)
            return
        except FileExistsError:
            raise
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
                raise
        fd = os.open(name, _NEW_FILE, 0o666, dir_fd=folder_fd)  # no hard links here: exclusive create
        try:
            with open(os.open(temp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=folder_fd), "rb") as src:
                _pump(src, fd)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=folder_fd)
            raise
        os.close(fd)
    finally:
        try:
            os.unlink(temp, dir_fd=folder_fd)
        except FileNotFoundError:
            pass


def _pump(src: BinaryIO, fd: int) -> None:
    while chunk := src.read(_CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def _open_source(path: str) -> tuple[BinaryIO, os.stat_result]:
    """The original, opened for reading only; a FIFO is not waited on, a folder or device is refused."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ValueError("not a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return open(fd, "rb"), info


def _place(dest_fd: int, plan: _Plan, mode: str, skip_existing: bool, fill: Callable[[int], None] | None,
           report: CopyReport) -> None:
    """Write one destination (``fill`` writes a copy's bytes); count it in ``report``."""
    folder_fd = _open_folder(dest_fd, plan.parts[:-1])
    name = plan.parts[-1]
    try:
        if _exists_at(folder_fd, name):
            raise FileExistsError
        if mode == "hardlink":
            os.link(plan.source, name, dst_dir_fd=folder_fd)
        elif mode == "symlink":
            os.symlink(plan.source, name, dir_fd=folder_fd)
        else:
            _write_new(folder_fd, name, fill)
        report.written += 1
    except FileExistsError:
        if not skip_existing:
            raise _Unsafe(f"{shown('/'.join(plan.parts))} exists in the destination: not overwritten "
                          "(--skip-existing skips such files)") from None
        report.skipped += 1
    finally:
        os.close(folder_fd)


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        if err.errno == errno.EXDEV:
            return "cannot hard-link across file systems: use --copy or --symlink"
        return err.strerror
    return str(err) or type(err).__name__


def _archive_members(archive: str, wanted: dict[str, list[_Plan]]):
    """``(member name, reader)`` for the wanted members of ``archive`` (tar, compressed tar or zip), in
    archive order, read in one pass; a member that is not a regular file gets a reader that refuses."""
    if archive.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.filename in wanted:
                    if info.is_dir():
                        yield info.filename, None
                    else:
                        yield info.filename, lambda info=info: zf.open(info)
        return
    with tarfile.open(archive, "r:*") as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()  # nothing of earlier members is kept
            if member.name in wanted:
                yield member.name, ((lambda member=member: tar.extractfile(member)) if member.isfile() else None)


def copy_selected(rows: Sequence[SelectedRow], dest: str | os.PathLike, *, mode: str = "copy",
                  skip_existing: bool = False, relative_to: str | os.PathLike | None = None) -> CopyReport:
    """Copy (``mode="copy"``), hard-link (``"hardlink"``) or symbolically link (``"symlink"``) the
    sources of ``rows`` into ``dest``, keeping their folder layout (module docstring).

    Refused before anything is written (``ValueError``): ``dest`` that is not a folder, links of archive
    members (they can only be copied), and destinations that exist already unless ``skip_existing``.
    Each source that then fails (missing, unreadable, a name that could lead out of ``dest``, a symbolic
    link planted in ``dest``) is listed in the report's ``failed``; the others are still written.
    """
    if mode not in COPY_MODES:
        raise ValueError(f"mode must be one of {', '.join(COPY_MODES)}, not {mode!r}")
    if not _supports_safe_writes():
        raise ValueError("copying needs a system that can open folders without following links (openat, "
                         "linkat); this one cannot: use the manifest (-o) instead")
    dest = os.fspath(dest)
    plans = plan_copies(rows, relative_to)
    members = [p for p in plans if p.archive is not None and p.problem is None]
    if members and mode != "copy":
        raise ValueError(f"{len(members)} selected rows are archive members ({shown(members[0].row.path)}, ...): "
                         "they can only be copied, not linked; use --copy")
    existing = destinations_existing(plans, dest)
    if existing and not skip_existing:
        raise ValueError(f"{len(existing)} destination file(s) exist already (e.g. {shown(existing[0])}): nothing "
                         "was copied; pyica never overwrites them: pass --skip-existing, or choose another --to")
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise ValueError(f"{dest}: --to must be a folder")
    made = not os.path.lexists(dest)
    os.makedirs(dest, exist_ok=True)
    report = CopyReport(dest=dest, mode=mode)
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for plan in plans:
            if plan.problem is not None:
                report.failed.append((plan.row.path, plan.problem))
            elif plan.source is not None:
                _copy_file(dest_fd, plan, mode, skip_existing, report)
        by_archive: dict[str, dict[str, list[_Plan]]] = {}
        for plan in members:
            by_archive.setdefault(plan.archive, {}).setdefault(plan.member, []).append(plan)
        for archive, wanted in by_archive.items():
            _copy_members(dest_fd, archive, wanted, skip_existing, report)
    finally:
        os.close(dest_fd)
    if made and not report.written:  # every row failed: no empty DEST left behind (rmdir only removes it empty)
        try:
            os.rmdir(dest)
        except OSError:
            pass
    return report


def destinations_existing(plans: Sequence[_Plan], dest: str | os.PathLike) -> list[str]:
    """The planned destinations (relative to ``dest``) that exist already (read-only check)."""
    return ["/".join(p.parts) for p in plans
            if p.parts is not None and os.path.lexists(os.path.join(os.fspath(dest), *p.parts))]


def _copy_file(dest_fd: int, plan: _Plan, mode: str, skip_existing: bool, report: CopyReport) -> None:
    try:
        if mode == "copy":
            src, info = _open_source(plan.source)
            with src:
                def fill(fd: int) -> None:
                    _pump(src, fd)
                    os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))  # the copy keeps the original's times

                _place(dest_fd, plan, mode, skip_existing, fill, report)
        else:
            if not os.path.isfile(plan.source):
                raise ValueError("not found" if not os.path.lexists(plan.source) else "not a regular file")
            _place(dest_fd, plan, mode, skip_existing, None, report)
    except (OSError, ValueError, _Unsafe) as err:
        report.failed.append((plan.row.path, _describe(err)))


def _copy_members(dest_fd: int, archive: str, wanted: dict[str, list[_Plan]], skip_existing: bool,
                  report: CopyReport) -> None:
    done: set[str] = set()
    try:
        for name, reader in _archive_members(archive, wanted):
            if name in done:
                continue  # a name twice in a tar: the first one is taken
            done.add(name)
            for plan in wanted[name]:
                try:
                    if reader is None:
                        raise ValueError("not a regular file in the archive")
                    with reader() as src:
                        _place(dest_fd, plan, "copy", skip_existing, lambda fd, src=src: _pump(src, fd), report)
                except (OSError, ValueError, _Unsafe, tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
                    report.failed.append((plan.row.path, _describe(err)))
    except Exception as err:  # noqa: BLE001 - a broken or hostile archive fails its members, never the run
        problem = f"cannot read archive {shown(archive)} ({_describe(err)})"
        for name, plans in wanted.items():
            if name not in done:
                report.failed.extend((plan.row.path, problem) for plan in plans)
        return
    for name, plans in wanted.items():
        if name not in done:
            report.failed.extend((plan.row.path, "not in the archive") for plan in plans)
