"""Train/validation/test splits that respect categories and duplicate groups.

Every split here is **group-safe**: images that share a non-empty ``ds.groups`` id are the same
picture and always land on the same side. Random splits are **stratified** by category when asked:
each category is split in the requested ratio on its own (to within rounding).

How a random split picks its test part (:func:`random_split`; validation parts are carved from the
training part the same way):

1. Rows are gathered into *units*: a duplicate group is one unit, any other image is a unit of one.
   Units are shuffled with a ``numpy`` ``Generator`` seeded by ``seed``.
2. Each category (the stratum; one stratum for all when ``stratify=False``) gets a quota of
   ``round(fraction * images in it)`` test images.
3. A multi-image unit goes to test with probability ``fraction``, but only if it fits the quotas of
   **every** category it has members in. This is the rule for groups that span categories (the
   SAVOIAS Art/Suprematism duplicates): the whole group moves, and it is counted in each of its
   categories, so no category overshoots its quota and groups are not always pushed to one side.
4. Single images then fill each category's remaining quota in shuffled order, which makes the
   per-category counts exact; only if a category runs out of single images do further groups that
   still fit fill the gap.

The same seed gives the same split on every platform (numpy's ``Generator`` streams are
platform-independent; the unit order depends only on row order).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .dataset import ComplexityDataset

__all__ = [
    "Split", "official_split", "random_split", "carve_validation", "repeated_random_splits",
    "leave_one_category_out",
]


@dataclass
class Split:
    """Row indices of one train/validation/test split of a dataset.

    The index arrays are stored sorted (``int64``); they must be disjoint. ``val`` may be empty.
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):
            setattr(self, part, np.sort(np.asarray(getattr(self, part), dtype=np.int64).ravel()))
        combined = np.concatenate([self.train, self.val, self.test])
        if len(np.unique(combined)) != len(combined):
            raise ValueError(f"split {self.name!r}: train, val and test overlap or repeat rows")


def _check_fraction(value: float, what: str, allow_zero: bool = True) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        raise ValueError(f"{what} must be in {'[0' if allow_zero else '(0'}, 1), not {value}")


def _percent(fraction: float) -> str:
    return format(round(fraction * 100, 6), "g")


def _units(ds: ComplexityDataset, index: np.ndarray) -> list[np.ndarray]:
    """Rows of ``index`` gathered by duplicate group (a row without group is its own unit), by first row."""
    units: list[list[int]] = []
    unit_of_group: dict[str, list[int]] = {}
    for row in index.tolist():
        group = ds.groups[row]
        if not group:
            units.append([row])
        elif group in unit_of_group:
            unit_of_group[group].append(row)
        else:
            unit_of_group[group] = [row]
            units.append(unit_of_group[group])
    return [np.asarray(unit, dtype=np.int64) for unit in units]


