"""Training ICNet end to end with the official recipe, and ``pyica train CONFIG`` for ``"method": "icnet"``.

:class:`ICNetTrainer` trains a fresh ICNet (``fit_dataset(train, val)``) and scores files
(``score_files``), which is all :func:`pyica.evaluation.run_protocol` needs, so ICNet is evaluated by
the same code as every other model.

Recipe (:class:`ICNetRecipe`; defaults: ``tinglyfeng/IC9600`` ``options.py``/``train.py``)
------------------------------------------------------------------------------------------
SGD, lr 0.05, momentum 0.9, weight decay 1e-3 on every parameter (``model.parameters()``), batch 64,
30 epochs; a linear per-iteration warm-up over the first epoch, then the lr times 0.2 after epochs
10 and 20 (milestones given as fractions 1/3, 2/3 of ``epochs``, so shorter runs keep the shape).
The schedule is :func:`pyica.training.probe.lr_factor`, shared with the CLICv2 probe. One difference
from the official ``WarmUpLR``: its first iteration runs at lr 0 (``base * 0 / total``) and its last
warm-up iteration at ``base * (total - 1) / total``; ours runs at ``base * (i + 1) / total``, one
iteration ahead, so no step is wasted. Loss: ``0.9 MSE(score) + 0.1 MSE(mean(map))``
(:func:`pyica.models.icnet.icnet_loss`) on labels mapped to [0, 1] with
:func:`pyica.data.dataset.label_range`. Augmentation: the official ``Resize(S) -> RandomHorizontalFlip``,
a flip with p = 0.5 per image and epoch (of the resized image, the same thing).

Differences in protocol, not in the recipe: the official code trains on IC9600's train split and
reports every epoch on the test split with no selection; here the epoch is chosen on a validation
part (:func:`pyica.models.ridge.selection_score`: mean within-category SRCC, or SRCC with one
category), like every other pyica trainer, and ``patience`` gives optional early stopping. Without
a validation part (or when it cannot rank) the last epoch is kept. A final batch of a single image
is skipped (BatchNorm cannot train on it; the official code would crash on it, ``squeeze``).

Reproducibility and resuming
----------------------------
The initial weights come from ``torch.manual_seed(seed)`` (or the pretrained backbone), and epoch
``e``'s shuffle and flips from ``numpy.random.default_rng([seed, e])``, so a run resumed after
epoch ``e`` trains on the same batches as an uninterrupted one. With ``checkpoint_dir`` every fit
writes a checkpoint atomically after each epoch (:class:`pyica.training.resume.FitCheckpoints`:
weights, optimiser, best epoch so far with its weights, history), keyed by a hash of everything the
fit depends on (training and validation images and labels, recipe, network config, initial
weights), so the fits of an evaluation over several splits each have their own; with ``resume`` a
fit continues from its checkpoint, and a finished fit is not run again.

Speed: with ``cache_images`` (default) each image is decoded and resized once and kept as ``uint8``
(3 x S x S bytes: 0.75 MiB at 512, about 1.1 GB for SAVOIAS; 0.19 MiB at 256).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.dataset import ComplexityDataset, label_range
from ..inputs import iter_batches
from ..metrics import selection_score
from ..models.base import stack_collate
from ..models.clicv2_probe import encoder_fingerprint
from ..models.icnet import ICNet, ICNetConfig, ICNetModel
from ..progress import progress_bar
from . import distributed, loop
from .config import Method
from .loop import Batch, LoopSettings
from .probe import check_sgd_recipe, lr_factor
from .resume import FitCheckpoints, dataset_fingerprint

__all__ = ["ICNetRecipe", "ICNetTrainer", "METHOD"]

log = logging.getLogger(__name__)

@dataclass
class ICNetRecipe:
    """How ICNet is trained (defaults: the official recipe; see the module doc)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-3
    schedule: str = "step"
    warmup_epochs: float = 1.0
    milestones: tuple[float, ...] = (1 / 3, 2 / 3)  # fractions of ``epochs`` (official: 10 and 20 of 30)
    gamma: float = 0.2
    hflip: bool = True
    seed: int = 0
    patience: int | None = None
    amp: bool = False  # bfloat16 autocast on CUDA (the official code trains in float32)
    device: str = "auto"
    num_workers: int | None = None
    eval_batch_size: int = 32
    cache_images: bool = True

    def __post_init__(self) -> None:
        check_sgd_recipe(self)

    def to_dict(self) -> dict:
        return asdict(self)

    def fit_identity(self) -> dict:
        """The fields that change what a fit computes (not where or how fast it runs)."""
        return {k: v for k, v in self.to_dict().items()
                if k not in ("device", "num_workers", "eval_batch_size", "cache_images")}


