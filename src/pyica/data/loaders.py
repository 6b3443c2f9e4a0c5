"""Loaders for the public ICA datasets, CSV manifests and plain image folders.

Every loader returns a :class:`~pyica.data.dataset.ComplexityDataset` whose paths are relative to
the dataset's folder. :func:`load_dataset` picks the loader from a dataset name or a path.

Layouts understood:

* **SAVOIAS** (:func:`load_savoias`), either the compact copy (``labels.csv`` + ``<category>/<i>.jpg``)
  or the authors' GitHub repository ``esaraee/Savoias-Dataset`` (``Images/<Category>/<i>.jpg|png``
  and ``Ground truth/xlsx/global_ranking_<x>.xlsx``). Scores are 0..100 **per category**.
* **IC9600** (:func:`load_ic9600`): ``images/`` (or ``img/``), ``train.txt`` and ``test.txt`` with
  lines ``<name>  <score>``, scores in [0, 1]; the official split is the split column ``official``.
* **VISC-C** (:func:`load_viscc`): ``labels.csv`` (``image,score``) beside ``images/`` or ``scenes/``.
* **Manifests** (:func:`~pyica.data.manifest.read_manifest`) and **folders** (:func:`load_folder`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import warnings
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np

from ..loading import image_extensions
from .dataset import ComplexityDataset
from .manifest import manifest_header, read_manifest

__all__ = [
    "load_dataset", "list_datasets", "load_savoias", "load_ic9600", "load_viscc", "load_folder",
    "read_xlsx_rows", "SAVOIAS_CATEGORIES",
]

#: SAVOIAS categories: (slug used as ``category``, image folder under ``Images/``, ground-truth key
#: in ``global_ranking_<key>.xlsx``). From the compact copy's README.
SAVOIAS_CATEGORIES = (
    ("advertisement", "Advertisement", "ad"),
    ("art", "Art", "art"),
    ("interior_design", "Interior Design", "interior_design"),
    ("objects", "Objects", "objects"),
    ("scenes", "Scenes", "scenes"),
    ("suprematism", "Suprematism", "sup"),
    ("visualizations", "Visualizations", "vis"),
)
# The ground-truth xlsx files of the original repository; Images/Art/global_ranking/ holds
# byte-identical copies in some snapshots.
_SAVOIAS_GT_FOLDERS = ("Ground truth/xlsx", "Ground truth", "Images/Art/global_ranking")
_SAVOIAS_LABEL_COLUMNS = {"image", "score", "category", "source_file", "duplicate_of"}

# No legitimate part of a ground-truth workbook comes near this; it stops zip bombs.
_XLSX_MAX_MEMBER_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------------------------------------
# xlsx


def _column_index(cell_ref: str) -> int:
    """``"A1"`` -> 0, ``"AB7"`` -> 27."""
    letters = re.match(r"[A-Za-z]+", cell_ref)
    if letters is None:
        raise ValueError(f"bad cell reference {cell_ref!r}")
    index = 0
    for letter in letters.group(0).upper():
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def _text_of(element: ET.Element) -> str:
    """Text of a string item (``<si>`` or ``<is>``): plain ``<t>`` or rich-text runs, skipping phonetic hints."""
    return "".join(t.text or "" for t in element.findall("{*}t") + element.findall("{*}r/{*}t"))


def _cell_value(cell: ET.Element, shared: list[str]) -> str | float | bool | None:
    kind = cell.get("t", "n")
    if kind == "inlineStr":
        inline = cell.find("{*}is")
        return _text_of(inline) if inline is not None else None
    value = cell.find("{*}v")
    if value is None or value.text is None:
        return None
    if kind == "s":
        return shared[int(value.text)]
    if kind == "b":
        return value.text.strip() == "1"
    if kind in ("str", "e", "d"):
        return value.text
    return float(value.text)


def read_xlsx_rows(path: str | os.PathLike) -> list[list[str | float | bool | None]]:
    """The cells of the first worksheet of an ``.xlsx`` file, row by row (``None`` for empty cells).

    A deliberately small reader (zipfile + ElementTree, no third-party package) for the plain
    ground-truth workbooks datasets ship: numbers come back as ``float``, text as ``str``, booleans as
    ``bool``; formulas give their cached value; styles and dates are not interpreted. Archive members
    over 64 MiB are refused, and ElementTree resolves no external entities.

    Raises:
        ValueError: not an xlsx file, or malformed (the message names the file).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as book:
            names = set(book.namelist())

            def parse(member: str) -> ET.Element:
                size = book.getinfo(member).file_size
                if size > _XLSX_MAX_MEMBER_BYTES:
                    raise ValueError(f"{path}: {member} unpacks to {size:,} bytes, over the "
                                     f"{_XLSX_MAX_MEMBER_BYTES:,}-byte limit")
                return ET.fromstring(book.read(member))

            shared = []
            if "xl/sharedStrings.xml" in names:
                shared = [_text_of(si) for si in parse("xl/sharedStrings.xml").findall("{*}si")]
            sheet = parse(_first_sheet_member(path, names, parse))
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: not an xlsx file ({err})") from err
    except ET.ParseError as err:
        raise ValueError(f"{path}: malformed xlsx XML ({err})") from err

    rows: list[list[str | float | bool | None]] = []
    for row in sheet.findall("{*}sheetData/{*}row"):
        number = row.get("r")
        while number is not None and len(rows) < int(number) - 1:
            rows.append([])  # rows without any cell are left out of the file
        cells: dict[int, str | float | bool | None] = {}
        next_column = 0
        for cell in row.findall("{*}c"):
            ref = cell.get("r")
            column = _column_index(ref) if ref else next_column
            next_column = column + 1
            try:
                cells[column] = _cell_value(cell, shared)
            except (ValueError, IndexError) as err:
                raise ValueError(f"{path}: bad cell {ref or column} in row {len(rows) + 1} ({err})") from err
        rows.append([cells.get(j) for j in range(max(cells) + 1)] if cells else [])
    return rows


