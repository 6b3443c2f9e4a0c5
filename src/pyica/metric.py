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


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """HxW or HxWxC array (uint8 0..255, or float in [0, 1]) -> RGB PIL image."""
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


class ComplexityMetric:
    """Scores images with one registered model.

    Call it on a path, a PIL image, a numpy array (HxW[xC], uint8 or float in [0, 1]), a tensor
    (CxHxW or NxCxHxW, float in [0, 1]) or a list of these. One image gives a float, several give a
    1-D float tensor. ``lower_better`` is ``False``: higher scores mean more complex images.
    """

    def __init__(self, model, name: str):
        self.model = model
        self.name = name

    @property
    def lower_better(self) -> bool:
        return self.model.lower_better

    @property
    def score_range(self) -> tuple[float, float] | None:
        return self.model.score_range

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _to_images(self, inputs: Any) -> tuple[list[Image.Image], bool]:
        if isinstance(inputs, (str, os.PathLike, bytes)):
            # a file is decoded as batch scoring decodes it (JPEGs reduced to what the model needs)
            return [load_image(inputs, decode_size=getattr(self.model.transform, "decode_size", None))], True
        if isinstance(inputs, Image.Image):
            return [to_rgb(inputs)], True
        if isinstance(inputs, torch.Tensor):
            array = inputs.detach().float().cpu().numpy()
            if array.ndim == 4:
                return [_array_to_pil(a) for a in array], False
            return [_array_to_pil(array)], True
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

    def __call__(self, inputs: Any) -> float | torch.Tensor:
        images, single = self._to_images(inputs)
        scores = self.model.score_images(images)
        return float(scores[0]) if single else scores

    def __repr__(self) -> str:
        return f"ComplexityMetric({self.name!r}, lower_better={self.lower_better}, score_range={self.score_range})"


def as_path_list(inputs: Any) -> list[str]:
    """Normalise one path or a list of paths to ``list[str]``."""
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    return [os.fspath(Path(p)) for p in inputs]
