"""CSV manifests: the one on-disk format for a labelled image list.

A manifest is a CSV file with a header row:

* an **image path** column (relative to the manifest's folder, or absolute); its name is detected
  among :data:`PATH_ALIASES` unless given;
* a **score** column, detected among :data:`SCORE_ALIASES`; an empty cell (or ``nan``/``na``) means
  "no label" and becomes ``nan``;
* optional ``category``;
* optional ``group`` naming duplicate groups (images that are the same picture), and/or
  ``duplicate_of`` holding the path of another row that is the same picture (the SAVOIAS
  ``labels.csv`` convention); both are merged into one group id per connected set of rows;
* optional split columns: ``split`` (read as the split named ``official``) and any ``<name>_split``
  (read as the split named ``<name>``), with values ``train``/``val``/``test`` or empty
  (``valid``/``validation`` mean ``val``, ``training`` means ``train``, ``testing`` means ``test``).

Other columns are ignored. Column names match case-insensitively.

:func:`write_manifest` writes the same format atomically, plus a small ``<csv>.meta.json`` sidecar
with the dataset-level facts a CSV cannot hold (name, per-category scale, score scale), so that
``read_manifest(write_manifest(ds, p))`` gives back an equal dataset.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from ..writers import write_json_atomic, write_text_atomic
from .dataset import ComplexityDataset

__all__ = ["read_manifest", "write_manifest", "PATH_ALIASES", "SCORE_ALIASES", "manifest_header"]

#: Accepted names of the image path column, in order of preference.
PATH_ALIASES = ("image", "path", "file", "filename", "name", "image_path", "image_name", "file_name", "img")
#: Accepted names of the score column, in order of preference.
SCORE_ALIASES = ("score", "mos", "complexity", "label", "gt", "mean_score", "rating")

_SPLIT_VALUES = {
    "": "", "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
_MISSING_SCORE = {"", "nan", "na", "n/a", "none", "null"}
# A manifest named like this says nothing about the dataset; its folder's name does.
_GENERIC_STEMS = {"labels", "manifest", "metadata", "annotations", "scores", "gt", "ground_truth"}


def manifest_header(csv_path: str | os.PathLike) -> list[str]:
    """The column names of ``csv_path`` (stripped, as written), ``[]`` for an empty file."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for row in csv.reader(f):
            if any(cell.strip() for cell in row):
                return [cell.strip() for cell in row]
    return []


def _pick_column(header: list[str], wanted: str | None, aliases: tuple[str, ...], what: str, csv_path) -> int:
    lowered = [h.lower() for h in header]
    if wanted is not None:
        if wanted.lower() not in lowered:
            raise ValueError(f"{csv_path}: no {what} column {wanted!r}; columns found: {', '.join(header)}")
        return lowered.index(wanted.lower())
    for alias in aliases:
        if alias in lowered:
            return lowered.index(alias)
    raise ValueError(
        f"{csv_path}: no {what} column; expected one of {', '.join(aliases)} "
        f"(or pass its name), columns found: {', '.join(header) or '(none)'}"
    )


def _split_name(column: str) -> str | None:
    """The split a column holds: ``split`` -> ``official``, ``<name>_split`` -> ``<name>``, else None."""
    if column.lower() == "split":
        return "official"
    if column.lower().endswith("_split") and len(column) > len("_split"):
        return column[: -len("_split")]
    return None


def _parse_score(cell: str, where: str, column: str) -> float:
    text = cell.strip()
    if text.lower() in _MISSING_SCORE:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: score {text!r} in column {column!r} is not a number") from None


def _groups_from_links(paths: list[str], labels: list[str], duplicate_of: list[str]) -> list[str]:
    """One group id per connected set of rows, linking rows with the same label or a ``duplicate_of`` edge.

    The id is the smallest explicit label in the set, else its smallest path; a lone row without a
    label gets ``""``.
    """
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first_with_label: dict[str, int] = {}
    row_of_path = {p: i for i, p in enumerate(paths)}
    for i, (label, other) in enumerate(zip(labels, duplicate_of)):
        if label:
            union(i, first_with_label.setdefault(label, i))
        if other and other in row_of_path:
            union(i, row_of_path[other])

    members: dict[int, list[int]] = {}
    for i in range(len(paths)):
        members.setdefault(find(i), []).append(i)
    groups = [""] * len(paths)
    for rows in members.values():
        explicit = sorted(labels[i] for i in rows if labels[i])
        if len(rows) == 1 and not explicit:
            continue
        group_id = explicit[0] if explicit else min(paths[i] for i in rows)
        for i in rows:
            groups[i] = group_id
    return groups


def _meta_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".meta.json")