def _first_sheet_member(path: Path, names: set[str], parse) -> str:
    """Archive name of the workbook's first sheet, via workbook.xml and its relationships."""
    if "xl/workbook.xml" in names and "xl/_rels/workbook.xml.rels" in names:
        first = parse("xl/workbook.xml").find("{*}sheets/{*}sheet")
        rel_id = next((v for k, v in first.attrib.items() if k.endswith("}id")), None) if first is not None else None
        for rel in parse("xl/_rels/workbook.xml.rels").findall("{*}Relationship"):
            if rel.get("Id") == rel_id:
                target = rel.get("Target", "")
                member = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
                if member in names:
                    return member
    if "xl/worksheets/sheet1.xml" in names:
        return "xl/worksheets/sheet1.xml"
    raise ValueError(f"{path}: no worksheet found")


# ----------------------------------------------------------------------------------------------------------
# SAVOIAS


def _is_savoias_labels(csv_path: Path) -> bool:
    """True for the compact SAVOIAS copy's ``labels.csv`` (recognised by its column set)."""
    return _SAVOIAS_LABEL_COLUMNS <= {h.lower() for h in manifest_header(csv_path)}


def _is_savoias_repository(folder: Path) -> bool:
    return (folder / "Images").is_dir() and (folder / "Ground truth").is_dir()


def load_savoias(root: str | os.PathLike) -> ComplexityDataset:
    """SAVOIAS from ``root``, in either layout (detected):

    * **compact copy**: ``root/labels.csv`` with columns image, score, category, ..., duplicate_of;
      the images listed in ``duplicate_of`` pairs form one duplicate group each.
    * **original repository** (``esaraee/Savoias-Dataset``): ``root/Images/<Category>/<i>.jpg|png``
      with ground truth ``root/Ground truth/xlsx/global_ranking_<x>.xlsx`` (column ``gt``, data row
      ``i`` belongs to image ``i``). Labelled images whose file is absent are skipped with a warning
      listing them (snapshots lack 4 files over 4 MiB); files with identical bytes (sha256) form
      duplicate groups, across categories too.

    Scores are 0..100 on a per-category scale (``per_category_scale=True``, ``score_scale=(0, 100)``).
    """
    root = Path(root)
    if (root / "labels.csv").is_file():
        ds = read_manifest(root / "labels.csv", root=root)
    elif _is_savoias_repository(root):
        ds = _load_savoias_repository(root)
    else:
        raise FileNotFoundError(
            f"{root}: not a SAVOIAS folder; expected labels.csv (compact copy) or Images/ and "
            "'Ground truth/' (the esaraee/Savoias-Dataset repository)"
        )
    return dataclasses.replace(ds, name="savoias", per_category_scale=True, score_scale=(0.0, 100.0))


