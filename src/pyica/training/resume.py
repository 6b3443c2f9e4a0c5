"""Crash-safe training: the checkpoint files of :mod:`pyica.training.loop`, one per fit, and exact resume.

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

__all__ = ["rng_state", "set_rng_state", "FitCheckpoints", "CheckpointFile", "dataset_fingerprint", "plain",
           "upgrade_checkpoint", "CHECKPOINT_FORMAT"]

log = logging.getLogger(__name__)

#: The one checkpoint schema of every trainer (see :func:`upgrade_checkpoint` for the older ones).
CHECKPOINT_FORMAT = "pyica.fit_checkpoint/2"
_FIT_V1, _PRETRAIN_V1 = "pyica.fit_checkpoint/1", "pyica.pretrain/1"


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


def upgrade_checkpoint(state: dict, where: str | os.PathLike = "checkpoint") -> dict:
    """A checkpoint in the :data:`CHECKPOINT_FORMAT` schema, from it or from pyica 0.1's layouts (the
    probe's and CM-SSA's ``fit_checkpoint/1``, ICNet's variant of it with ``optimiser``/``best_state``,
    and pretraining's ``pretrain/1``), so an interrupted run of the older code continues; anything else
    is refused with a message naming the file."""
    fmt = state.get("format")
    if fmt == CHECKPOINT_FORMAT:
        return state
    if fmt == _PRETRAIN_V1:
        data = state["data"]
        return {"format": CHECKPOINT_FORMAT, "finished": False, "step": int(state["step"]),
                "epoch": int(data["epoch"]), "epoch_step": int(data["consumed"]) // max(1, int(data["global_batch"])),
                "model": state["model"], "optimizer": state["optimizer"], "scaler": None, "rng": state["rng"],
                "history": [], "stale": 0, "best": {"score": -float("inf"), "epoch": 0, "state": None},
                "task": {"data": data, "generator": state.get("generator"), "elapsed_s": state.get("elapsed_s", 0.0),
                         "last_loss": state.get("last_loss"), "last_parts": state.get("last_parts", {}),
                         "world_size": state.get("world_size"), "config": state.get("config")}}
    if fmt != _FIT_V1:
        raise ValueError(f"{where}: not a pyica checkpoint (format {fmt!r}); delete it to start over")
    out = {"format": CHECKPOINT_FORMAT, "key": state.get("key"), "finished": bool(state["finished"]),
           "epoch": int(state["epoch"]), "epoch_step": 0, "model": state["model"], "stale": int(state.get("stale", 0)),
           "step": int(state.get("iteration", 0)), "rng": state.get("rng"), "scaler": state.get("scaler")}
    if "result" in state:  # CM-SSA's finished fit
        result = state["result"]
        out["history"] = list(result["history"])
        chosen = result["best_epoch"] if result.get("selected_on") == "validation" else 0
        out["best"] = {"score": -float("inf"), "epoch": chosen, "state": None}
    else:
        out["history"] = list(state["history"])
        if "best" in state:  # the probe's and CM-SSA's layout
            out["best"] = {"state": None, **state["best"]}
        else:  # ICNet's
            out["best"] = {"score": state["best_score"], "epoch": state["best_epoch"], "state": state.get("best_state")}
    if not out["finished"]:
        if "optimizer" not in state and "optimiser" not in state:
            raise ValueError(f"{where}: an unfinished checkpoint without an optimiser state; delete it to start over")
        out["optimizer"] = state["optimizer"] if "optimizer" in state else state["optimiser"]
    return out


class CheckpointFile:
    """One fit's checkpoint file: :meth:`load` (``None`` unless resuming and the file exists) and :meth:`save`
    (atomic). ``key`` (when given) is stored and checked, so a file never continues another fit."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = True, key: str | None = None):
        self.path, self.resume, self.key = Path(path), bool(resume), key

    def load(self) -> dict | None:
        if not self.resume or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a torn or foreign file: say which, never unpickle code
            raise ValueError(f"{self.path}: unreadable checkpoint ({type(err).__name__}: {err}); "
                             "delete it to start over") from None
        if not isinstance(state, dict):
            raise ValueError(f"{self.path}: not a pyica checkpoint")
        state = upgrade_checkpoint(state, self.path)
        if self.key is not None and state.get("key") not in (None, self.key):
            raise ValueError(f"{self.path}: a checkpoint of another fit")
        return state

    def save(self, state: dict) -> None:
        state = {"format": CHECKPOINT_FORMAT, **({"key": self.key} if self.key else {}), **state}
        replace_atomically(self.path, lambda temp: torch.save(state, temp), suffix=".pt")


class FitCheckpoints:
    """Checkpoint files of a trainer's fits in ``directory``, one per fit key (see the module doc).

    ``resume=False`` ignores files already there (they are overwritten); ``resume=True`` continues
    a fit from its file, or returns a finished fit's result without training. :meth:`remove` deletes
    only the files of the fits this object handed out, never another file that happens to be there.
    """

    def __init__(self, directory: str | os.PathLike, *, resume: bool = True):
        self.directory, self.resume = Path(directory), bool(resume)
        self.used: set[str] = set()  # keys of the fits this object handed out

    @staticmethod
    def key(*parts: Any) -> str:
        """A hash of ``parts`` (JSON-serialisable after :func:`plain`)."""
        text = json.dumps(plain(list(parts)), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def path(self, key: str) -> Path:
        return self.directory / f"fit-{key}.pt"

    def file(self, key: str) -> CheckpointFile:
        self.used.add(key)
        return CheckpointFile(self.path(key), resume=self.resume, key=key)

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("fit-*.pt")) if self.directory.is_dir() else []

    def remove(self) -> None:
        """Delete the checkpoint files of the fits handed out here (and the folder when that leaves it empty)."""
        for key in self.used:
            self.path(key).unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass
