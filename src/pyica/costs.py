"""What a model costs per image: parameters, multiply-accumulates, milliseconds.

:func:`model_cost` measures one model on one image at the model's own input size (whatever its
``transform`` makes of the image: EffNet's 192 px square, CM-SSA's patch grid, ICNet's 512 px, ...):

* ``params``: ``sum(p.numel() for p in model.parameters())``, trainable or frozen; buffers are not
  counted (the default model's ridge head lives in buffers: a few thousand floats).
* ``macs``: multiply-accumulates of one forward on that one preprocessed image, from
  :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions, matrix products, attention),
  which counts a multiply-add as 2 FLOPs, so ``macs = FLOPs / 2``. Element-wise work (activations,
  normalisation, pooling) is not counted, as in the usual "FLOPs" tables of vision papers (which
  mostly report MACs under that name). ``None`` when torch counts nothing: classic measures
  compute in numpy. A model whose forward also encodes text prompts (CM-SSA) includes them.
* ``ms_per_image``: wall time of preprocessing (``transform`` and ``collate``, from a decoded RGB
  image; file decoding excluded) plus ``score_batch`` on a batch of one image, median over repeats
  after one warm-up call. It depends on the machine, its load and ``torch.get_num_threads()``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ModelCost", "count_parameters", "count_macs", "describe_input", "model_cost", "synthetic_image"]


@dataclass(frozen=True)
class ModelCost:
    """Cost of one model on one image (see the module doc)."""

    params: int
    macs: int | None  # multiply-accumulates per image (FlopCounterMode FLOPs / 2); None: not countable
    ms_per_image: float
    input: str  # what the forward received, e.g. "3x192x192" or "9x3x224x224" (patches)

    @property
    def gmacs(self) -> float | None:
        return None if self.macs is None else self.macs / 1e9

    def as_row(self) -> dict:
        """Columns for results files: ``params``, ``gmacs_per_image`` ("" when not countable),
        ``ms_per_image``, ``input``."""
        return {"params": self.params, "gmacs_per_image": "" if self.macs is None else round(self.macs / 1e9, 4),
                "ms_per_image": round(self.ms_per_image, 2), "input": self.input}


def count_parameters(model: torch.nn.Module) -> int:
    """Every parameter, trainable or frozen (buffers are not parameters)."""
    return int(sum(p.numel() for p in model.parameters()))


def _forward(model: torch.nn.Module, batch: Any):
    if callable(getattr(model, "score_batch", None)):
        return model.score_batch(batch)
    with torch.inference_mode():
        return model(batch)


def count_macs(model: torch.nn.Module, batch: Any) -> int | None:
    """Multiply-accumulates of one forward on ``batch`` (FlopCounterMode FLOPs / 2); ``None`` when
    torch counts none (work done outside torch, e.g. numpy)."""
    with FlopCounterMode(display=False) as counter:
        _forward(model, batch)
    flops = int(counter.get_total_flops())
    return flops // 2 if flops else None


def describe_input(item: Any) -> str:
    """Shape(s) of a preprocessed item: ``"3x192x192"``, ``"3x288x384+3x224x224"`` (views), ``"384x512x3"``."""
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return "x".join(str(int(s)) for s in item.shape)
    if isinstance(item, (tuple, list)):
        return "+".join(describe_input(part) for part in item)
    return type(item).__name__


def synthetic_image(width: int = 512, height: int = 384, seed: int = 0) -> Image.Image:
    """A deterministic RGB test image (smooth gradients plus noise) for cost measurements without data."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    noise = rng.normal(0, 25, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def model_cost(model: torch.nn.Module, image: Image.Image | None = None, *, batch: Any = None,
               min_seconds: float = 1.0, min_repeats: int = 3, max_repeats: int = 1000) -> ModelCost:
    """Parameters, multiply-accumulates and ms per image of ``model`` (see the module doc).

    ``model``: a :class:`~pyica.models.base.ComplexityModel`, measured on ``image`` (default
    :func:`synthetic_image`) through its ``transform``, ``collate`` and ``score_batch``. Or pass
    ``batch``, an already preprocessed batch of one image, to measure any ``nn.Module``'s forward
    alone (``ms_per_image`` then excludes preprocessing). The forward is repeated until
    ``min_seconds`` have passed and at least ``min_repeats`` times (at most ``max_repeats``).
    """
    if batch is None:
        if not callable(getattr(model, "transform", None)):
            raise ValueError("a model without a transform needs batch= (one preprocessed image)")
        image = synthetic_image() if image is None else image.convert("RGB")

        def call():
            return model.score_batch(model.collate([model.transform(image)]))

        item = model.transform(image)
        one = model.collate([item])
        shown = describe_input(item)
    else:
        one = batch

        def call():
            return _forward(model, batch)

        shown = describe_input(batch[0] if isinstance(batch, (torch.Tensor, np.ndarray)) and len(batch) == 1
                               else batch)
    macs = count_macs(model, one)
    call()  # warm-up: lazy initialisation, allocator, caches
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < min_seconds):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times) if times else math.nan
    return ModelCost(params=count_parameters(model), macs=macs, ms_per_image=ms, input=shown)