def _folder_key(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name).lower()


def _gt_scores(rows: list[list], path: Path) -> list[float]:
    """The ``gt`` column (or the only column) of a SAVOIAS ground-truth sheet, header row dropped."""
    if not rows:
        raise ValueError(f"{path}: empty sheet")
    header = [str(h).strip().lower() if h is not None else "" for h in rows[0]]
    if "gt" in header:
        column = header.index("gt")
    elif sum(bool(h) for h in header) == 1:
        column = next(i for i, h in enumerate(header) if h)
    else:
        raise ValueError(f"{path}: no 'gt' column in the header row ({', '.join(h for h in header if h)})")
    scores = []
    for number, row in enumerate(rows[1:], start=2):
        value = row[column] if column < len(row) else None
        try:
            scores.append(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"{path}, row {number}: ground truth {value!r} is not a number") from None
    return scores


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_savoias_repository(root: Path) -> ComplexityDataset:
    extensions = image_extensions()
    image_folders = {_folder_key(p.name): p for p in (root / "Images").iterdir() if p.is_dir()}
    paths: list[str] = []
    scores: list[float] = []
    categories: list[str] = []
    missing: list[str] = []
    unlabelled: list[str] = []
    absent_categories: list[str] = []
    for slug, folder_name, gt_key in SAVOIAS_CATEGORIES:
        folder = image_folders.get(_folder_key(folder_name))
        gt_name = f"global_ranking_{gt_key}.xlsx"
        gt_path = next((root / d / gt_name for d in _SAVOIAS_GT_FOLDERS if (root / d / gt_name).is_file()), None)
        if gt_path is None:
            if folder is not None:
                raise FileNotFoundError(f"{root}: images for SAVOIAS category {folder_name!r} but no ground "
                                        f"truth {gt_name} in {' or '.join(_SAVOIAS_GT_FOLDERS)}")
            absent_categories.append(slug)
            continue
        gt = _gt_scores(read_xlsx_rows(gt_path), gt_path)
        if folder is None:
            missing.append(f"Images/{folder_name}/ (the whole folder, {len(gt)} labelled images)")
            continue
        files: dict[str, Path] = {}
        for file in sorted(folder.iterdir()):
            if file.is_file() and file.suffix.lower() in extensions:
                files.setdefault(file.stem, file)  # 0.jpg beats 0.png if both exist: sorted order
        for i, score in enumerate(gt):
            file = files.pop(str(i), None)
            if file is None:
                missing.append(f"Images/{folder.name}/{i}.* (score {score:g})")
                continue
            paths.append(file.relative_to(root).as_posix())
            scores.append(score)
            categories.append(slug)
        unlabelled.extend(p.relative_to(root).as_posix() for p in files.values())
    if not paths:
        raise FileNotFoundError(f"{root}: no labelled SAVOIAS image found under Images/")
    if absent_categories:
        warnings.warn(f"SAVOIAS at {root}: categories absent (no images, no ground truth): "
                      f"{', '.join(absent_categories)}", stacklevel=3)
    if missing:
        warnings.warn(f"SAVOIAS at {root}: {len(missing)} labelled image(s) not found, skipped: "
                      f"{'; '.join(missing)}", stacklevel=3)
    if unlabelled:
        warnings.warn(f"SAVOIAS at {root}: {len(unlabelled)} image(s) without ground truth, ignored: "
                      f"{'; '.join(unlabelled)}", stacklevel=3)

    # The same picture appears in more than one category (Art and Suprematism share 10 files).
    by_digest: dict[str, list[str]] = {}
    for path in paths:
        by_digest.setdefault(_sha256(root / path), []).append(path)
    group_of = {p: min(same) for same in by_digest.values() if len(same) > 1 for p in same}
    return ComplexityDataset(
        name="savoias", root=root, paths=np.asarray(paths), scores=np.asarray(scores),
        categories=np.asarray(categories), groups=np.asarray([group_of.get(p, "") for p in paths]),
    )


