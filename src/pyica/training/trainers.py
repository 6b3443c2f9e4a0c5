"""``pyica train CONFIG``: one path for every method, the :class:`Trainer` protocol and the config schema.

A training config is a JSON file (packaged ones in ``pyica/configs/``, named without ``.json``, see
:mod:`pyica.training.config`) whose ``method`` says what trains::

    method   trainer (module)                                  final fit
    ridge    the registered model's own head (fit_head)        every image; ridge alpha by leave-one-out
    cmssa    CMSSATrainer (train_cmssa)                        90 %; the epoch chosen on the other 10 %
    icnet    ICNetTrainer (train_icnet)                        90 %; the epoch chosen on the other 10 %

``ridge`` is the default (the shipped default model's configs name no method). :func:`train_config`
does the same steps for each: read and validate the config once (:class:`TrainConfig`: a typo'd key or
a wrong type is one line naming the file), build the method's trainer (:func:`build_trainer`), evaluate
the recipe under the config's ``evaluation`` protocol (every split refits; the card's metrics), fit the
final model, and write its weights and card (:mod:`pyica.weights`, rank 0) and remove the fits'
checkpoints (unless ``keep_checkpoints``). Where: ``--output-dir``, else the config's ``output_dir``,
else ``runs/NAME-DATE/`` in the working directory (``NAME``: ``--name`` or the config's model; ``DATE``:
local time ``YYYYmmdd-HHMMSS``), so nothing is ever written into the installed package by default; the
files are ``NAME.safetensors`` and ``NAME.json``. ``--resume`` without a folder continues the newest
``runs/NAME-*`` that holds checkpoints; ``--verify`` without one compares with the shipped
``pyica/assets/weights/MODEL.safetensors``. The gradient-descent trainers all run the one epoch loop,
:mod:`pyica.training.loop`; under torchrun every process trains, the ridge head is fitted by rank 0 from
features the processes extract in shares.

Anything with ``fit_dataset`` and ``score_files`` is a :class:`Trainer`, which is what
:func:`pyica.evaluation.run_protocol` evaluates: the CLICv2 probe (:mod:`pyica.training.probe`) is one
too, trained on a pretrained encoder rather than from a config.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..evaluation import run_protocol
from ..reports import CATEGORY_MEAN, POOLED, summarise
from . import distributed
from .config import (DATA_ENV, Method, TrainConfig, TrainOptions, default_root, load_config, read_json_config,
                     section_from)

__all__ = ["Trainer", "TrainConfig", "TrainOptions", "Method", "METHODS", "read_json_config", "load_config",
           "build_trainer", "train_config", "evaluate_recipe", "headline_metrics", "section_from", "RUNS_DIR",
           "check_run_name", "shipped_weights_dir"]

#: Where ``pyica train`` writes without ``--output-dir`` (relative to the working directory).
RUNS_DIR = "runs"

log = logging.getLogger(__name__)


class Trainer(Protocol):
    """What :func:`pyica.evaluation.run_protocol` and ``pyica train`` need of a method's trainer."""

    def fit_dataset(self, train, val=None, **kw) -> dict:
        """Train a fresh model on ``train`` (epochs or hyper-parameters chosen on ``val``); a summary."""

    def score_files(self, paths: Sequence[str], *, batch_size: int = 32, num_workers: int | None = None,
                    max_pixels: int | None = None, progress: bool = False) -> tuple[np.ndarray, dict[str, str]]:
        """Scores of ``paths`` by the trained model (``nan`` where a file failed) and ``{path: error}``."""


# --- methods --------------------------------------------------------------------------------------------

def _method(name: str) -> Method:
    # imported on demand: a method's module pulls in its models (transformers for CM-SSA)
    if name == "ridge":
        from .fit_head import METHOD
    elif name == "cmssa":
        from .train_cmssa import METHOD
    elif name == "icnet":
        from .train_icnet import METHOD
    else:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHOD


#: The methods ``pyica train`` runs (``method`` in a config).
METHODS = ("ridge", "cmssa", "icnet")


