"""Results as data (tidy rows, CSV files) and as text and pictures for people (tables, scatter plots).

A *results row* is one dict per (model, dataset, protocol, split, category) with one metric per
column (:data:`RESULT_COLUMNS`). ``category`` is ``"pooled"`` for all test images together, a
category's name for that category alone, and ``"category_mean"`` for the mean of the per-category
rows (the primary number when labels are on a per-category scale, like SAVOIAS). Any further keys
(``pyica_version``, ``seconds``, ``weights``, ``in_sample``, ...) are kept as extra columns.

Metric columns (:data:`~pyica.metrics.METRIC_NAMES`): ``srcc``, ``plcc`` and ``krcc`` on the raw
predictions; ``plcc_logistic4`` and the error metrics (``rmse_logistic4``, ``mae_logistic4``,
``rmae_icnet_logistic4``, ``rmae_cmssa_logistic4``) after the predictions are mapped into the label's
units by a 4-parameter logistic fitted on the evaluated predictions; ``mapping`` says what was fitted.
Results CSVs of pyica before this layout (raw ``rmse``, ``mae``, ... and a ``fit`` column,
:data:`LEGACY_RESULT_COLUMNS`) are still read, appended to and summarised; their raw errors keep their
old names, so they are never mistaken for errors in the label's units.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .writers import replace_atomically
from .metrics import METRIC_NAMES, RAW_METRIC_NAMES, FittedMapping, fit_logistic4, plcc, srcc

__all__ = [
    "LEGACY_RESULT_COLUMNS",
    "RESULT_COLUMNS",
    "is_results_header",
    "format_markdown_table",
    "format_table",
    "read_results_csv",
    "results_rows",
    "scatter_plot",
    "summarise",
    "write_results_csv",
]

LABEL_COLUMNS = ("model", "dataset", "protocol", "split", "category")
#: Columns of a results row, in the order files and tables use; extra columns follow them.
RESULT_COLUMNS = (*LABEL_COLUMNS, "n", *METRIC_NAMES, "mapping")
#: The columns results CSVs began with before errors were reported after a mapping (raw errors, ``fit``).
LEGACY_RESULT_COLUMNS = (*LABEL_COLUMNS, "n", *RAW_METRIC_NAMES, "fit")
#: Row categories that are not category names.
POOLED, CATEGORY_MEAN = "pooled", "category_mean"


# ---------------------------------------------------------------------------------------------------
# Tidy rows


def results_rows(result: dict, *, model: str, dataset: str, protocol: str, split: str, **extra) -> list[dict]:
    """Results rows for one :func:`~pyica.metrics.evaluate` result.

    Gives the ``"pooled"`` row, then (when ``result`` has per-category metrics) one row per category
    and a ``"category_mean"`` row whose ``n`` is the pooled ``n``. ``extra`` keyword arguments
    (``pyica_version=...``, ``seconds=...``) are added to every row.

    Raises ``ValueError`` when a category is itself named ``"pooled"`` or ``"category_mean"``, which
    would make the rows ambiguous.
    """
    labels = dict(model=model, dataset=dataset, protocol=protocol, split=split)

    def row(category: str, values: dict) -> dict:
        return {**labels, "category": category, "n": values["n"], **{m: values[m] for m in METRIC_NAMES},
                "mapping": values["mapping"], **extra}

    rows = [row(POOLED, result)]
    per_category = result.get("per_category")
    if per_category:
        clashing = {POOLED, CATEGORY_MEAN} & set(per_category)
        if clashing:
            raise ValueError(f"category names {sorted(clashing)} clash with the rows pyica adds")
        rows.extend(row(name, values) for name, values in per_category.items())
        rows.append(row(CATEGORY_MEAN, {**result["category_mean"], "n": result["n"], "mapping": result["mapping"]}))
    return rows


# ---------------------------------------------------------------------------------------------------
# CSV files


def _column_order(rows: Iterable[dict], leading: Sequence[str] = ()) -> list[str]:
    """``leading`` columns, then the :data:`RESULT_COLUMNS` present in ``rows``, then other keys as first seen."""
    seen: dict[str, None] = dict.fromkeys(leading)
    rows = list(rows)
    present = {key for row in rows for key in row}
    seen.update((c, None) for c in RESULT_COLUMNS if c in present)
    for row in rows:
        seen.update((key, None) for key in row)
    return list(seen)


def is_results_header(header: Sequence[str] | None) -> bool:
    """Whether a CSV header is that of a pyica results file (this layout or the legacy one)."""
    if not header:
        return False
    return any(tuple(header[:len(columns)]) == columns for columns in (RESULT_COLUMNS, LEGACY_RESULT_COLUMNS))


def write_results_csv(rows: Iterable[dict], path: str | os.PathLike, append: bool = False) -> None:
    """Write results ``rows`` to a CSV file at ``path``, atomically.

    Columns are the union of the rows' keys: :data:`RESULT_COLUMNS` first, then extra keys in the
    order first seen. With ``append`` and an existing file, its rows are kept (as written) and the
    new ones added after them; the existing header's order is kept and new columns are added at
    its end, with empty cells for rows that lack a column. Floats are written in full precision.
    """
    path = Path(path)
    rows = list(rows)
    existing: list[dict] = []
    existing_columns: list[str] = []
    if append and path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            existing = list(reader)
            existing_columns = list(reader.fieldnames or [])
    columns = _column_order(rows, leading=existing_columns)

    def write(temp: str) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(existing)
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    replace_atomically(path, write)


def _to_number(text: str) -> int | float | str:
    """A CSV cell as int or float when it reads as one, else the text itself."""
    for parse in (int, float):
        with contextlib.suppress(ValueError):
            return parse(text)
    return text


def read_results_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a results CSV, with ``n`` and the metric columns as numbers (NaN for empty cells)."""
    numeric = {"n", *METRIC_NAMES, *RAW_METRIC_NAMES}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in numeric & set(row):
            row[key] = _to_number(row[key]) if row[key] != "" else math.nan
    return rows