def read_manifest(
    csv_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    path_col: str | None = None,
    score_col: str | None = None,
) -> ComplexityDataset:
    """Read a manifest CSV (format in the module doc) as a :class:`ComplexityDataset`.

    Args:
        csv_path: the CSV file.
        root: folder that relative image paths are resolved against; defaults to the CSV's folder.
            A ``<csv>.meta.json`` sidecar (written by :func:`write_manifest`), when present, supplies
            the name, ``per_category_scale`` and ``score_scale``.
        path_col, score_col: column names, when auto-detection (see :data:`PATH_ALIASES`,
            :data:`SCORE_ALIASES`) should not be used.

    Raises:
        FileNotFoundError: the CSV does not exist.
        ValueError: no path/score column, a malformed row, a non-numeric score or an unknown split
            value; the message names the file and, for row problems, the line.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: manifest not found")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header: list[str] = []
        for row in reader:
            if any(cell.strip() for cell in row):
                header = [cell.strip() for cell in row]
                break
        if not header:
            raise ValueError(f"{csv_path}: empty manifest (no header row)")
        lowered = [h.lower() for h in header]
        repeated = sorted({h for h in lowered if lowered.count(h) > 1})
        if repeated:
            raise ValueError(f"{csv_path}: repeated column name(s): {', '.join(repeated)}")

        path_i = _pick_column(header, path_col, PATH_ALIASES, "image path", csv_path)
        score_i = _pick_column(header, score_col, SCORE_ALIASES, "score", csv_path)
        category_i = lowered.index("category") if "category" in lowered else None
        group_i = lowered.index("group") if "group" in lowered else None
        duplicate_i = lowered.index("duplicate_of") if "duplicate_of" in lowered else None
        split_columns: dict[str, int] = {}
        for i, column in enumerate(header):
            split = _split_name(column)
            if split is None:
                continue
            if split in split_columns:
                raise ValueError(f"{csv_path}: columns {header[split_columns[split]]!r} and {column!r} "
                                 f"both define split {split!r}")
            split_columns[split] = i

        paths, scores, categories, labels, duplicate_of = [], [], [], [], []
        split_values: dict[str, list[str]] = {name: [] for name in split_columns}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{csv_path}, line {reader.line_num}"
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} fields, the header has {len(header)}")
            path = row[path_i].strip()
            if not path:
                raise ValueError(f"{where}: empty image path in column {header[path_i]!r}")
            paths.append(path)
            scores.append(_parse_score(row[score_i], where, header[score_i]))
            categories.append(row[category_i].strip() if category_i is not None else "")
            labels.append(row[group_i].strip() if group_i is not None else "")
            duplicate_of.append(row[duplicate_i].strip() if duplicate_i is not None else "")
            for name, i in split_columns.items():
                value = row[i].strip().lower()
                if value not in _SPLIT_VALUES:
                    raise ValueError(f"{where}: split value {row[i].strip()!r} in column {header[i]!r} is "
                                     "not one of train, val, test (or empty)")
                split_values[name].append(_SPLIT_VALUES[value])

    meta = {}
    if _meta_path(csv_path).is_file():
        try:
            meta = json.loads(_meta_path(csv_path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{_meta_path(csv_path)}: not valid JSON ({err})") from None
    stem = csv_path.stem
    default_name = csv_path.resolve().parent.name if stem.lower() in _GENERIC_STEMS else stem
    scale = meta.get("score_scale")
    return ComplexityDataset(
        name=meta.get("name") or default_name,
        root=Path(root) if root is not None else csv_path.parent,
        paths=np.asarray(paths, dtype=str),
        scores=np.asarray(scores, dtype=np.float64),
        categories=np.asarray(categories, dtype=str),
        groups=np.asarray(_groups_from_links(paths, labels, duplicate_of), dtype=str),
        splits={name: np.asarray(values, dtype=str) for name, values in split_values.items()},
        per_category_scale=bool(meta.get("per_category_scale", False)),
        score_scale=tuple(scale) if scale else None,
    )


def _format_score(score: float) -> str:
    if not math.isfinite(score):
        return ""
    # repr() is the shortest text that reads back as the same float; whole numbers lose the ".0".
    return str(int(score)) if score.is_integer() and abs(score) < 2**53 else repr(score)


def _path_for(ds: ComplexityDataset, i: int, folder: Path) -> str:
    """Path of image ``i`` as the manifest in ``folder`` should store it: relative when inside, else absolute."""
    if ds.root.resolve() == folder.resolve():
        return str(ds.paths[i])
    full = ds.full_path(i).resolve()
    try:
        return full.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(full)


def write_manifest(ds: ComplexityDataset, csv_path: str | os.PathLike) -> Path:
    """Write ``ds`` as a manifest CSV (plus its ``.meta.json`` sidecar); return the CSV path.

    Columns: ``image, score, category, group`` and one column per split (``official`` as ``split``,
    any other as ``<name>_split``). Image paths are stored relative to the CSV's folder when the
    image lies inside it, else absolute, so the manifest can be read back from where it is. Both
    files are written to a temporary file first and moved into place, so a reader never sees a
    half-written manifest.
    """
    csv_path = Path(csv_path)
    folder = csv_path.parent
    split_names = sorted(ds.splits)
    split_header = ["split" if name == "official" else f"{name}_split" for name in split_names]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "score", "category", "group", *split_header])
    for i in range(len(ds)):
        writer.writerow([
            _path_for(ds, i, folder), _format_score(float(ds.scores[i])), ds.categories[i], ds.groups[i],
            *(ds.splits[name][i] for name in split_names),
        ])
    write_text_atomic(csv_path, buffer.getvalue())
    write_json_atomic(_meta_path(csv_path), {
        "name": ds.name,
        "per_category_scale": ds.per_category_scale,
        "score_scale": list(ds.score_scale) if ds.score_scale is not None else None,
    })
    return csv_path
