"""The practitioner's object: a model that knows its score semantics and accepts any image form."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .loading import load_image, to_rgb

__all__ = ["ComplexityMetric"]


LOSS_REDUCTIONS = ("mean", "sum", "none")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """HxW or HxWxC array (uint8 0..255, or float in [0, 1]) -> RGB PIL image."""
    if array.dtype != np.uint8 and array.dtype.kind not in "f":
        raise TypeError(f"image arrays must be uint8 (0..255) or float (0..1), not {array.dtype}")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {array.shape}")
    if array.dtype != np.uint8:
        values = np.asarray(array, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("image array has NaN or infinite values")
        if values.min() < 0.0 or values.max() > 1.0:
            raise ValueError(
                f"float image arrays must be in [0, 1], got min={values.min():.3g} max={values.max():.3g}; "
                "pass uint8 arrays for 0..255 data"
            )
        array = np.rint(values * 255.0).astype(np.uint8)
    return to_rgb(Image.fromarray(array))


def _tensor_to_array(tensor: torch.Tensor) -> np.ndarray:
    """A uint8 tensor stays uint8 (0..255), a float one becomes float32 (checked to be in [0, 1])."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.uint8:
        return tensor.numpy()
    if tensor.is_floating_point():
        return tensor.float().numpy()
    raise TypeError(f"image tensors must be uint8 (0..255) or float (0..1), not {tensor.dtype}")


class ComplexityMetric(torch.nn.Module):
    """Scores images with one registered model; a ``torch.nn.Module`` (``.to(device)``, ``.eval()``,
    ``state_dict()``) whose submodule ``model`` is the scorer.

    Inputs and what comes back:

    * one image -- a path, a PIL image, an HxW[xC] numpy array, a CxHxW tensor -- gives a ``float``;
    * a batch -- an NxCxHxW tensor (even N = 1), an NxHxWxC array, or a list of any of these (a list of
      paths is N images) -- gives a 1-D float32 CPU tensor of N scores, in input order.

    Arrays and tensors are uint8 (0..255) or float in [0, 1] (others raise ``ValueError``); other
    integer dtypes raise ``TypeError``. ``lower_better`` is ``False``: higher scores mean more complex.

    With ``as_loss=True`` (or :meth:`as_loss`), the metric takes float tensors (N)x3xHxW in [0, 1] on
    any device and returns ``loss_weight * reduction(scores)``, differentiable with respect to the
    input (pyiqa's convention: the score is *not* negated, so minimising it makes images simpler; a
    negative ``loss_weight`` rewards complexity). ``loss_reduction`` is ``"mean"``, ``"sum"`` or
    ``"none"`` (the N scores themselves). Only models with a differentiable path have it (the
    EfficientNet ridge models, the default among them); classic measures refuse.
    """

    def __init__(self, model, name: str, *, as_loss: bool = False, loss_weight: float = 1.0,
                 loss_reduction: str = "mean"):
        super().__init__()
        self.model = model
        self.name = name
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, not {loss_reduction!r}")
        if as_loss and not getattr(model, "differentiable", False):
            from .models.classic import ClassicMeasure

            if isinstance(model, ClassicMeasure):
                raise ValueError(f"{name!r} is a classic measure, computed with numpy on uint8 pixels: it has no "
                                 "gradient and cannot be a loss; as_loss needs a learned model such as the default")
            raise ValueError(f"{name!r} has no differentiable scoring path yet, so it cannot be a loss; "
                             "the EfficientNet ridge models (the default among them) have one")
        self.is_loss = bool(as_loss)
        self.loss_weight = float(loss_weight)
        self.loss_reduction = loss_reduction

    @property
    def lower_better(self) -> bool:
        return self.model.lower_better

    @property
    def score_range(self) -> tuple[float, float] | None:
        return self.model.score_range

    @property
    def device(self) -> torch.device:
        return self.model.device

    def as_loss(self, loss_weight: float = 1.0, loss_reduction: str = "mean") -> "ComplexityMetric":
        """This metric as a differentiable loss (the same model object, not a copy)."""
        return ComplexityMetric(self.model, self.name, as_loss=True, loss_weight=loss_weight,
                                loss_reduction=loss_reduction)

    def train(self, mode: bool = True) -> "ComplexityMetric":
        """Sets the flag only: the scorer is frozen and stays in eval mode (no stochastic depth)."""
        super().train(mode)
        self.model.eval()
        return self

    def _to_images(self, inputs: Any) -> tuple[list[Image.Image], bool]:
        if isinstance(inputs, (str, os.PathLike, bytes)):
            # a file is decoded as batch scoring decodes it (JPEGs reduced to what the model needs)
            return [load_image(inputs, decode_size=getattr(self.model.transform, "decode_size", None))], True
        if isinstance(inputs, Image.Image):
            return [to_rgb(inputs)], True
        if isinstance(inputs, torch.Tensor):
            inputs = _tensor_to_array(inputs)
        if isinstance(inputs, np.ndarray):
            if inputs.ndim == 4:
                return [_array_to_pil(a) for a in inputs], False
            return [_array_to_pil(inputs)], True
        if isinstance(inputs, Sequence):
            images: list[Image.Image] = []
            for item in inputs:
                images.extend(self._to_images(item)[0])
            return images, False
        raise TypeError(f"cannot score an object of type {type(inputs).__name__}")

    def _loss(self, images: Any) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            kind = f"a {images.dtype} tensor" if isinstance(images, torch.Tensor) else type(images).__name__
            raise TypeError(f"as a loss, {self.name!r} takes float image tensors (N)x3xHxW in [0, 1], not {kind}")
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected a 3xHxW or Nx3xHxW image tensor, got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        scores = self.model.score_tensor(images)
        if self.loss_reduction == "mean":
            scores = scores.mean()
        elif self.loss_reduction == "sum":
            scores = scores.sum()
        return self.loss_weight * scores

    def forward(self, inputs: Any) -> float | torch.Tensor:
        if self.is_loss:
            return self._loss(inputs)
        images, single = self._to_images(inputs)
        if not images:
            return torch.empty(0)
        scores = self.model.score_images(images)
        return float(scores[0]) if single else scores

    def extra_repr(self) -> str:
        loss = (f", as_loss=True, loss_weight={self.loss_weight}, loss_reduction={self.loss_reduction!r}"
                if self.is_loss else "")
        return f"{self.name!r}, lower_better={self.lower_better}, score_range={self.score_range}{loss}"

    def __repr__(self) -> str:
        return f"ComplexityMetric({self.extra_repr()})"


def as_path_list(inputs: Any) -> list[str]:
    """Normalise one path or a list of paths to ``list[str]``."""
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    return [os.fspath(Path(p)) for p in inputs]