# ---------------------------------------------------------------------------------------------------
# Summaries over splits


def _as_float(value) -> float:
    """A metric cell (number, numeric text, empty or None) as float, NaN where empty."""
    return math.nan if value is None or value == "" else float(value)


def summarise(rows: Iterable[dict], by: Sequence[str] = ("model", "dataset", "protocol", "category"),
              ddof: int = 1, extra_metrics: Sequence[str] = ()) -> list[dict]:
    """Mean and standard deviation of every metric over the rows (splits) that share the ``by`` columns.

    Representation: one row per group, in first-seen order, with the ``by`` columns, ``n_splits``
    (rows in the group), then ``<column>_mean`` and ``<column>_std`` for ``n``, each metric present
    (:data:`~pyica.metrics.METRIC_NAMES`, and the raw errors of legacy files) and each of
    ``extra_metrics`` (further numeric columns), and ``mapping`` (legacy files: ``fit``; its distinct
    values joined by ``"|"``). The std uses ``ddof`` (default 1: the sample std over splits, NaN for a
    single split). A NaN metric in any split makes that group's mean and std NaN. Values may be numbers
    or numeric text (rows read straight from a CSV).
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(column, "") for column in by), []).append(row)
    numeric = [c for c in dict.fromkeys(("n", *METRIC_NAMES, *RAW_METRIC_NAMES, *extra_metrics))
               if any(c in row for members in groups.values() for row in members)]
    summary = []
    for key, members in groups.items():
        out = dict(zip(by, key))
        out["n_splits"] = len(members)
        for column in numeric:
            values = np.array([_as_float(row.get(column)) for row in members])
            out[f"{column}_mean"] = float(np.mean(values))
            out[f"{column}_std"] = float(np.std(values, ddof=ddof)) if len(values) > ddof else math.nan
        for label in ("mapping", "fit"):
            values = [str(row[label]) for row in members if row.get(label) not in (None, "")]
            if values:
                out[label] = "|".join(dict.fromkeys(values))
        summary.append(out)
    return summary


# ---------------------------------------------------------------------------------------------------
# Tables for people


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _cell(value, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else format(value, floatfmt)
    return str(value)


def _table_cells(rows: Sequence[dict], columns: Sequence[str] | None, floatfmt: str):
    """Column names, the cell texts row by row, and which columns are numeric (to right-align)."""
    rows = list(rows)
    columns = list(columns) if columns is not None else _column_order(rows)
    cells = [[_cell(row.get(c), floatfmt) for c in columns] for row in rows]
    numeric = [
        any(_is_number(row.get(c)) for row in rows)
        and all(_is_number(row.get(c)) or row.get(c) in (None, "") for row in rows)
        for c in columns
    ]
    return columns, cells, numeric


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".3f") -> str:
    """Rows as an aligned plain-text table for the terminal.

    ``columns`` picks and orders the columns (default: all, in results-file order). Floats are
    formatted with ``floatfmt``; numeric columns are right-aligned, others left-aligned; a missing
    value is an empty cell.
    """
    columns, cells, numeric = _table_cells(rows, columns, floatfmt)
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(texts: Sequence[str]) -> str:
        return "  ".join(t.rjust(w) if num else t.ljust(w) for t, w, num in zip(texts, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(row) for row in cells)])


def format_markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".3f") -> str:
    """Rows as a GitHub-flavoured Markdown table (numeric columns right-aligned) for READMEs."""
    columns, cells, numeric = _table_cells(rows, columns, floatfmt)

    def line(texts: Sequence[str]) -> str:
        return "| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |"

    alignment = "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"
    return "\n".join([line(columns), alignment, *(line(row) for row in cells)])


# ---------------------------------------------------------------------------------------------------
# Scatter plot


def scatter_plot(pred, target, path: str | os.PathLike, categories=None, title: str | None = None,
                 fit: str | FittedMapping | None = None) -> None:
    """Save a PNG scatter plot of human scores (y) against predictions (x) to ``path``, atomically.

    Points are coloured by category, with a legend, when ``categories`` are given. The pooled SRCC
    and PLCC are written on the plot. ``fit="logistic4"`` fits :func:`~pyica.metrics.fit_logistic4`
    on all points and draws the curve (a :class:`~pyica.metrics.FittedMapping` is drawn as given);
    the PLCC shown is then the one after the mapping. Pairs with NaN/inf are left out.

    Needs matplotlib (``pip install pyica[plot]``); raises ``RuntimeError`` without it.
    """
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError("scatter plots need matplotlib: pip install pyica[plot]") from None

    pred, target = np.asarray(pred, dtype=np.float64).reshape(-1), np.asarray(target, dtype=np.float64).reshape(-1)
    labels = None if categories is None else np.asarray(categories).astype(str).reshape(-1)
    if len(pred) != len(target) or (labels is not None and len(labels) != len(pred)):
        raise ValueError(f"pred has {len(pred)} values, target {len(target)}"
                         + ("" if labels is None else f", categories {len(labels)}"))
    valid = np.isfinite(pred) & np.isfinite(target)
    pred, target = pred[valid], target[valid]
    labels = None if labels is None else labels[valid]

    mapping = fit_logistic4(pred, target) if fit == "logistic4" else fit
    if mapping is not None and not isinstance(mapping, FittedMapping):
        raise ValueError(f"fit must be None, 'logistic4' or a FittedMapping, not {fit!r}")

    # Figure + Agg canvas directly: no pyplot, so the caller's backend and global state are untouched.
    figure = Figure(figsize=(6, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if labels is None:
        axes.scatter(pred, target, s=12, alpha=0.6, edgecolors="none")
    else:
        names = sorted(set(labels.tolist()))
        colours = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
        for i, name in enumerate(names):
            members = labels == name
            axes.scatter(pred[members], target[members], s=12, alpha=0.6, edgecolors="none",
                         color=colours(i % colours.N), label=f"{name} (n={int(members.sum())})")
    if mapping is not None and len(pred):
        xs = np.linspace(pred.min(), pred.max(), 200)
        axes.plot(xs, mapping(xs), color="black", linewidth=1.5, label=f"{mapping.method} fit")
    if labels is not None or mapping is not None:
        axes.legend(fontsize="small", markerscale=1.5, loc="lower right")

    # Ranks do not change under a monotone mapping, so SRCC is always that of the raw predictions.
    plcc_value = plcc(pred if mapping is None else mapping(pred), target)
    plcc_label = "PLCC" if mapping is None else f"PLCC ({mapping.method})"
    annotation = f"SRCC {srcc(pred, target):.3f}\n{plcc_label} {plcc_value:.3f}\nn = {len(pred)}"
    axes.text(0.02, 0.98, annotation, transform=axes.transAxes, va="top", ha="left", fontsize="small",
              bbox=dict(boxstyle="round", facecolor="white", alpha=0.8, edgecolor="0.7"))
    axes.set_xlabel("prediction")
    axes.set_ylabel("human score")
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    replace_atomically(Path(path), lambda temp: figure.savefig(temp, format="png"), suffix=".png")

