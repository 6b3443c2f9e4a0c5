"""Check a dataset before training or evaluating on it.

:func:`validate_dataset` returns a JSON-ready report (missing and unreadable files, duplicate paths,
score statistics overall and per category, split counts, duplicate groups, warnings);
:func:`format_validation_report` renders it for a terminal.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..loading import ImageLoadError, load_image
from .dataset import ComplexityDataset

__all__ = ["validate_dataset", "format_validation_report"]

_SPLIT_PARTS = ("train", "val", "test")
# Fewer labelled images than this make a per-category correlation too noisy to report on its own.
_SMALL_CATEGORY = 10
# How many missing/unreadable files the text report lists before summarising the rest.
_LIST_LIMIT = 20


def _decode_problem(path: str, max_pixels: int | None) -> str | None:
    """``None`` when ``path`` decodes, else the :class:`ImageLoadError` reason."""
    try:
        load_image(path, max_pixels=max_pixels)
    except ImageLoadError as err:
        return err.reason
    return None


def _stats(scores: np.ndarray) -> dict[str, Any]:
    finite = scores[np.isfinite(scores)]
    if not len(finite):
        return {"n": 0, "min": None, "max": None, "mean": None, "std": None}
    return {"n": int(len(finite)), "min": float(finite.min()), "max": float(finite.max()),
            "mean": float(finite.mean()), "std": float(finite.std())}


def _split_counts(values: np.ndarray) -> dict[str, int]:
    counts = Counter(values.tolist())
    result = {part: counts.pop(part, 0) for part in _SPLIT_PARTS}
    result["unassigned"] = counts.pop("", 0)
    result["invalid"] = sum(counts.values())
    return result


def validate_dataset(ds: ComplexityDataset, check_images: bool = True, max_pixels: int | None = None,
                     num_threads: int = 4) -> dict[str, Any]:
    """A report on ``ds`` (a plain dict of JSON types).

    Keys: ``name, root, n, labelled, nan_scores, checked_images, missing`` (paths as stored),
    ``unreadable`` (``{"path", "reason"}``), ``duplicate_paths`` (``{"path", "count"}``, same file
    listed more than once), ``categories`` (``{name: n}``), ``groups`` (duplicate-group counts),
    ``scores`` and ``scores_per_category`` (``n, min, max, mean, std`` of the finite scores),
    ``splits`` (per split column: counts of train/val/test/unassigned/invalid, overall and per
    category), ``per_category_scale``, ``score_scale`` and ``warnings``.

    With ``check_images`` every existing file is decoded with :func:`~pyica.loading.load_image`
    (on ``num_threads`` threads) and failures are listed with their reason; without, only
    existence is checked.
    """
    full_paths = ds.full_paths()
    exists = [os.path.exists(p) for p in full_paths]
    missing = [str(ds.paths[i]) for i, ok in enumerate(exists) if not ok]
    unreadable: list[dict[str, str]] = []
    if check_images:
        present = [i for i, ok in enumerate(exists) if ok]
        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            problems = pool.map(lambda i: _decode_problem(full_paths[i], max_pixels), present)
            unreadable = [{"path": str(ds.paths[i]), "reason": reason}
                          for i, reason in zip(present, problems) if reason is not None]

    listed = Counter(os.path.normcase(os.path.abspath(p)) for p in full_paths)
    duplicate_paths, reported = [], set()
    for i, p in enumerate(full_paths):
        key = os.path.normcase(os.path.abspath(p))
        if listed[key] > 1 and key not in reported:
            reported.add(key)
            duplicate_paths.append({"path": str(ds.paths[i]), "count": listed[key]})

    has_categories = bool(ds.category_names())
    category_counts = dict(sorted(Counter(ds.categories.tolist()).items())) if has_categories else {}
    scores_per_category = {
        c: _stats(ds.scores[ds.categories == c]) for c in category_counts
    }

    group_members: dict[str, list[int]] = {}
    for i, g in enumerate(ds.groups.tolist()):
        if g:
            group_members.setdefault(g, []).append(i)
    groups = {
        "groups": len(group_members),
        "grouped_images": sum(len(rows) for rows in group_members.values()),
        "singleton_groups": sum(len(rows) == 1 for rows in group_members.values()),
        "cross_category_groups": sum(len(set(ds.categories[rows].tolist())) > 1 for rows in group_members.values()),
    }

    warnings: list[str] = []
    splits: dict[str, Any] = {}
    for column, values in sorted(ds.splits.items()):
        entry: dict[str, Any] = _split_counts(values)
        if has_categories:
            entry["per_category"] = {c: _split_counts(values[ds.categories == c]) for c in category_counts}
        splits[column] = entry
        if entry["invalid"]:
            warnings.append(f"split {column!r}: {entry['invalid']} row(s) with a value other than train/val/test")
        straddling = [g for g, rows in group_members.items() if len(set(values[rows].tolist()) - {""}) > 1]
        if straddling:
            warnings.append(f"split {column!r}: {len(straddling)} duplicate group(s) span more than one part "
                            f"(e.g. {straddling[0]!r}): the same picture is trained and tested on")

    scores = _stats(ds.scores)
    nan_scores = int(np.isnan(ds.scores).sum())
    if scores["n"] == 0:
        warnings.append("no image has a score: usable for scoring, not for training or evaluation")
    elif nan_scores:
        warnings.append(f"{nan_scores} image(s) have no score (nan); metrics leave them out")
    if ds.per_category_scale:
        warnings.append("scores are on a per-category scale: compare them only within a category "
                        "(per-category metrics and their mean are the primary numbers, not pooled ones)")
        small = [c for c, s in scores_per_category.items() if c and 0 < s["n"] < _SMALL_CATEGORY]
        if small:
            warnings.append(f"categories with fewer than {_SMALL_CATEGORY} labelled images (unreliable "
                            f"per-category correlations): {', '.join(small)}")
    if ds.score_scale is not None and scores["n"]:
        low, high = ds.score_scale
        outside = int(((ds.scores < low) | (ds.scores > high)).sum())
        if outside:
            warnings.append(f"{outside} score(s) outside the stated scale [{low:g}, {high:g}]")
    if duplicate_paths:
        warnings.append(f"{len(duplicate_paths)} file(s) listed more than once")

    return {
        "name": ds.name,
        "root": str(ds.root),
        "n": len(ds),
        "labelled": scores["n"],
        "nan_scores": nan_scores,
        "checked_images": check_images,
        "missing": missing,
        "unreadable": unreadable,
        "duplicate_paths": duplicate_paths,
        "categories": category_counts,
        "groups": groups,
        "scores": scores,
        "scores_per_category": scores_per_category,
        "splits": splits,
        "per_category_scale": ds.per_category_scale,
        "score_scale": list(ds.score_scale) if ds.score_scale is not None else None,
        "warnings": warnings,
    }


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def _listing(title: str, lines: list[str]) -> list[str]:
    out = [f"{title}:"] + [f"  - {line}" for line in lines[:_LIST_LIMIT]]
    if len(lines) > _LIST_LIMIT:
        out.append(f"  ... and {len(lines) - _LIST_LIMIT} more")
    return out


def format_validation_report(report: dict[str, Any]) -> str:
    """Render a :func:`validate_dataset` report as readable text."""
    lines = [f"dataset {report['name']}  ({report['root']})"]
    lines.append(f"images: {report['n']}, labelled {report['labelled']}, without score {report['nan_scores']}")
    decoded = "all existing files decoded" if report["checked_images"] else "files not decoded"
    lines.append(f"files: {len(report['missing'])} missing, {len(report['unreadable'])} unreadable ({decoded})")
    lines.append(f"duplicate paths: {len(report['duplicate_paths'])}")
    g = report["groups"]
    lines.append(f"duplicate groups: {g['groups']} ({g['grouped_images']} images, "
                 f"{g['cross_category_groups']} across categories)")

    s = report["scores"]
    scale = report["score_scale"]
    scale_text = f"scale {scale[0]:g}..{scale[1]:g}" if scale else "scale not stated"
    if report["per_category_scale"]:
        scale_text += ", per category"
    lines.append(f"scores: min {_number(s['min'])}, max {_number(s['max'])}, mean {_number(s['mean'])}, "
                 f"std {_number(s['std'])} ({scale_text})")

    if report["categories"]:
        width = max(len("category"), *(len(c or "(none)") for c in report["categories"]))
        lines.append("per category:")
        lines.append(f"  {'category':<{width}}  {'images':>6}  {'scored':>6}  {'min':>7}  {'max':>7}  {'mean':>7}")
        for c, n in report["categories"].items():
            cs = report["scores_per_category"][c]
            lines.append(f"  {c or '(none)':<{width}}  {n:>6}  {cs['n']:>6}  {_number(cs['min']):>7}  "
                         f"{_number(cs['max']):>7}  {_number(cs['mean']):>7}")

    for column, counts in report["splits"].items():
        parts = ", ".join(f"{part} {counts[part]}" for part in (*_SPLIT_PARTS, "unassigned"))
        lines.append(f"split {column}: {parts}" + (f", invalid {counts['invalid']}" if counts["invalid"] else ""))
        for c, per in counts.get("per_category", {}).items():
            lines.append(f"  {c or '(none)'}: " + ", ".join(f"{part} {per[part]}" for part in _SPLIT_PARTS))

    if report["missing"]:
        lines.extend(_listing("missing files", report["missing"]))
    if report["unreadable"]:
        lines.extend(_listing("unreadable files", [f"{u['path']}: {u['reason']}" for u in report["unreadable"]]))
    if report["duplicate_paths"]:
        repeated = [f"{d['path']} (x{d['count']})" for d in report["duplicate_paths"]]
        lines.extend(_listing("listed more than once", repeated))
    if report["warnings"]:
        lines.extend(_listing("warnings", report["warnings"]))
    return "\n".join(lines)