class ICNetTrainer:
    """Trains ICNets built by ``build_model()`` (fresh, untrained) and scores files with the trained one.

    ``checkpoint_dir``: write a checkpoint of every fit after each epoch; ``resume``: continue fits
    from their checkpoints (see the module doc); ``progress``: a bar while images are decoded."""

    def __init__(self, build_model: Callable[[], ICNetModel], recipe: ICNetRecipe | None = None, name: str = "icnet",
                 checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = False):
        self.build_model, self.recipe, self.name = build_model, recipe or ICNetRecipe(), name
        self.progress = progress
        self.device = distributed.process_device(self.recipe.device)
        self.model: ICNetModel | None = None
        self.history: list[dict] = []
        self.checkpoints = FitCheckpoints(checkpoint_dir, resume=resume) if checkpoint_dir else None
        self._pixels: dict[tuple[str, int], torch.Tensor] = {}  # (path, input size) -> uint8 (3, S, S)
        self._errors: dict[str, str] = {}

    # --- images ---------------------------------------------------------------------------------

    def _cache(self, model: ICNetModel, paths: Sequence[str], *, num_workers: int | None = None,
               max_pixels: int | None = None, progress: bool = False) -> None:
        """Decode and resize every path not cached yet (load errors are remembered)."""
        size = model.config.input_size
        todo = list(dict.fromkeys(p for p in paths if (p, size) not in self._pixels and p not in self._errors))
        if not todo:
            return
        bar = progress_bar(len(todo), progress)
        bar.set_description("images")
        workers = self.recipe.num_workers if num_workers is None else num_workers
        for indices, batch, errors in iter_batches(todo, model.transform, stack_collate,
                                                   batch_size=self.recipe.eval_batch_size, num_workers=workers,
                                                   max_pixels=max_pixels):
            for i, message in errors:
                self._errors[todo[i]] = message
            if batch is not None:
                for i, pixels in zip(indices, batch):
                    self._pixels[(todo[i], size)] = pixels.clone()
            bar.update(len(indices) + len(errors))
        bar.close()

    def _pixel_batches(self, model: ICNetModel, paths: Sequence[str], batch_size: int, *,
                       num_workers: int | None = None, max_pixels: int | None = None):
        """``(positions, uint8 batch)`` over ``paths`` in order, ``batch_size`` at a time; images that
        failed to load are left out (and remembered in ``self._errors``)."""
        size = model.config.input_size
        paths = list(paths)
        if self.recipe.cache_images:
            self._cache(model, paths, num_workers=num_workers, max_pixels=max_pixels)
            for start in range(0, len(paths), batch_size):
                ok = [i for i in range(start, min(start + batch_size, len(paths))) if (paths[i], size) in self._pixels]
                if ok:
                    yield ok, torch.stack([self._pixels[(paths[i], size)] for i in ok])
            return
        workers = self.recipe.num_workers if num_workers is None else num_workers
        for indices, batch, errors in iter_batches(paths, model.transform, stack_collate, batch_size=batch_size,
                                                   num_workers=workers, max_pixels=max_pixels,
                                                   pin_memory=self.device.type == "cuda"):
            for i, message in errors:
                self._errors[paths[i]] = message
            if batch is not None:
                yield indices, batch

    @torch.no_grad()
    def _predict(self, model: ICNetModel, paths: Sequence[str], **kw) -> np.ndarray:
        model.eval()
        paths = list(paths)
        scores = np.full(len(paths), np.nan)
        for indices, batch in self._pixel_batches(model, paths, self.recipe.eval_batch_size, **kw):
            with self._autocast():
                scores[indices] = model(batch.to(self.device, non_blocking=True)).float().cpu().numpy()
        return scores

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.recipe.amp and self.device.type == "cuda")

    # --- training -------------------------------------------------------------------------------

    def _fit_key(self, model: ICNetModel, paths: list[str], y: torch.Tensor, val: ComplexityDataset | None) -> str:
        return FitCheckpoints.key("icnet", self.name, self.recipe.fit_identity(), model.config.to_dict(),
                                  encoder_fingerprint(model.net), paths, [round(float(v), 8) for v in y],
                                  dataset_fingerprint(val))

    def fit_dataset(self, train: ComplexityDataset, val: ComplexityDataset | None = None, **_) -> dict:
        r = self.recipe
        torch.manual_seed(r.seed)
        model = self.build_model().to(self.device)
        has_val = val is not None and len(val) > 0
        val = val if has_val else None
        low, high = label_range([train] + ([val] if has_val else []))
        if not high > low:
            raise ValueError(f"label range [{low}, {high}] is empty: cannot map scores to [0, 1]")
        all_paths = train.full_paths()
        if r.cache_images:
            self._cache(model, all_paths + (val.full_paths() if has_val else []), progress=self.progress)
            for p in all_paths:
                if p in self._errors:
                    log.warning("skipped in training: %s", self._errors[p])
        size = model.config.input_size
        keep = [i for i, p in enumerate(all_paths) if np.isfinite(train.scores[i])
                and (not r.cache_images or (p, size) in self._pixels)]
        if len(keep) < 2:
            raise ValueError(f"{len(keep)} usable training images: ICNet needs at least 2")
        paths = [all_paths[i] for i in keep]
        y = torch.tensor((train.scores[keep] - low) / (high - low), dtype=torch.float32)
        checkpoint = None
        if self.checkpoints is not None:
            checkpoint = self.checkpoints.file(self._fit_key(model, paths, y, val))
        task = _ICNetTask(self, model, paths, y, val, distributed.current(self.device))
        settings = LoopSettings(epochs=r.epochs, amp=r.amp, patience=r.patience, progress=self.progress,
                                description=self.name)
        fit = loop.run(task, settings, device=self.device, checkpoint=checkpoint)
        return self._finish(model, fit.history, fit.best_score, fit.best_epoch, low, high, len(paths),
                            fit.resumed_after_epoch, checkpoint.path if checkpoint is not None else None)

    def _finish(self, model, history, best_score, best_epoch, low, high, n, resumed_from, ckpt_path) -> dict:
        model.eval()
        self.model, self.history = model, history
        selected = best_epoch > 0
        return {"best_epoch": best_epoch if selected else len(history), "epochs_run": len(history),
                "best_val_srcc": float(best_score) if selected else None, "label_range": [low, high],
                "n_train": n, "selected_on": "validation" if selected else "last epoch",
                "resumed_after_epoch": resumed_from, "checkpoint": str(ckpt_path) if ckpt_path else None,
                "history": history}

    # --- scoring --------------------------------------------------------------------------------

    def score_files(self, paths: Sequence[str], *, batch_size: int = 32, num_workers: int | None = None,
                    max_pixels: int | None = None, progress: bool = False) -> tuple[np.ndarray, dict[str, str]]:
        """Scores in [0, 1] of ``paths`` (``nan`` where an image failed to load) and ``{path: error}``."""
        if self.model is None:
            raise RuntimeError("train first: call fit_dataset(train, val)")
        paths = list(paths)
        if self.recipe.cache_images:
            self._cache(self.model, paths, num_workers=num_workers, max_pixels=max_pixels, progress=progress)
        scores = self._predict(self.model, paths, num_workers=num_workers, max_pixels=max_pixels)
        return scores, {p: self._errors[p] for p in paths if p in self._errors}


