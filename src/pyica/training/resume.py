"""Crash-safe training for the epoch trainers (CM-SSA, probes): a checkpoint per fit, exact resume.

A trainer given a checkpoint folder writes, after every epoch, one file per fit,
``fit-<key>.pt``, where ``key`` is a hash of everything that defines the fit (the trainer, the
training and validation images with their labels, the recipe, the model's settings, a probe's
lr): a 10-split evaluation has one file per split, a probe's lr grid one per lr, and a changed
recipe never continues an old run. The file holds the trainable tensors, the optimiser and
GradScaler states, the epoch, the best epoch so far with its tensors, the early-stopping counter,
the history and the RNG states, as tensors and plain containers: it loads with
``torch.load(weights_only=True)``, nothing pickled is executed. Writes go to a temporary file that
is then renamed over the old one (:func:`pyica.writers.replace_atomically`), so a kill leaves the
previous checkpoint or the new one, never a torn file; only rank 0 writes.

Data order: epoch ``e`` draws its permutation (and a probe its flips) from a generator seeded with
``seed`` and fast-forwarded over epochs ``1..e-1``, a function of ``(seed, e)`` only, so a resumed
run trains on the same batches as an uninterrupted one, and on CPU ends with bit-identical weights.

A fit that ends stores its selected tensors and its result with ``finished: true``; resuming a
10-split evaluation skips the splits already done. ``pyica train`` removes the folder once the
weights and card are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..writers import replace_atomically

__all__ = ["rng_state", "set_rng_state", "FitCheckpoints", "dataset_fingerprint", "plain"]

log = logging.getLogger(__name__)

FORMAT = "pyica.fit_checkpoint/1"


# --- RNG states as tensors and plain lists (weights_only-loadable) -----------------------------------

def rng_state() -> dict:
    """The Python, NumPy, torch (and CUDA) global RNG states, loadable with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only on the same number of GPUs)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- per-fit checkpoints -----------------------------------------------------------------------------

def plain(obj: Any) -> Any:
    """``obj`` (containers of metadata: histories, results) with NumPy scalars and arrays and paths
    turned into plain Python values, which ``torch.load(weights_only=True)`` accepts."""
    if isinstance(obj, dict):
        return {k if isinstance(k, (str, int)) else str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def dataset_fingerprint(ds) -> list | None:
    """What identifies a labelled part for a checkpoint key: its image paths and labels."""
    if ds is None or not len(ds):
        return None
    return [list(ds.full_paths()), [float(s) for s in np.asarray(ds.scores, dtype=np.float64)]]


class FitCheckpoints:
    """Checkpoint files of a trainer's fits in ``directory`` (see the module doc).

    ``resume=False`` ignores files already there (they are overwritten); ``resume=True`` continues
    a fit from its file, or returns a finished fit's result without training.
    """

    def __init__(self, directory: str | os.PathLike, *, resume: bool = True):
        self.directory, self.resume = Path(directory), bool(resume)

    @staticmethod
    def key(*parts: Any) -> str:
        """A hash of ``parts`` (JSON-serialisable after :func:`plain`)."""
        text = json.dumps(plain(list(parts)), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def path(self, key: str) -> Path:
        return self.directory / f"fit-{key}.pt"

    def load(self, key: str) -> dict | None:
        """The state of fit ``key`` when resuming and it has a file, else ``None``."""
        path = self.path(key)
        if not self.resume or not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT or state.get("key") != key:
            raise ValueError(f"{path}: not a pyica fit checkpoint for this fit")
        return state

    def save(self, key: str, state: dict, main: bool = True) -> None:
        """Write fit ``key``'s ``state`` atomically (on rank 0 only: ``main``)."""
        if main:
            state = {"format": FORMAT, "key": key, **state}
            replace_atomically(self.path(key), lambda temp: torch.save(state, temp), suffix=".pt")

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("fit-*.pt")) if self.directory.is_dir() else []

    def remove(self) -> None:
        """Delete the checkpoint files (and the folder when that leaves it empty)."""
        for f in self.files():
            f.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass
