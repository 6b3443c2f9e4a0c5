"""ResNet-18 in plain PyTorch, with torchvision's layer names, and a loader for torchvision-format weights.

No torchvision: :class:`ResNet18` is the torchvision architecture (He et al. 2016, "ResNet v1.5":
the stride-2 of a down-sampling block sits in its first 3x3 conv) written out, with the same
attribute names, so that a state dict saved from ``torchvision.models.resnet18`` (the ImageNet file
``resnet18-f37072fd.pth`` or any fine-tuned copy) loads into it as is:

* ``conv1`` (7x7, stride 2, no bias) -> ``bn1`` -> ReLU -> ``maxpool`` (3x3, stride 2) -> ``layer1`` ..
  ``layer4`` (two :class:`BasicBlock` each; widths ``w, 2w, 4w, 8w``, strides 1, 2, 2, 2) -> global
  average pool -> ``fc``;
* a block is ``conv1``/``bn1``/ReLU/``conv2``/``bn2`` plus, where the shape changes, ``downsample``
  (``0``: 1x1 conv with the block's stride, ``1``: BatchNorm), then the residual ReLU;
* initialisation as torchvision's (Kaiming-normal fan-out convolutions, BatchNorm weight 1 and bias 0,
  ``nn.Linear``'s default for ``fc``; no zero-init of the last BatchNorm of a block).

Two options torchvision does not have, both for models that use only part of the network (ICNet's
detail branch stops after ``layer2``): ``stages`` builds only ``layer1..layer<stages>`` and
``num_classes=None`` leaves out ``fc``. ``width`` (64 in ResNet-18) scales every channel count; it is
only there for tiny test models, ImageNet weights need 64.

:func:`read_state_dict` reads a torchvision-format file: ``.safetensors``, or ``.pth``/``.pt`` through
``torch.load(weights_only=True)`` (plain tensors only, no pickled code is run). :func:`load_resnet_weights`
puts it into a model: keys of layers the model does not build (``layer3.*``, ``layer4.*``, ``fc.*``)
are ignored and reported, every tensor the model has must be present with the right shape, and
BatchNorm ``num_batches_tracked`` counters missing from old checkpoints are set to 0 (they do not
affect the forward pass).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet18", "read_state_dict", "load_resnet_weights", "RESNET18_STAGE_CHANNELS"]

#: Output channels of layer1..layer4 at width 64.
RESNET18_STAGE_CHANNELS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3x3 convs with BatchNorm, a residual, the stride in the first conv."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's parameter names (see the module doc).

    ``stages``: how many of ``layer1..layer4`` to build (1-4); ``num_classes=None``: no ``fc``;
    ``width``: channels of ``conv1``/``layer1`` (64).
    """

    def __init__(self, num_classes: int | None = 1000, *, stages: int = 4, width: int = 64):
        super().__init__()
        if not 1 <= stages <= 4:
            raise ValueError(f"stages must be 1..4, not {stages}")
        if width < 1:
            raise ValueError(f"width must be positive, not {width}")
        if num_classes is not None and stages != 4:
            raise ValueError("the classifier (fc) needs all 4 stages")
        self.stages, self.width = stages, width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for k in range(stages):
            planes = width * 2 ** k
            stride = 1 if k == 0 else 2
            blocks = nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            setattr(self, f"layer{k + 1}", blocks)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes) if num_classes is not None else None
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.width * 2 ** k for k in range(self.stages))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """``conv1 -> bn1 -> ReLU -> maxpool``: ``(B, 3, H, W) -> (B, w, H/4, W/4)``."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of ``layer1..layer<stages>`` (strides 4, 8, 16, 32)."""
        x = self.stem(x)
        out = []
        for k in range(self.stages):
            x = getattr(self, f"layer{k + 1}")(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, num_classes)`` (pooled ``(B, 8w)`` features without ``fc``)."""
        x = torch.flatten(self.avgpool(self.forward_stages(x)[-1]), 1)
        return self.fc(x) if self.fc is not None else x


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision-format state dict from a file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
    ``torch.load(weights_only=True)``) or a mapping. A ``{"state_dict": ...}`` or ``{"model": ...}``
    wrapper is opened, and a ``module.`` prefix on every key (a ``DistributedDataParallel`` save) is removed."""
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights file not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: not a state dict of tensors")
    state = dict(state)
    if not isinstance(source, Mapping):
        from ..weights import check_finite

        check_finite(state, source)  # NaN or Inf weights score NaN: refused, naming the file and tensor
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_resnet_weights(model: ResNet18, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> list[str]:
    """Load torchvision-format ResNet-18 weights into ``model`` (see the module doc); returns the keys
    ignored because ``model`` does not build their layers. Any other mismatch raises ``ValueError``."""
    state = read_state_dict(source)
    own = model.state_dict()
    skipped_prefixes = tuple(f"layer{k}." for k in range(model.stages + 1, 5)) + (("fc.",) if model.fc is None else ())
    ignored = sorted(k for k in state if k not in own and k.startswith(skipped_prefixes))
    unknown = sorted(k for k in state if k not in own and not k.startswith(skipped_prefixes))
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(k for k in own if k not in state)
    if unknown or missing:
        raise ValueError(f"{source if not isinstance(source, Mapping) else 'state dict'}: not a torchvision "
                         f"ResNet-18 state dict for this model (unknown keys {unknown[:4]}, missing {missing[:4]})")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"tensor shapes do not match (width {model.width}; ImageNet weights need 64): {wrong[:3]}")
    from ..weights import check_dtypes

    check_dtypes(state, own, source if not isinstance(source, Mapping) else "state dict")
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return ignored