def checkpoint_dir(config: dict, out_dir: Path) -> Path:
    """Where a config's fits keep their checkpoints: ``output_dir/checkpoints`` (a CM-SSA run of pyica
    0.1 kept them in ``output_dir/<model>.checkpoints``; an interrupted one is continued from there)."""
    legacy = out_dir / f"{config['model']}.checkpoints"
    current = out_dir / "checkpoints"
    if legacy.is_dir() and any(legacy.glob("fit-*.pt")) and not current.exists():
        return legacy
    return current


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_run_name(name: str) -> str:
    """A trained model's name (``--name``): it becomes the card's name and the weights' file stem, so it
    is one safe file name (letters, digits, ``_.+-``; not ending in ``.safetensors`` or ``.json``)."""
    if not _NAME.fullmatch(name or "") or name.endswith((".safetensors", ".json")) or len(name) > 200:
        raise ValueError(f"--name {name!r}: a model name is letters, digits and _.+- (it names the card and the "
                         "weights file), e.g. my_head.savoias")
    return name


def shipped_weights_dir() -> Path:
    """The package's own weights folder (read by ``--verify``; written only when named with --output-dir)."""
    from importlib import resources

    return Path(str(resources.files("pyica") / "assets" / "weights"))


def _latest_run(name: str) -> Path | None:
    """The newest ``runs/NAME-<date>`` folder that holds checkpoints (what ``--resume`` continues)."""
    runs = Path(RUNS_DIR)
    if not runs.is_dir():
        return None
    pattern = re.compile(re.escape(name) + r"-\d{8}-\d{6}(-\d+)?")
    found = [d for d in runs.iterdir() if d.is_dir() and pattern.fullmatch(d.name) and (d / "checkpoints").is_dir()]
    return max(found, key=lambda d: (d.name[len(name) + 1:len(name) + 16], d.stat().st_mtime)) if found else None


def _new_run_dir(name: str) -> Path:
    """``runs/NAME-DATE`` (local time), with ``-2``, ``-3``, ... when a run of the same second exists."""
    base = Path(RUNS_DIR) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _output_dir(config: dict, options: TrainOptions, name: str, dist, resumable: bool = True) -> Path:
    """Where a run writes (module doc); under torchrun rank 0 decides and every process gets its answer.
    ``resumable``: the method checkpoints (``--resume`` means nothing to a closed-form head)."""
    if options.output_dir or config.get("output_dir"):
        return Path(options.output_dir or config["output_dir"])
    if options.verify:
        return shipped_weights_dir()
    if options.resume and resumable:
        found = _latest_run(name) if dist.main else None
        found = dist.broadcast_object(str(found) if found else None)
        if found is None:
            raise FileNotFoundError(f"--resume: no run of {name} with checkpoints in {Path(RUNS_DIR).resolve()}; "
                                    "pass the run's folder with --output-dir")
        return Path(found)
    return Path(dist.broadcast_object(str(_new_run_dir(name)) if dist.main else None))


def build_trainer(config: dict, ds, options: TrainOptions | None = None, *, dist: distributed.Distributed | None = None,
                  out_dir: Path | None = None, checkpoint_dir: str | os.PathLike | None = None) -> Trainer:
    """The trainer of a config (:func:`load_config`) for its method, e.g. to evaluate a recipe with
    :func:`pyica.evaluation.run_protocol` outside ``pyica train`` (``ds``: the dataset, which a method may
    need to build it, e.g. CM-SSA's captions; ``checkpoint_dir``: where its fits checkpoint)."""
    options = options or TrainOptions()
    dist = dist or distributed.current(options.device)
    out_dir = out_dir or Path(options.output_dir or config.get("output_dir") or ".")
    method = _method(config.get("method", "ridge"))
    extra = {"checkpoint_dir": Path(checkpoint_dir)} if checkpoint_dir is not None and method.checkpoints else {}
    return method.build(config, ds, options, dist, out_dir, **extra)