def _pick(ds: ComplexityDataset, index: np.ndarray, fraction: float, rng: np.random.Generator,
          stratify: bool) -> np.ndarray:
    """A group-safe, optionally stratified sample of about ``fraction`` of ``index`` (algorithm in the module doc)."""
    index = np.unique(np.asarray(index, dtype=np.int64))
    if fraction <= 0 or len(index) == 0:
        return np.array([], dtype=np.int64)
    strata = ds.categories if stratify else np.full(len(ds), "", dtype=str)
    quota = {s: math.floor(fraction * n + 0.5) for s, n in Counter(strata[index].tolist()).items()}
    taken = dict.fromkeys(quota, 0)
    units = _units(ds, index)
    unit_strata = [Counter(strata[unit].tolist()) for unit in units]
    order = rng.permutation(len(units))
    draws = rng.random(len(units))  # drawn for every unit so the stream does not depend on the groups
    picked = np.zeros(len(units), dtype=bool)

    def take_if_fits(u: int) -> None:
        if not picked[u] and all(taken[s] + k <= quota[s] for s, k in unit_strata[u].items()):
            picked[u] = True
            for s, k in unit_strata[u].items():
                taken[s] += k

    for u in order:
        if len(units[u]) > 1 and draws[u] < fraction:
            take_if_fits(u)
    for u in order:
        if len(units[u]) == 1:
            take_if_fits(u)
    for u in order:
        if len(units[u]) > 1:
            take_if_fits(u)
    chosen = [units[u] for u in np.flatnonzero(picked)]
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def carve_validation(ds: ComplexityDataset, train_idx: np.ndarray, fraction: float, seed: int = 0,
                     stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Split ``train_idx`` into ``(train, val)`` with about ``fraction`` of it in ``val``.

    Group-safe and stratified by category like :func:`random_split`; both arrays are sorted.
    """
    _check_fraction(fraction, "fraction")
    train_idx = np.unique(np.asarray(train_idx, dtype=np.int64))
    val = _pick(ds, train_idx, fraction, np.random.default_rng(seed), stratify)
    return np.setdiff1d(train_idx, val), val


def random_split(ds: ComplexityDataset, test_fraction: float = 0.2, val_fraction: float = 0.0, seed: int = 0,
                 stratify: bool = True) -> Split:
    """A seeded random train/test split, group-safe and (optionally) stratified by category.

    ``val_fraction`` is the part of the *training* part that becomes the validation set (0.1 with
    ``test_fraction=0.2`` gives 72/8/20); it is drawn from the same generator after the test part,
    so the test part does not depend on ``val_fraction``. The name, e.g. ``random80-20_seed3``,
    identifies the test part.
    """
    _check_fraction(test_fraction, "test_fraction", allow_zero=False)
    _check_fraction(val_fraction, "val_fraction")
    rng = np.random.default_rng(seed)
    everything = np.arange(len(ds), dtype=np.int64)
    test = _pick(ds, everything, test_fraction, rng, stratify)
    train = np.setdiff1d(everything, test)
    val = _pick(ds, train, val_fraction, rng, stratify)
    name = f"random{_percent(1 - test_fraction)}-{_percent(test_fraction)}_seed{seed}"
    return Split(name, np.setdiff1d(train, val), val, test)


def repeated_random_splits(ds: ComplexityDataset, n_splits: int = 10, seed: int = 0, **kwargs) -> list[Split]:
    """``n_splits`` calls of :func:`random_split` with seeds ``seed .. seed + n_splits - 1``."""
    if n_splits < 1:
        raise ValueError(f"n_splits must be at least 1, not {n_splits}")
    return [random_split(ds, seed=seed + i, **kwargs) for i in range(n_splits)]


def official_split(ds: ComplexityDataset, column: str = "official", val_fraction: float = 0.0,
                   seed: int = 0) -> Split:
    """The split stored in ``ds.splits[column]`` (rows marked ``""`` are left out).

    When the column has no ``val`` rows and ``val_fraction`` > 0, a validation part is carved from
    its training rows (:func:`carve_validation`); a column that defines ``val`` rows keeps them.
    """
    if column not in ds.splits:
        have = ", ".join(sorted(ds.splits)) or "none"
        raise ValueError(f"dataset {ds.name!r} has no split column {column!r} (split columns: {have})")
    values = ds.splits[column]
    train, val, test = (np.flatnonzero(values == part) for part in ("train", "val", "test"))
    if not len(test):
        raise ValueError(f"dataset {ds.name!r}: split column {column!r} marks no row as test")
    if val_fraction and not len(val):
        train, val = carve_validation(ds, train, val_fraction, seed)
    return Split(column, train, val, test)


def leave_one_category_out(ds: ComplexityDataset, val_fraction: float = 0.0, seed: int = 0) -> list[Split]:
    """One split per category: test on that category, train on the others.

    Rows without a category stay in training. Training rows whose duplicate group has a member in
    the held-out category are dropped, so the same picture is never on both sides.
    """
    names = ds.category_names()
    if len(names) < 2:
        raise ValueError(f"dataset {ds.name!r}: leave-one-category-out needs at least 2 categories, "
                         f"it has {len(names)}")
    splits = []
    for category in names:
        test = np.flatnonzero(ds.categories == category)
        held_out_groups = sorted(set(ds.groups[test].tolist()) - {""})
        shares_group = np.isin(ds.groups, held_out_groups) if held_out_groups else np.zeros(len(ds), dtype=bool)
        train = np.flatnonzero((ds.categories != category) & ~shares_group)
        val = np.array([], dtype=np.int64)
        if val_fraction:
            train, val = carve_validation(ds, train, val_fraction, seed)
        splits.append(Split(f"loco_{category}", train, val, test))
    return splits
