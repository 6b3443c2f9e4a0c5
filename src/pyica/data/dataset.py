"""The in-memory form of a labelled (or unlabelled) image set.

Every loader (IC9600, VISC-C, SAVOIAS, CSV manifests, plain folders) returns a
:class:`ComplexityDataset`; every protocol, split and trainer consumes one. Columns are numpy arrays
(not lists of objects) so that DataLoader workers share them cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ComplexityDataset", "label_range"]


@dataclass
class ComplexityDataset:
    """Images with human complexity scores.

    Attributes:
        name: short identifier (``"savoias"``, ``"ic9600"``, a CSV's stem, ...).
        root: folder that relative ``paths`` are resolved against.
        paths: image paths as stored in the manifest (relative to ``root`` or absolute), ``str`` array.
        scores: float64 array; ``nan`` where an image has no label (unlabelled folders).
        categories: ``str`` array, ``""`` where unknown.
        groups: ``str`` array naming duplicate groups: images with the same non-empty group are the
            same picture and must land on the same side of every split. ``""`` = no group.
        splits: named split columns (``{"official": array of "train"/"val"/"test"/""}``).
        per_category_scale: True when scores are only comparable inside a category (SAVOIAS); then
            per-category metrics (and their mean) are the primary numbers.
        score_scale: ``(low, high)`` of the label scale, for reporting (``(0, 100)`` for SAVOIAS).
    """

    name: str
    root: Path
    paths: np.ndarray
    scores: np.ndarray
    categories: np.ndarray
    groups: np.ndarray
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    per_category_scale: bool = False
    score_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        n = len(self.paths)
        self.paths = np.asarray(self.paths, dtype=str)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.categories = np.asarray(self.categories if len(self.categories) else [""] * n, dtype=str)
        self.groups = np.asarray(self.groups if len(self.groups) else [""] * n, dtype=str)
        for column, values in (("scores", self.scores), ("categories", self.categories), ("groups", self.groups)):
            if len(values) != n:
                raise ValueError(f"{self.name}: {column} has {len(values)} entries for {n} paths")
        for split_name, values in list(self.splits.items()):
            values = np.asarray(values, dtype=str)
            if len(values) != n:
                raise ValueError(f"{self.name}: split {split_name!r} has {len(values)} entries for {n} paths")
            self.splits[split_name] = values

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return bool(len(self)) and bool(np.isfinite(self.scores).any())

    def full_path(self, i: int) -> Path:
        p = Path(self.paths[i])
        return p if p.is_absolute() else self.root / p

    def full_paths(self) -> list[str]:
        return [str(self.full_path(i)) for i in range(len(self))]

    def category_names(self) -> list[str]:
        return sorted(set(self.categories.tolist()) - {""})

    def subset(self, index: np.ndarray, name: str | None = None) -> "ComplexityDataset":
        """A new dataset holding rows ``index`` (integer or boolean array)."""
        index = np.asarray(index)
        return ComplexityDataset(
            name=name or self.name,
            root=self.root,
            paths=self.paths[index],
            scores=self.scores[index],
            categories=self.categories[index],
            groups=self.groups[index],
            splits={k: v[index] for k, v in self.splits.items()},
            per_category_scale=self.per_category_scale,
            score_scale=self.score_scale,
        )


def label_range(parts) -> tuple[float, float]:
    """``(low, high)`` of the label scale of datasets ``parts``: the declared ``score_scale`` of the
    first, else the observed range. Learned models train on scores mapped to [0, 1] with it."""
    scale = parts[0].score_scale
    if scale is not None:
        return float(scale[0]), float(scale[1])
    scores = np.concatenate([p.scores for p in parts])
    return float(np.nanmin(scores)), float(np.nanmax(scores))