class _ICNetTask:
    """ICNet's training for :func:`pyica.training.loop.run`: epoch ``e``'s shuffle and flips from
    ``default_rng([seed, e])``, the official schedule and loss; under torchrun each process takes its
    strided share of every global batch."""

    def __init__(self, trainer: ICNetTrainer, model: ICNetModel, paths: list[str], y: torch.Tensor,
                 val: ComplexityDataset | None, dist):
        r = trainer.recipe
        self.trainer, self.model, self.recipe, self.paths, self.y, self.val = trainer, model, r, paths, y, val
        self.device = trainer.device
        self.optimizer = torch.optim.SGD(model.net.parameters(), lr=r.lr, momentum=r.momentum,
                                         weight_decay=r.weight_decay)
        n, smallest = len(paths), max(2, dist.world)  # BatchNorm cannot train on one image
        self.steps_per_epoch = sum(1 for a in range(0, n, r.batch_size) if min(n, a + r.batch_size) - a >= smallest)

    @property
    def module(self) -> torch.nn.Module:
        return self.model.net

    @module.setter
    def module(self, net: torch.nn.Module) -> None:
        self.model.net = net

    def epoch_batches(self, epoch: int, dist, skip: int = 0):
        return loop.skip_batches(self._batches(epoch, dist), skip)

    def _batches(self, epoch: int, dist):
        r, n = self.recipe, len(self.paths)
        rng = np.random.default_rng([r.seed, epoch])
        order = rng.permutation(n)
        flips = rng.random(n) < 0.5
        ordered = [self.paths[i] for i in order]
        for positions, pixels in self.trainer._pixel_batches(self.model, ordered, r.batch_size):
            if len(positions) < max(2, dist.world):
                continue
            mine = distributed.shard(list(range(len(positions))), dist.rank, dist.world)
            picked = order[[positions[j] for j in mine]]
            x = pixels[mine].to(self.device, non_blocking=True)
            if r.hflip:
                flip = torch.from_numpy(flips[picked]).to(self.device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            yield Batch((x, self.y[torch.from_numpy(picked)]), len(mine), len(positions))

    def loss(self, net, batch: Batch):
        x, y = batch.data
        outputs = net(self.model.normalise(x))
        loss = self.model.net.loss((outputs[0].float(), outputs[1].float()), y.to(self.device))
        return loss, {"loss": float(loss.detach())}

    def learning_rate(self, step: int, epoch: int) -> float:
        return self.recipe.lr * lr_factor(step, epoch, self.recipe, self.steps_per_epoch)

    def validate(self) -> float | None:
        if self.val is None:
            return None
        return selection_score(self.trainer._predict(self.model, self.val.full_paths()), self.val.scores,
                               self.val.categories)

    def trainable_state(self) -> dict:
        return self.model.net.state_dict()

    def load_trainable_state(self, state: dict) -> None:
        self.model.net.load_state_dict(state)


# --- `pyica train CONFIG` for ICNet ----------------------------------------------------------------

def _build(config: dict, ds, options, dist, out_dir: Path,  # noqa: ARG001
           checkpoint_dir: Path | None = None) -> ICNetTrainer:
    """The trainer of an ICNet config. Config keys besides every trainer's: ``icnet``
    (:class:`~pyica.models.icnet.ICNetConfig` fields), ``recipe`` (:class:`ICNetRecipe` fields),
    ``pretrained_backbone`` (a torchvision-format ResNet-18 file, relative to the config; absent: random
    init) and ``keep_checkpoints`` (keep the fits' checkpoints, e.g. for python -m benchmarks.compare_models)."""
    from ..models.resnet import read_state_dict
    from .config import section_from

    recipe = section_from(ICNetRecipe, config, "recipe", device=options.device, num_workers=options.num_workers)
    icnet_config = section_from(ICNetConfig, config, "icnet")
    backbone_state = read_state_dict(config["pretrained_backbone"]) if config.get("pretrained_backbone") else None

    def build() -> ICNetModel:
        net = ICNet(icnet_config)
        if backbone_state is not None:
            net.load_backbone(backbone_state)
        return ICNetModel(net)

    return ICNetTrainer(build, recipe, name=config["model"], checkpoint_dir=checkpoint_dir, resume=options.resume,
                        progress=options.progress)


def _card(trainer: ICNetTrainer, fit: dict, config: dict, ds, evaluation, dist) -> dict:  # noqa: ARG001
    from ..weights import sha256_file

    recipe, root = trainer.recipe, config.get("root")
    icnet_config = trainer.model.config
    if config.get("pretrained_backbone"):
        backbone_file = Path(config["pretrained_backbone"])
        backbone = {"init": "torchvision-format ResNet-18 weights loaded into both branches (as the official "
                            "resnet18(pretrained=True))", "file": backbone_file.name,
                    "sha256": sha256_file(backbone_file)}
    else:
        backbone = {"init": "random (torchvision's ResNet initialisation, torch.manual_seed(recipe.seed)); "
                            "no ImageNet pretraining, unlike the official ICNet", "seed": recipe.seed}
    labels = Path(root or "") / "labels.csv"
    return {"name": config["model"], "note": config.get("note"), "backbone": backbone,
            "score": {"meaning": f"{ds.name} score mapped from {fit['label_range']} to [0, 1]"},
            "training": {"dataset": ds.name, "images": fit["n_train"], "validation_images": fit["n_validation"],
                         "labels_sha256": sha256_file(labels) if root and labels.is_file() else None,
                         "augmentation": "horizontal flip p=0.5" if recipe.hflip else "none",
                         "recipe": {k: v for k, v in recipe.to_dict().items() if k not in ("device", "num_workers")},
                         "loss": f"{1 - icnet_config.map_weight:g} MSE(score) + {icnet_config.map_weight:g} "
                                 "MSE(mean(map)), labels on [0, 1]",
                         "best_epoch": fit["best_epoch"], "selected_on": fit["selected_on"],
                         "best_val_selection_score": fit["best_val_srcc"], "device": str(trainer.device),
                         "processes": dist.world, "config_file": config["config_file"], "history": fit["history"]},
            "evaluation": evaluation}


def _save(trainer: ICNetTrainer, card: dict, path: Path) -> dict:
    from ..models.icnet import save_icnet

    return save_icnet(trainer.model, path, card)


#: ``"method": "icnet"`` of ``pyica train`` (:mod:`pyica.training.trainers`).
METHOD = Method(build=_build, card=_card, save=_save, sections={"recipe": ICNetRecipe, "icnet": ICNetConfig})
