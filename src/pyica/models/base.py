"""What every pyica model is: preprocessing that travels with it, a collate rule, and a forward.

A :class:`ComplexityModel` is a ``torch.nn.Module`` whose ``forward(batch)`` returns one score per
image, shape ``(B,)``. The batch is whatever ``model.collate`` builds from the outputs of
``model.transform`` (a picklable callable applied to each RGB PIL image inside DataLoader workers).
Keeping the transform on the model means weights and their preprocessing cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

__all__ = ["ComplexityModel", "stack_collate", "list_collate", "move_to_device"]


def stack_collate(items: Sequence[torch.Tensor]) -> torch.Tensor:
    """Batch same-shaped tensors."""
    return torch.stack(list(items))


def list_collate(items: Sequence[Any]) -> list:
    """Keep items as a list (for models that take variable-size images)."""
    return list(items)


def move_to_device(batch: Any, device: torch.device | str) -> Any:
    """Move tensors (also inside lists/tuples/dicts) to ``device``; leave everything else alone."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    return batch


class ComplexityModel(torch.nn.Module):
    """Base class of every scorer: classic measures and learned models alike.

    Subclasses set:

    * ``transform``: callable ``PIL.Image (RGB) -> item``, picklable (it runs in worker processes);
      it may declare ``decode_size(width, height) -> (w, h)``, the smallest image it needs, so that
      JPEGs are decoded reduced (:func:`pyica.loading.load_image`); without it, images come at full
      resolution (models that need every pixel, e.g. classic measures, declare nothing);
    * ``collate``: callable ``list[item] -> batch`` (default: ``torch.stack``);
    * ``forward(batch) -> Tensor[B]``: the complexity scores.

    Class attributes describe the score: ``lower_better`` (always ``False`` for complexity: higher
    means more complex) and ``score_range`` (``None`` when unbounded).
    """

    lower_better: bool = False
    score_range: tuple[float, float] | None = None
    #: ``True`` where :meth:`score_tensor` is implemented (a torch-only pipeline that gradients flow through)
    differentiable: bool = False

    def __init__(self, transform: Callable[[Image.Image], Any], collate: Callable[[Sequence[Any]], Any] = stack_collate):
        super().__init__()
        self.transform = transform
        self.collate = collate

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @torch.inference_mode()
    def score_batch(self, batch: Any) -> torch.Tensor:
        """Scores of a collated batch as a float32 CPU tensor (no gradients)."""
        out = self(move_to_device(batch, self.device))
        return out.detach().float().reshape(-1).cpu()

    def score_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Convenience: transform, collate and score RGB PIL images in one batch."""
        return self.score_batch(self.collate([self.transform(img) for img in images]))

    def score_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable scores ``(B,)`` of float images ``(B, 3, H, W)`` in [0, 1], on the model's
        device; gradients flow to ``images``. Only models with ``differentiable = True`` have it."""
        raise NotImplementedError(f"{type(self).__name__} has no differentiable scoring path")
