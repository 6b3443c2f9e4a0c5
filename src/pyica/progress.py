"""Progress bars, shared by scoring, feature extraction, captioning and the trainers.

Everything goes to stderr (stdout carries data, e.g. CSV scores). A bar with a ``total`` shows the count
out of it, the rate and the ETA; without one, the count and the rate. :func:`progress_line` prints a line
above a running bar without breaking it (the trainers' line per epoch).
"""

from __future__ import annotations

import sys

__all__ = ["progress_bar", "progress_line"]


def progress_bar(total: int | None, enabled: bool, unit: str = "img", initial: int = 0, desc: str | None = None):
    """A tqdm bar on stderr counting ``unit`` (disabled, but still callable, when not ``enabled``;
    without a ``total`` it shows the count and the rate; with one, the ETA). ``initial``: units already
    done (a resumed run: the bar continues at ``initial``/``total``, the ETA from this run's rate)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


def progress_line(bar, text: str) -> None:
    """Print ``text`` on stderr above ``bar`` (which keeps running below it)."""
    bar.write(text, file=sys.stderr)
