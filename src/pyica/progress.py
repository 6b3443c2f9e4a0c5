"""Progress bars, shared by scoring, feature extraction, captioning and the trainers."""

from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(total: int | None, enabled: bool, unit: str = "img"):
    """A tqdm bar on stderr counting ``unit`` (disabled, but still callable, when not ``enabled``;
    without a ``total`` it shows the count and the rate; with one, the ETA)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True, smoothing=0.1)