# ----------------------------------------------------------------------------------------------------------
# IC9600


def _is_ic9600(folder: Path) -> bool:
    has_images = any((folder / d).is_dir() for d in ("images", "img"))
    return has_images and any((folder / f).is_file() for f in ("train.txt", "test.txt"))


def load_ic9600(root: str | os.PathLike) -> ComplexityDataset:
    """IC9600 from ``root``: ``images/`` (or ``img/``) plus ``train.txt`` and ``test.txt``.

    Each label line is ``<image name> <score>`` (whitespace-separated; the official files use two
    spaces), score in [0, 1]. The file a line comes from sets the split column ``official``
    (``train``/``test``). ``category`` is the file-name prefix before the first ``_`` (IC9600's 8
    categories: abstract, advertisement, architecture, objects, paintings, person, scenes,
    transport), ``""`` for names without one. A missing label file is allowed (its split is then
    absent); both missing is an error.
    """
    root = Path(root)
    image_dir = next((root / d for d in ("images", "img") if (root / d).is_dir()), None)
    if image_dir is None:
        raise FileNotFoundError(f"{root}: no images/ (or img/) folder; IC9600 expects images/, train.txt, test.txt")
    label_files = [(split, root / f"{split}.txt") for split in ("train", "test") if (root / f"{split}.txt").is_file()]
    if not label_files:
        raise FileNotFoundError(f"{root}: neither train.txt nor test.txt found (IC9600 label files)")
    paths, scores, categories, official = [], [], [], []
    for split, label_file in label_files:
        for number, line in enumerate(label_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.rsplit(None, 1)  # the score is the last field; a name could hold spaces
            if len(fields) != 2:
                raise ValueError(f"{label_file}, line {number}: expected '<image name>  <score>', got {line.strip()!r}")
            name, score_text = fields[0].strip(), fields[1]
            try:
                score = float(score_text)
            except ValueError:
                raise ValueError(f"{label_file}, line {number}: score {score_text!r} is not a number") from None
            paths.append(f"{image_dir.name}/{name}")
            scores.append(score)
            stem = Path(name).name
            categories.append(stem.split("_", 1)[0] if "_" in stem else "")
            official.append(split)
    return ComplexityDataset(
        name="ic9600", root=root, paths=np.asarray(paths), scores=np.asarray(scores),
        categories=np.asarray(categories), groups=np.asarray([], dtype=str),
        splits={"official": np.asarray(official)}, score_scale=(0.0, 1.0),
    )


# ----------------------------------------------------------------------------------------------------------
# VISC-C

_VISCC_IMAGE_FOLDERS = ("images", "scenes")


def load_viscc(root: str | os.PathLike) -> ComplexityDataset:
    """VISC-C (Kyle-Davidson et al.: 800 natural scenes from SUN, ``sun_<id>.jpg``, with complexity ratings).

    Expected layout, in ``root`` or in ``root/VISC-C`` (the authors' ``VISCHEMA-data`` repository
    keeps the images in ``VISC-C/scenes/``)::

        labels.csv      a manifest: columns image,score (any names read_manifest accepts)
        images/ or scenes/   the images; labels.csv may name them bare (sun_x.jpg) or with the folder

    Bare names are resolved in whichever of ``images/``, ``scenes/`` or the folder itself holds the
    most of them. Ratings keep their own scale (``score_scale`` is left unset).
    """
    root = Path(root)
    base = root
    if not (root / "labels.csv").is_file() and (root / "VISC-C").is_dir():
        base = root / "VISC-C"
    labels = base / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(
            f"{root}: no VISC-C labels.csv; expected labels.csv (columns image,score) beside images/ or "
            "scenes/ holding the 800 scene images, in this folder or in VISC-C/"
        )
    ds = read_manifest(labels, root=base)

    def found(folder: str) -> int:
        return sum((base / folder / p).is_file() for p in ds.paths)

    best = max(("", *_VISCC_IMAGE_FOLDERS), key=found)  # max keeps the first on ties: "" (paths as written)
    paths = ds.paths
    if best:
        paths = np.asarray([p if Path(p).is_absolute() else f"{best}/{p}" for p in ds.paths])
    return dataclasses.replace(ds, name="visc-c", paths=paths)


# ----------------------------------------------------------------------------------------------------------
# folders and dispatch


def load_folder(root: str | os.PathLike, recursive: bool = True) -> ComplexityDataset:
    """An unlabelled dataset (scores ``nan``) of the image files under ``root``.

    Files are recognised by extension (:func:`~pyica.loading.image_extensions`); hidden files and
    folders are skipped. Paths are sorted; ``category`` is the first sub-folder's name (``""`` for
    files directly in ``root``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    extensions = image_extensions()
    candidates = root.rglob("*") if recursive else root.glob("*")
    paths = sorted(
        rel.as_posix()
        for rel in (p.relative_to(root) for p in candidates if p.suffix.lower() in extensions)
        if not any(part.startswith(".") for part in rel.parts) and (root / rel).is_file()
    )
    return ComplexityDataset(
        name=root.resolve().name or str(root), root=root, paths=np.asarray(paths, dtype=str),
        scores=np.full(len(paths), np.nan), categories=np.asarray([p.split("/")[0] if "/" in p else "" for p in paths]),
        groups=np.asarray([], dtype=str),
    )


_LOADERS = {"savoias": load_savoias, "ic9600": load_ic9600, "visc-c": load_viscc}
_NAME_ALIASES = {"viscc": "visc-c", "visc_c": "visc-c"}
_ROOT_HINTS = {
    "savoias": "the compact copy with labels.csv, or a clone of esaraee/Savoias-Dataset",
    "ic9600": "the folder with images/, train.txt and test.txt",
    "visc-c": "the folder with labels.csv and images/ or scenes/",
}


def list_datasets() -> list[str]:
    """Names :func:`load_dataset` knows (each needs ``root``)."""
    return sorted(_LOADERS)


def load_dataset(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> ComplexityDataset:
    """Load a dataset by name or path.

    * A known name (:func:`list_datasets`; ``viscc`` is accepted for ``visc-c``) loads from ``root``,
      which is then required.
    * A ``.csv`` file is read as a manifest (``root`` overrides the folder its paths are relative
      to); SAVOIAS's compact ``labels.csv`` is recognised and loaded as SAVOIAS.
    * A folder is recognised as SAVOIAS (compact or repository), IC9600 (label files + images/),
      a manifest folder (``labels.csv``), or else loaded as an unlabelled image folder.
    """
    key = str(name_or_path).strip().lower()
    key = _NAME_ALIASES.get(key, key)
    if key in _LOADERS:
        if root is None:
            raise ValueError(f"dataset {key!r} needs root=, the folder that holds it ({_ROOT_HINTS[key]})")
        return _LOADERS[key](root)

    path = Path(name_or_path)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: not a .csv manifest (datasets are a known name, a manifest or a folder)")
        if root is None and _is_savoias_labels(path):
            return load_savoias(path.parent)
        return read_manifest(path, root=root)
    if path.is_dir():
        if root is not None:
            raise ValueError(f"{path}: root= applies to dataset names and .csv manifests, not to a folder")
        labels = path / "labels.csv"
        if labels.is_file():
            return load_savoias(path) if _is_savoias_labels(labels) else read_manifest(labels)
        if _is_savoias_repository(path):
            return load_savoias(path)
        if _is_ic9600(path):
            return load_ic9600(path)
        return load_folder(path)
    raise FileNotFoundError(
        f"{name_or_path!s}: not a known dataset ({', '.join(list_datasets())}) and no such file or folder"
    )