def train_config(config_path: str | os.PathLike, options: TrainOptions | None = None) -> dict[str, Any]:
    """Run a training config (module doc); returns the card (or, with ``verify``, the comparison with the
    shipped weights). Under torchrun every process calls it and gets rank 0's result."""
    from ..data import load_dataset

    options = options or TrainOptions()
    config = load_config(config_path)
    name = check_run_name(options.name) if options.name is not None else config["model"]
    method = _method(config["method"])
    if options.verify and method.verify is None:
        raise ValueError(f"{config_path}: --verify refits closed-form heads only, not method {config['method']!r}")
    for section, cls in method.sections.items():  # a typo fails now, not after the data is loaded
        section_from(cls, config, section, **({"device": "cpu"} if section == "recipe" else {}))
    if config.get("recipe") and "recipe" not in method.sections:
        raise ValueError(f"{config_path}: method {config['method']!r} takes no recipe")
    with distributed.Distributed(options.device) as dist:
        root = options.root or config.get("root") or default_root(config["dataset"])
        if root is None and config["dataset"].lower() in _named_datasets():
            raise ValueError(f"{config_path}: dataset {config['dataset']!r} needs its folder: pass --root DIR, or set "
                             f"{DATA_ENV} to the folder that holds {config['dataset'].lower()}/")
        config["root"] = root
        ds = load_dataset(config["dataset"], root=root)
        out_dir = _output_dir(config, options, name, dist, resumable=method.checkpoints)
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"{out_dir}: the output folder is a file")
        checkpoints = None
        if method.checkpoints:
            from .resume import FitCheckpoints

            checkpoints = FitCheckpoints(checkpoint_dir(config, out_dir), resume=options.resume)
            if checkpoints.files() and not options.resume:
                raise FileExistsError(f"{checkpoints.directory} holds checkpoints of an earlier run: pass --resume "
                                      "to continue it (finished fits are reused), or move the folder away")
        if dist.main and not options.verify:
            out_dir.mkdir(parents=True, exist_ok=True)
        trainer = build_trainer(config, ds, options, dist=dist, out_dir=out_dir,
                                checkpoint_dir=checkpoints.directory if checkpoints else None)
        if dist.world > 1 and not method.every_rank_trains:
            method.share(trainer, ds, dist, options)
            result = _fit_and_write(method, trainer, config, ds, options, dist, out_dir) if dist.main else None
            return dist.broadcast_object(result)  # the other processes wait here for rank 0
        result = _fit_and_write(method, trainer, config, ds, options, dist, out_dir)
        fits = getattr(trainer, "checkpoints", None)  # the trainer's: it knows which files its fits wrote
        if dist.main and fits is not None and not config.get("keep_checkpoints"):
            fits.remove()  # the weights are written: nothing left to resume
        result = dist.broadcast_object(result)
        dist.barrier()
        return result


def _fit_and_write(method: Method, trainer: Trainer, config: dict, ds, options: TrainOptions, dist,
                   out_dir: Path) -> dict:
    from ..data.splits import carve_validation

    name = options.name or config["model"]
    evaluation = None
    if options.evaluate and config["evaluation"] and not options.verify:
        log.info("evaluating the recipe: %s", config["evaluation"])
        evaluation = evaluate_recipe(name, ds, trainer, config["evaluation"], num_workers=options.num_workers,
                                     progress=options.progress and dist.main)
    if method.final_validation:
        val_fraction = (config["evaluation"] or {}).get("val_fraction", 0.1)
        train_idx, val_idx = carve_validation(ds, np.arange(len(ds)), val_fraction, seed=trainer.recipe.seed)
        fit = trainer.fit_dataset(ds.subset(train_idx), ds.subset(val_idx))
        fit["n_validation"] = len(val_idx)
    else:
        log.info("fitting on all %d images of %s", len(ds), ds.name)
        fit = trainer.fit_dataset(ds, None, num_workers=options.num_workers, progress=options.progress)
    weights_file = out_dir / f"{name}.safetensors"
    if options.verify:
        return method.verify(trainer, ds, config, weights_file)
    card = method.card(trainer, fit, config, ds, evaluation, dist)
    if options.name:  # the method names the card after the registered model it trains
        card["name"] = name
        if isinstance(card.get("training"), dict):
            card["training"]["trained_as"] = config["model"]
    return method.save(trainer, card, weights_file) if dist.main else card


def _named_datasets() -> set[str]:
    from ..data.loaders import list_datasets

    return {n.lower() for n in list_datasets()} | {"viscc"}


def evaluate_recipe(name: str, ds, trainer: Trainer, ev: dict, *, num_workers=None, progress: bool = False) -> dict:
    """Run a config's ``evaluation`` block (protocol, splits, seed, fractions) with ``trainer`` refitted per
    split; the card's ``evaluation`` entry."""
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
