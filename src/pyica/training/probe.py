"""Training probing heads on a frozen encoder (CLICv2's "linear probing", ICNet-style or linear).

:class:`ProbeTrainer` trains a fresh head with ``fit_dataset(train, val)`` and scores files with
``score_files(paths)``. That is all :func:`pyica.evaluation.run_protocol` needs, so a probe is
evaluated by the same code as every other model::

    trainer = ProbeTrainer(lambda: CLICv2Probe(encoder, build_head("icnet", encoder.num_features)))
    result = run_protocol("clicv2_probe", ds, model=trainer, protocol="random", n_splits=10)

Recipe (``ProbeRecipe``)
------------------------
The defaults are those of the CLICv2 paper (Sec. 4.1, "Linear probing"): SGD, lr 1e-3, momentum 0.9,
weight decay 1e-4, 30 epochs. The paper trains with batch 128 on 4 GPUs; we use 64, the batch of
ICNet and CLIC.

The paper gives no schedule. ``schedule="step"`` (the default) is the schedule of the ICNet code
that CLIC and CLICv2 probe with:

* a linear per-iteration warm-up over ``warmup_epochs`` (1);
* then the lr times ``gamma`` (0.2) after each milestone.

The milestones are fractions of ``epochs``: (1/3, 2/3), which is ICNet's epochs 10 and 20 of 30.
``schedule="cosine"`` gives the same warm-up, then a per-iteration cosine down to 0. Weight decay
applies to every head parameter, as ICNet's ``model.parameters()``.

The targets are the human scores mapped to [0, 1] with :func:`pyica.data.dataset.label_range`. The
loss is the head's own: ICNet's ``0.9 MSE(score) + 0.1 MSE(mean(map))``, or MSE for the linear head.
Augmentation is ICNet's training transform, a horizontal flip with p = 0.5, drawn per image and per
epoch.

The epoch is chosen on the validation part like ``train_cmssa``: the category-mean SRCC, or the
pooled SRCC when there is a single category. ``patience`` gives optional early stopping. Without a
validation part, or when it cannot rank (every value NaN), the last epoch is kept.

Speed: the encoder is frozen
----------------------------
The encoder's tokens, cls and patch grid ``(1 + N, dim)`` in float32, are computed once per image
and per flip, then kept in a :class:`TokenCache`. Training and scoring then only run the head. The
cache is keyed by the encoder's fingerprint (a sha256 of its tensors), so a trainer whose builder
returns another encoder starts a fresh cache.

* One cache can serve several trainers, for example the linear and the ICNet head on the same
  encoder: pass ``cache=``.
* The whole SAVOIAS set costs about 100 MB for a ViT-Ti at 224 px / 32 px patches with both flips.
* The flipped view is the flipped *resized* image. Resizing commutes with a horizontal flip, so this
  equals flipping first.
* An image that fails to load is skipped in training (with a warning) and scores NaN, with its
  error reported.

Several processes, mixed precision, checkpoints
-----------------------------------------------
Under ``torchrun`` (or any initialised process group, see :mod:`pyica.training.distributed`) every
process calls ``fit_dataset`` and ``score_files`` together: each computes the tokens of its strided
share of the images and the shares are gathered, so every process holds the whole cache; the head
is wrapped in ``DistributedDataParallel``; each global batch of ``batch_size`` is split across the
processes by striding; BatchNorm layers normalise with the statistics of the global batch
(:class:`~pyica.training.distributed.GlobalBatchNorm`, since ``SyncBatchNorm`` refuses CPU tensors);
the loss is scaled so that the averaged gradient is the global batch's. The result equals one
process's with the same global batch up to float rounding (tests/test_distributed.py: within
2e-5). A last batch smaller than ``max(2, W)`` images is dropped (one process: a batch of one
image, which BatchNorm cannot train on). Only rank 0 logs and writes.

``amp`` trains the head under ``torch.autocast`` on CUDA (``amp_dtype`` bf16, or fp16 with a
GradScaler); tokens and scores are always computed in float32. With ``checkpoint_dir`` every epoch
of every fit is checkpointed atomically and ``resume=True`` continues an interrupted fit with the
same data order, or skips a finished one (:mod:`pyica.training.resume`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.dataset import ComplexityDataset, label_range
from ..inputs import iter_batches
from ..metrics import selection_score
from ..models.clicv2_probe import CLICv2Probe, encoder_fingerprint
from ..progress import progress_bar
from . import distributed, loop
from .loop import Batch, LoopSettings
from .resume import FitCheckpoints, dataset_fingerprint

__all__ = ["ProbeRecipe", "TokenCache", "ProbeTrainer", "lr_factor", "check_sgd_recipe"]

log = logging.getLogger(__name__)

SCHEDULES = ("step", "cosine")


def check_sgd_recipe(r) -> None:
    """Validate the SGD + ICNet-schedule fields a recipe shares with :class:`ProbeRecipe` (also ICNet's
    trainer); normalises ``milestones`` to a tuple of floats."""
    if r.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {r.schedule!r}")
    if r.epochs < 1 or r.batch_size < 2:
        raise ValueError("epochs must be >= 1 and batch_size >= 2 (BatchNorm needs two samples)")
    if r.lr <= 0 or r.weight_decay < 0 or not 0 <= r.momentum < 1:
        raise ValueError("lr must be positive, weight_decay non-negative, momentum in [0, 1)")
    if r.warmup_epochs < 0 or not 0 < r.gamma <= 1:
        raise ValueError("warmup_epochs must be >= 0 and gamma in (0, 1]")
    r.milestones = tuple(float(m) for m in r.milestones)


@dataclass
class ProbeRecipe:
    """How a probing head is trained (defaults: CLICv2 Sec. 4.1 + ICNet's schedule; see the module doc)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    warmup_epochs: float = 1.0
    milestones: tuple[float, ...] = (1 / 3, 2 / 3)  # fractions of ``epochs`` (ICNet: 10 and 20 of 30)
    gamma: float = 0.2
    hflip: bool = True
    seed: int = 0
    patience: int | None = None
    lr_grid: tuple[float, ...] = ()  # with a validation part: try each peak lr, keep the best (``lr`` unused)
    amp: bool = True  # head training under autocast on CUDA (no effect on CPU)
    amp_dtype: str = "bfloat16"  # or "float16" (with a GradScaler)
    device: str = "auto"
    num_workers: int | None = None
    feature_batch_size: int = 32
    eval_batch_size: int = 256
    extra: dict = field(default_factory=dict)  # free-form notes recorded with the recipe

    def __post_init__(self) -> None:
        check_sgd_recipe(self)
        self.lr_grid = tuple(float(v) for v in self.lr_grid)
        if any(v <= 0 for v in self.lr_grid):
            raise ValueError(f"lr_grid values must be positive, not {self.lr_grid}")
        if self.amp_dtype not in distributed.AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(distributed.AMP_DTYPES)}, not {self.amp_dtype!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def defining(self) -> dict:
        """The fields that change a fit's result (for checkpoint keys): not devices or batch sizes
        of inference."""
        skip = {"device", "num_workers", "feature_batch_size", "eval_batch_size", "extra"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def lr_factor(iteration: int, epoch: int, recipe: ProbeRecipe, steps_per_epoch: int) -> float:
    """Multiplier of ``recipe.lr`` at (0-based) ``iteration`` of (1-based) ``epoch``."""
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    if iteration < warmup:
        return (iteration + 1) / warmup
    if recipe.schedule == "cosine":
        total = recipe.epochs * steps_per_epoch
        progress = min(1.0, (iteration - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    passed = sum(1 for m in recipe.milestones if int(round(m * recipe.epochs)) < epoch)
    return recipe.gamma ** passed


class TokenCache:
    """Frozen-encoder tokens by ``(path, flipped)``, for one encoder at a time (by fingerprint)."""

    def __init__(self):
        self.fingerprint: str | None = None
        self.tokens: dict[tuple[str, bool], np.ndarray] = {}
        self.errors: dict[str, str] = {}

    def bind(self, model: CLICv2Probe) -> None:
        """Use ``model``'s encoder; the cache is emptied when it is another encoder."""
        fp = encoder_fingerprint(model.encoder)
        if fp != self.fingerprint:
            self.fingerprint, self.tokens, self.errors = fp, {}, {}

    def clear(self) -> None:
        self.fingerprint, self.tokens, self.errors = None, {}, {}

    def __len__(self) -> int:
        return len(self.tokens)


class ProbeTrainer:
    """Trains probing heads (``build_model()`` -> a fresh :class:`CLICv2Probe`) and scores files."""

    def __init__(self, build_model: Callable[[], CLICv2Probe], recipe: ProbeRecipe | None = None,
                 cache: TokenCache | None = None, name: str = "clicv2_probe",
                 checkpoint_dir: str | None = None, resume: bool = False):
        self.build_model, self.recipe, self.name = build_model, recipe or ProbeRecipe(), name
        self.device = distributed.process_device(self.recipe.device)
        self.cache = cache if cache is not None else TokenCache()
        self.model: CLICv2Probe | None = None
        self.history: list[dict] = []
        self.checkpoints = FitCheckpoints(checkpoint_dir, resume=resume) if checkpoint_dir else None

    # --- features -------------------------------------------------------------------------------

    def _ensure(self, model: CLICv2Probe, paths: Sequence[str], flips: tuple[bool, ...], *,
                batch_size: int | None = None, num_workers: int | None = None, max_pixels: int | None = None,
                progress: bool = False) -> None:
        """Compute the tokens of every ``(path, flip)`` not cached yet (load errors are remembered)."""
        cache = self.cache
        todo = list(dict.fromkeys(p for p in paths if p not in cache.errors
                                  and any((p, f) not in cache.tokens for f in flips)))
        if not todo:
            return
        dist = distributed.current(self.device)
        mine = distributed.shard(todo, dist.rank, dist.world)  # the shares are gathered below
        model.eval()
        workers = self.recipe.num_workers if num_workers is None else num_workers
        bar = progress_bar(len(mine), progress and dist.main)
        bar.set_description("encoder tokens")
        tokens_found: dict[tuple[str, bool], np.ndarray] = {}
        errors_found: dict[str, str] = {}
        for indices, batch, errors in iter_batches(mine, model.transform, model.collate,
                                                   batch_size=batch_size or self.recipe.feature_batch_size,
                                                   num_workers=workers, max_pixels=max_pixels,
                                                   pin_memory=self.device.type == "cuda"):
            for i, message in errors:
                errors_found[mine[i]] = message
            if batch is not None:
                pixels = batch.to(self.device, non_blocking=True)
                for flip in flips:
                    tokens = model.encode(pixels.flip(-1) if flip else pixels).float().cpu().numpy()
                    for i, t in zip(indices, tokens):
                        tokens_found[(mine[i], flip)] = t
            bar.update(len(indices) + len(errors))
        bar.close()
        if dist.world > 1:
            tokens_found = dist.all_gather_dict(tokens_found)
            errors_found = {k: v for part in dist.all_gather_object(errors_found) for k, v in part.items()}
        cache.tokens.update(tokens_found)
        cache.errors.update(errors_found)

    def _stack(self, paths: Sequence[str], flip: bool) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.cache.tokens[(p, flip)] for p in paths]))

    @torch.no_grad()
    def _head_scores(self, model: CLICv2Probe, tokens: torch.Tensor) -> np.ndarray:
        model.eval()
        out = []
        for s in range(0, len(tokens), self.recipe.eval_batch_size):
            out.append(model.head_outputs(tokens[s:s + self.recipe.eval_batch_size].to(self.device))[0].float().cpu())
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)

    def encoder_tokens(self, paths: Sequence[str], **kw) -> tuple[np.ndarray, np.ndarray]:
        """The frozen encoder's tokens ``(n_ok, tokens, dim)`` of ``paths`` (cls first when the encoder
        has one) and the boolean mask of the paths that loaded; computed once and cached."""
        model = self.model if self.model is not None else self.build_model()
        self.cache.bind(model)
        paths = list(paths)
        self._ensure(model, paths, (False,), **kw)
        ok = np.array([(p, False) in self.cache.tokens for p in paths], dtype=bool)
        if not ok.any():
            return np.zeros((0, 0, model.encoder.num_features), dtype=np.float32), ok
        return np.stack([self.cache.tokens[(p, False)] for p, good in zip(paths, ok) if good]), ok

    def pooled_features(self, paths: Sequence[str], **kw) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's cls tokens ``(n_ok, dim)`` of ``paths`` and the boolean mask of the paths
        that loaded (for t-SNE and other analyses)."""
        self._require_model()
        tokens, ok = self.encoder_tokens(paths, **kw)
        return (tokens[:, 0] if len(tokens) else np.zeros((0, self.model.encoder.num_features))), ok

    # --- training -------------------------------------------------------------------------------

    def fit_dataset(self, train: ComplexityDataset, val: ComplexityDataset | None = None, **_) -> dict:
        r = self.recipe
        torch.manual_seed(r.seed)
        model = self.build_model().to(self.device)
        self.cache.bind(model)
        has_val = val is not None and len(val) > 0
        low, high = label_range([train] + ([val] if has_val else []))
        if not high > low:
            raise ValueError(f"label range [{low}, {high}] is empty: cannot map scores to [0, 1]")
        flips = (False, True) if r.hflip else (False,)
        all_paths = train.full_paths()
        self._ensure(model, all_paths, flips)
        keep = [i for i, p in enumerate(all_paths)
                if all((p, f) in self.cache.tokens for f in flips) and np.isfinite(train.scores[i])]
        if distributed.current(self.device).main:
            for p in all_paths:
                if p in self.cache.errors:
                    log.warning("skipped in training: %s", self.cache.errors[p])
        if len(keep) < 2:
            raise ValueError(f"{len(keep)} usable training images: a probe needs at least 2")
        paths = [all_paths[i] for i in keep]
        y = torch.tensor((train.scores[keep] - low) / (high - low), dtype=torch.float32)
        x_plain = self._stack(paths, False)
        x_flip = self._stack(paths, True) if r.hflip else None
        if has_val:
            val_paths = val.full_paths()
            self._ensure(model, val_paths, (False,))

        lrs = tuple(r.lr_grid) if (r.lr_grid and has_val) else (r.lr,)
        fits = []
        for lr in lrs:
            torch.manual_seed(r.seed)
            candidate = model if len(lrs) == 1 else self.build_model().to(self.device)
            key = None
            if self.checkpoints is not None:
                key = FitCheckpoints.key("probe", self.name, self.cache.fingerprint, candidate.head.head_config(),
                                         r.defining(), lr, dataset_fingerprint(train), dataset_fingerprint(val))
            fits.append(self._fit_head(candidate, lr, x_plain, x_flip, y, val if has_val else None, key))
        # the lr whose best epoch validates best (ties: the first, i.e. the grid's order)
        chosen = max(range(len(fits)), key=lambda k: (fits[k]["best_score"], -k))
        fit = fits[chosen]
        model = fit["model"]
        self.history = fit["history"]
        selected = fit["best_epoch"] > 0
        model.eval()
        self.model = model
        out = {"best_epoch": fit["best_epoch"] if selected else len(self.history), "epochs_run": len(self.history),
               "best_val_srcc": float(fit["best_score"]) if selected else None, "label_range": [low, high],
               "n_train": len(paths), "lr": lrs[chosen],
               "selected_on": "validation" if selected else "last epoch", "history": self.history}
        if len(lrs) > 1:
            out["lr_grid"] = {str(lr): (float(f["best_score"]) if np.isfinite(f["best_score"]) else None)
                              for lr, f in zip(lrs, fits)}
        return out

    def _fit_head(self, model: CLICv2Probe, base_lr: float, x_plain: torch.Tensor, x_flip: torch.Tensor | None,
                  y: torch.Tensor, val: ComplexityDataset | None, key: str | None = None) -> dict:
        """Train ``model``'s head at peak lr ``base_lr`` with :func:`pyica.training.loop.run`; with ``val``,
        keep its best epoch. With a checkpoint ``key``: a checkpoint after every epoch, and resume."""
        r = self.recipe
        task = _ProbeTask(self, model, base_lr, x_plain, x_flip, y, val, distributed.current(self.device))
        settings = LoopSettings(epochs=r.epochs, amp=r.amp, amp_dtype=r.amp_dtype, patience=r.patience,
                                description=f"{self.name} lr {base_lr:g}")
        fit = loop.run(task, settings, device=self.device,
                       checkpoint=self.checkpoints.file(key) if key is not None else None)
        return {"model": model, "history": fit.history, "best_score": fit.best_score, "best_epoch": fit.best_epoch}

    def _val_score(self, model: CLICv2Probe, val: ComplexityDataset) -> float:
        paths = val.full_paths()
        ok = np.array([(p, False) in self.cache.tokens for p in paths], dtype=bool)
        scores = np.full(len(paths), np.nan)
        if ok.any():
            scores[ok] = self._head_scores(model, self._stack([p for p, g in zip(paths, ok) if g], False))
        return selection_score(scores, val.scores, val.categories)

    # --- scoring --------------------------------------------------------------------------------

    def score_files(self, paths: Sequence[str], *, batch_size: int = 32, num_workers: int | None = None,
                    max_pixels: int | None = None, progress: bool = False) -> tuple[np.ndarray, dict[str, str]]:
        """Scores in [0, 1] of ``paths`` (``nan`` where an image failed to load) and ``{path: error}``."""
        model = self._require_model()
        self.cache.bind(model)
        paths = list(paths)
        self._ensure(model, paths, (False,), batch_size=batch_size, num_workers=num_workers, max_pixels=max_pixels,
                     progress=progress)
        ok = np.array([(p, False) in self.cache.tokens for p in paths], dtype=bool)
        scores = np.full(len(paths), np.nan)
        if ok.any():
            scores[ok] = self._head_scores(model, self._stack([p for p, g in zip(paths, ok) if g], False))
        errors = {p: self.cache.errors[p] for p in paths if p in self.cache.errors}
        return scores, errors

    def _require_model(self) -> CLICv2Probe:
        if self.model is None:
            raise RuntimeError("train first: call fit_dataset(train, val)")
        return self.model


class _ProbeTask:
    """A probing head's training for :func:`pyica.training.loop.run`: batches of cached tokens (the
    global batch strided over the processes), the ICNet schedule, the head's own loss."""

    def __init__(self, trainer: ProbeTrainer, model: CLICv2Probe, base_lr: float, x_plain: torch.Tensor,
                 x_flip: torch.Tensor | None, y: torch.Tensor, val: ComplexityDataset | None, dist):
        r = trainer.recipe
        self.trainer, self.model, self.recipe, self.base_lr, self.val = trainer, model, r, base_lr, val
        self.x_plain, self.x_flip, self.y, self.device = x_plain, x_flip, y, trainer.device
        self.optimizer = torch.optim.SGD([p for p in model.head.parameters() if p.requires_grad], lr=base_lr,
                                         momentum=r.momentum, weight_decay=r.weight_decay)
        n = len(y)
        starts = list(range(0, n, r.batch_size))
        if len(starts) > 1 and n - starts[-1] < max(2, dist.world):  # BatchNorm cannot train on a batch of one
            starts.pop()
        self.bounds = list(zip(starts, starts[1:] + [n]))
        self.steps_per_epoch = len(self.bounds)
        self.side = math.isqrt(x_plain.shape[1] - 1)
        # epoch e's order and flips are the e-th draws of one generator: a function of (seed, e) only
        self.rng, self.next_epoch = np.random.default_rng(r.seed), 1

    @property
    def module(self) -> torch.nn.Module:
        return self.model.head

    @module.setter
    def module(self, head: torch.nn.Module) -> None:
        self.model.head = head

    def _draw(self, epoch: int):
        n = len(self.y)
        while True:
            order = torch.from_numpy(self.rng.permutation(n))
            flips = torch.from_numpy(self.rng.random(n) < 0.5) if self.x_flip is not None else None
            self.next_epoch += 1
            if self.next_epoch > epoch:
                return order, flips

    def epoch_batches(self, epoch: int, dist, skip: int = 0):
        order, flips = self._draw(epoch)
        for a, b in self.bounds[skip:]:
            idx = order[a:b]
            mine = distributed.shard(idx, dist.rank, dist.world)  # this process's share of the global batch
            x = self.x_plain[mine]
            if flips is not None:
                x = torch.where(flips[mine][:, None, None], self.x_flip[mine], x)
            yield Batch((x, self.y[mine]), len(mine), len(idx))

    def loss(self, net, batch: Batch):
        x, y = batch.data
        loss = self.model.head.loss(net(x.to(self.device, non_blocking=True), (self.side, self.side)),
                                    y.to(self.device))
        return loss, {"loss": float(loss.detach())}

    def learning_rate(self, step: int, epoch: int) -> float:
        return self.base_lr * lr_factor(step, epoch, self.recipe, self.steps_per_epoch)

    def validate(self) -> float | None:
        return None if self.val is None else self.trainer._val_score(self.model, self.val)

    def trainable_state(self) -> dict:
        return self.model.head.state_dict()

    def load_trainable_state(self, state: dict) -> None:
        self.model.head.load_state_dict(state)
