"""ICNet (Feng et al., "IC9600: A Benchmark Dataset for Automatic Image Complexity Assessment", TPAMI 2022).

Written from the layout of the official code (``tinglyfeng/IC9600``: ``ICNet.py``, ``train.py``,
``gene.py``; summarised in ``shared/research/methods.md`` section 3), on our own ResNet-18
(:mod:`pyica.models.resnet`; no torchvision). ``S`` is ``input_size`` (512 in the official code).

Network (:class:`ICNet`, input: the ImageNet-normalised ``(B, 3, S, S)`` image)
---------------------------------------------------------------------------
* **Detail branch** on the ``S`` input, a ResNet-18 cut after ``layer2`` (``self.detail``):
  ``conv1 .. maxpool, layer1`` (64 ch at S/4) -> SLAM(32); ``layer2`` (128 ch at S/8) -> SLAM(32).
* **Context branch** on the image resized to ``S/2`` (bilinear, ``align_corners=True``), a whole
  ResNet-18 without ``fc`` (``self.context``): ``conv1 .. layer1`` -> SLAM(32), ``layer2`` -> SLAM(32),
  ``layer3`` (256 ch, S/32) -> SLAM(16), ``layer4`` (512 ch, S/64) -> SLAM(8).
* Each branch is brought to ``S/8`` x ``S/8`` (bilinear, ``align_corners=True``) and through a 1x1 conv
  (with bias) -> BatchNorm -> ReLU to 256 channels (``detail_up``, ``context_up``); the two are
  concatenated (512 ch).
* **Map head:** conv3x3 (bias) -> BN -> ReLU (512 -> 512) -> SLAM(32) -> 1x1 conv -> sigmoid: the
  ``(B, 1, S/8, S/8)`` complexity map.
* **Score head:** conv3x3 -> BN -> ReLU -> SLAM(32) -> global average pool -> ``Linear(512, 512)`` ->
  ReLU -> ``Linear(512, 1)`` -> sigmoid: the ``(B,)`` score.
* **SLAM** (spatial layout attention, :class:`SLAM`): each channel is resized (bilinear,
  ``align_corners=True``; skipped when it already is ``s x s``) to ``s x s``, flattened, and a shared
  ``Linear(s^2, 512) -> ReLU -> Linear(512, 1) -> sigmoid`` gives one gate per channel, which
  multiplies the original (not resized) channel.
* **Loss** (``train.py``): ``0.9 * MSE(score, y) + 0.1 * MSE(mean(map), y)``; the map is only weakly
  supervised (its mean must match the label). Labels are on [0, 1].

Both ResNets start from the same ImageNet weights in the official code (``torchvision`` with
``pretrained=True``); here :meth:`ICNet.load_backbone` loads a local torchvision-format file into both.

Decisions where the reference is silent or where we differ (none changes what the network computes)
-----------------------------------------------------------------------------------------------
* ``input_size`` (default 512, the official) is an option so that a CPU-sized model (e.g. 256) exists.
  The context branch always sees ``S/2`` and the map is always ``S/8``. The SLAM sizes stay 32, 32 |
  32, 32, 16, 8 | 32, 32 at every input size: they are tensor shapes (``Linear(s^2, 512)``), so the
  official weights load at any ``S``; at ``S < 512`` SLAM upsamples the smaller maps to its size.
  ``S`` must be a multiple of 32.
* ``width`` (ResNet base width, 64), ``fuse_channels`` (256 per branch), ``slam_hidden`` and
  ``score_hidden`` (512) default to the official values; smaller ones exist only for tiny tests.
* The context branch's 1x1 conv runs *before* its upsampling. Bilinear interpolation is linear with
  weights summing to 1, so ``conv1x1(up(x)) == up(conv1x1(x))`` (bias included) up to float rounding,
  and the conv runs on S/64 x S/64 positions instead of S/8 x S/8. The detail branch is already at S/8.
* Official ``score_feature.squeeze()`` turns a batch of one into a 1-D vector (a training-time crash
  at batch size 1); we flatten to ``(B, 512)``, so the score is ``(B,)`` for every batch size.
* Parameter names are ours (ResNets under torchvision's names, readable head names). The official
  ``ck.pth`` names are translated by :func:`official_to_pyica` / :func:`pyica_to_official`, one
  prefix table (:data:`OFFICIAL_PREFIXES`). **Provenance of the official names:** the official
  ``ICNet.py`` is not in our snapshot of ``tinglyfeng/IC9600``; the names come from the copy of it in
  ``xauat-liushipeng/CLIC`` (``clic/icnet.py``, headed "ICNet official impl"), which builds
  ``b1_1 = Sequential(*resnet.children()[:5])`` (so ``b1_1.0`` conv1, ``b1_1.1`` bn1, ``b1_1.4`` layer1),
  ``b1_2`` = layer2, ``b2_1 .. b2_4`` likewise, SLAMs ``b1_1_slam`` .. ``b2_4_slam``,
  ``to_map_f_slam``, ``to_score_f_slam`` (each an MLP named ``linear``), ``up1``/``up2``
  (``conv``, ``bn``), ``to_map_f``/``to_score_f`` (``conv``, ``bn``), ``to_map.to_map.0`` and ``head.0``/
  ``head.2``. A second copy (``MaxDietsch/complexity_analysis``, ``ICNet.py``) has the same module
  names, and the official ``gene.py`` loads ``ck.pth`` with a strict ``load_state_dict`` into a bare
  ``ICNet()`` (so no ``module.`` prefix). The real ``ck.pth`` is still unchecked (Google Drive only,
  not reachable here); loading is strict, so a wrong name fails loudly instead of scoring with
  random tensors.

Model (:class:`ICNetModel`, a :class:`~pyica.models.base.ComplexityModel`)
--------------------------------------------------------------------------
Preprocessing travels with the weights, as ``gene.py``/``train.py`` do it: the RGB image stretched to
``S x S`` (PIL bilinear, antialiased when shrinking, which is what ``torchvision.transforms.Resize`` does
to a PIL image; aspect ratio not kept), ``/255``, ImageNet mean/std. ``forward`` returns the score;
:meth:`ICNetModel.native_map` returns ICNet's own map upsampled (bilinear, ``align_corners=False``, as
``gene.py``) to the image's size, which :func:`pyica.maps.complexity_map` uses instead of scoring patches.

Weights on disk
---------------
``pyica train`` writes all tensors under our names (:func:`save_icnet`: safetensors + a ``pyica.card/1``
card, :mod:`pyica.weights`, with the config, preprocessing, training data and protocol, metrics and sha256). :func:`load_icnet` reads such a
pair (sha256 checked, strict), or an official checkpoint (``ck.pth`` through ``torch.load(weights_only=True)``,
or a safetensors copy of it without a card), whose names it translates.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .base import ComplexityModel
from .effnet import SquareResize
from .resnet import ResNet18, load_resnet_weights, read_state_dict

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SLAM", "conv_bn_relu", "MapScoreHeads", "icnet_loss", "UpConvBNReLU",
           "ICNetConfig", "ICNet", "ICNetModel", "OFFICIAL_PREFIXES", "official_to_pyica", "pyica_to_official",
           "save_icnet", "load_icnet"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: SLAM sizes of the official ICNet: detail (layer1, layer2), context (layer1..layer4), heads (map, score).
DETAIL_SLAM = (32, 32)
CONTEXT_SLAM = (32, 32, 16, 8)
HEAD_SLAM = 32


# --- pieces shared with the CLICv2 probing head (pyica.models.clicv2_probe) -------------------------

def conv_bn_relu(channels_in: int, channels_out: int, kernel: int) -> nn.Sequential:
    """``Conv2d`` (with bias, 'same' padding) -> ``BatchNorm2d`` -> ReLU, as ICNet's ``conv_bn_relu``."""
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2),
                         nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True))


class SLAM(nn.Module):
    """ICNet's spatial layout attention: a per-channel gate computed from that channel's layout."""

    def __init__(self, size: int, hidden: int = 512):
        super().__init__()
        self.size = size
        self.mlp = nn.Sequential(nn.Linear(size * size, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1),
                                 nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        layout = x if (h, w) == (self.size, self.size) else F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", align_corners=True)
        gate = self.mlp(layout.reshape(n, c, -1))  # (n, c, 1)
        return x * gate.unsqueeze(-1)


class MapScoreHeads:
    """Mixin for an ``nn.Module``: ICNet's map and score heads as attributes of the module itself, so
    their parameter names stay flat (``map_features.*``, ``map_slam.*``, ``to_map.*``, ``score_features.*``,
    ``score_slam.*``, ``score_mlp.*``). Call :meth:`_init_heads` in ``__init__``."""

    def _init_heads(self, width: int, slam_size: int, slam_hidden: int, score_hidden: int) -> None:
        self.map_features = conv_bn_relu(width, width, 3)
        self.map_slam = SLAM(slam_size, slam_hidden)
        self.to_map = nn.Conv2d(width, 1, kernel_size=1)
        self.score_features = conv_bn_relu(width, width, 3)
        self.score_slam = SLAM(slam_size, slam_hidden)
        self.score_mlp = nn.Sequential(nn.Linear(width, score_hidden), nn.ReLU(inplace=True),
                                       nn.Linear(score_hidden, 1))

    def map_and_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score (B,), map (B, 1, h, w))`` from the fused ``(B, width, h, w)`` features."""
        complexity_map = torch.sigmoid(self.to_map(self.map_slam(self.map_features(x))))
        pooled = self.score_slam(self.score_features(x)).mean(dim=(2, 3))
        score = torch.sigmoid(self.score_mlp(pooled)).squeeze(-1)
        return score, complexity_map


def icnet_loss(score: torch.Tensor, complexity_map: torch.Tensor, target: torch.Tensor,
               map_weight: float = 0.1) -> torch.Tensor:
    """``(1 - map_weight) * MSE(score, y) + map_weight * MSE(mean(map), y)`` (ICNet: 0.9 / 0.1)."""
    return ((1 - map_weight) * F.mse_loss(score, target)
            + map_weight * F.mse_loss(complexity_map.mean(dim=(1, 2, 3)), target))


class UpConvBNReLU(nn.Module):
    """ICNet's ``up_conv_bn_relu``: to ``size x size`` (bilinear, ``align_corners=True``), 1x1 conv, BN, ReLU.
    The conv runs before the resize (identical, see the module doc)."""

    def __init__(self, channels_in: int, channels_out: int, size: int):
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(channels_in, channels_out, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=True)
        return F.relu(self.bn(x))


# --- the network -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ICNetConfig:
    """ICNet's sizes; the defaults are the official model (see the module doc)."""

    input_size: int = 512
    width: int = 64            # ResNet-18 base width (ImageNet weights need 64)
    fuse_channels: int = 256   # per branch after the 1x1 conv; the heads see 2x this
    slam_hidden: int = 512
    score_hidden: int = 512
    map_weight: float = 0.1    # loss = (1 - w) MSE(score) + w MSE(mean(map))

    def __post_init__(self) -> None:
        if self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, not {self.input_size}")
        if min(self.width, self.fuse_channels, self.slam_hidden, self.score_hidden) < 1:
            raise ValueError("ICNet widths must be at least 1")
        if not 0.0 <= self.map_weight <= 1.0:
            raise ValueError("map_weight must be in [0, 1]")

    @property
    def map_size(self) -> int:
        return self.input_size // 8

    @property
    def official_sizes(self) -> bool:
        """True when every tensor has the official shape (an official checkpoint fits)."""
        return (self.width, self.fuse_channels, self.slam_hidden, self.score_hidden) == (64, 256, 512, 512)

    def to_dict(self) -> dict:
        return asdict(self)


class ICNet(MapScoreHeads, nn.Module):
    """ICNet: ``forward(normalised (B, 3, S, S)) -> (score (B,), map (B, 1, S/8, S/8))``, both in [0, 1]."""

    def __init__(self, config: ICNetConfig | None = None):
        super().__init__()
        self.config = c = config or ICNetConfig()
        w, m = c.width, c.map_size
        self.detail = ResNet18(None, stages=2, width=w)
        self.detail_slam1 = SLAM(DETAIL_SLAM[0], c.slam_hidden)
        self.detail_slam2 = SLAM(DETAIL_SLAM[1], c.slam_hidden)
        self.context = ResNet18(None, stages=4, width=w)
        for k, size in enumerate(CONTEXT_SLAM, 1):
            setattr(self, f"context_slam{k}", SLAM(size, c.slam_hidden))
        self.detail_up = UpConvBNReLU(2 * w, c.fuse_channels, m)
        self.context_up = UpConvBNReLU(8 * w, c.fuse_channels, m)
        self._init_heads(2 * c.fuse_channels, HEAD_SLAM, c.slam_hidden, c.score_hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.config.input_size
        if x.shape[-2:] != (s, s):
            raise ValueError(f"ICNet({s}) takes {s} x {s} inputs, got {tuple(x.shape[-2:])}")
        context = F.interpolate(x, size=(s // 2, s // 2), mode="bilinear", align_corners=True)
        d = self.detail_slam1(self.detail.layer1(self.detail.stem(x)))
        d = self.detail_slam2(self.detail.layer2(d))
        c = self.context_slam1(self.context.layer1(self.context.stem(context)))
        c = self.context_slam2(self.context.layer2(c))
        c = self.context_slam3(self.context.layer3(c))
        c = self.context_slam4(self.context.layer4(c))
        return self.map_and_score(torch.cat((self.detail_up(d), self.context_up(c)), dim=1))

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return icnet_loss(outputs[0], outputs[1], target, self.config.map_weight)

    def load_backbone(self, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict:
        """Load torchvision-format ResNet-18 weights (e.g. ImageNet) into both branches, as the official
        code starts from ``resnet18(pretrained=True)`` twice. Returns what was loaded, for the card."""
        state = read_state_dict(source)
        ignored_detail = load_resnet_weights(self.detail, state)
        ignored_context = load_resnet_weights(self.context, state)
        return {"tensors": len(state), "ignored_by_detail_branch": len(ignored_detail),
                "ignored_by_context_branch": ignored_context}


# --- official checkpoint names ---------------------------------------------------------------------

#: ``(official prefix, our prefix)``: every key of the official state dict starts with exactly one of
#: these (see the module doc for where the official names come from).
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("b1_1.0.", "detail.conv1."), ("b1_1.1.", "detail.bn1."), ("b1_1.4.", "detail.layer1."),
    ("b1_1_slam.linear.", "detail_slam1.mlp."),
    ("b1_2.", "detail.layer2."), ("b1_2_slam.linear.", "detail_slam2.mlp."),
    ("b2_1.0.", "context.conv1."), ("b2_1.1.", "context.bn1."), ("b2_1.4.", "context.layer1."),
    ("b2_1_slam.linear.", "context_slam1.mlp."),
    ("b2_2.", "context.layer2."), ("b2_2_slam.linear.", "context_slam2.mlp."),
    ("b2_3.", "context.layer3."), ("b2_3_slam.linear.", "context_slam3.mlp."),
    ("b2_4.", "context.layer4."), ("b2_4_slam.linear.", "context_slam4.mlp."),
    ("up1.conv.", "detail_up.conv."), ("up1.bn.", "detail_up.bn."),
    ("up2.conv.", "context_up.conv."), ("up2.bn.", "context_up.bn."),
    ("to_map_f.conv.", "map_features.0."), ("to_map_f.bn.", "map_features.1."),
    ("to_map_f_slam.linear.", "map_slam.mlp."), ("to_map.to_map.0.", "to_map."),
    ("to_score_f.conv.", "score_features.0."), ("to_score_f.bn.", "score_features.1."),
    ("to_score_f_slam.linear.", "score_slam.mlp."),
    ("head.0.", "score_mlp.0."), ("head.2.", "score_mlp.2."),
)


def _rename(state: Mapping[str, torch.Tensor], table: tuple[tuple[str, str], ...],
            what: str) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        matches = [(a, b) for a, b in table if key.startswith(a)]
        if len(matches) != 1:
            unknown.append(key)
            continue
        a, b = matches[0]
        out[b + key[len(a):]] = value
    if unknown:
        raise ValueError(f"{len(unknown)} keys are not {what} ICNet names, e.g. {unknown[:4]}")
    return out


def official_to_pyica(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official ICNet state dict (``ck.pth`` names) under our names; an unknown key raises ``ValueError``."""
    return _rename(state, OFFICIAL_PREFIXES, "official")


def pyica_to_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`official_to_pyica` (our names -> official names)."""
    return _rename(state, tuple((b, a) for a, b in OFFICIAL_PREFIXES), "pyica")


def _is_official(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("b1_1.", "b2_1.")) for k in state)


# --- the scorer ------------------------------------------------------------------------------------

class ICNetModel(ComplexityModel):
    """ICNet with its preprocessing: ``forward(uint8 (B, 3, S, S)) -> (B,)`` scores in [0, 1]."""

    score_range = (0.0, 1.0)

    def __init__(self, net: ICNet, card: dict | None = None):
        super().__init__(SquareResize(net.config.input_size))
        self.net = net
        self.card = dict(card or {})
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def config(self) -> ICNetConfig:
        return self.net.config

    def normalise(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        return (pixels_uint8.float() / 255.0 - self.pixel_mean) / self.pixel_std

    def outputs(self, pixels_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score (B,), map (B, 1, S/8, S/8))`` of a batch of transformed images."""
        return self.net(self.normalise(pixels_uint8))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.outputs(batch)[0]

    def complexity_map(self, batch: torch.Tensor) -> torch.Tensor:
        """ICNet's ``(B, 1, S/8, S/8)`` map of a batch of transformed images."""
        return self.outputs(batch)[1]

    @torch.inference_mode()
    def native_map(self, image: Image.Image) -> np.ndarray:
        """ICNet's map of one RGB image, upsampled to its size: float32 ``(height, width)`` in [0, 1]
        (bilinear, ``align_corners=False``, as the official ``gene.py``). Used by :mod:`pyica.maps`."""
        image = image.convert("RGB")
        batch = self.transform(image).unsqueeze(0).to(self.device)
        cmap = self.complexity_map(batch).float()
        cmap = F.interpolate(cmap, size=(image.height, image.width), mode="bilinear", align_corners=False)
        return cmap[0, 0].cpu().numpy().astype(np.float32)

    def describe(self) -> dict:
        """What the card says about the architecture and the preprocessing."""
        c = self.config
        return {"architecture": {"name": "icnet", "arguments": c.to_dict(),
                                 "description": "ICNet (Feng et al., TPAMI 2022), two ResNet-18 branches + SLAM, "
                                                "map and score heads",
                                 "official_sizes": c.official_sizes, "map": f"{c.map_size} x {c.map_size}",
                                 "parameters": int(sum(p.numel() for p in self.net.parameters()))},
                "preprocessing": {"resize": f"{c.input_size}x{c.input_size} square, PIL bilinear (antialiased "
                                            "when shrinking, as torchvision Resize on PIL), aspect ratio not kept",
                                  "normalise": {"scale": "1/255", "mean": list(IMAGENET_MEAN),
                                                "std": list(IMAGENET_STD)}}}


# --- weights on disk -------------------------------------------------------------------------------

def save_icnet(model: ICNetModel, path: str | Path, card: dict | None = None) -> dict:
    """Write every tensor (our names) to ``path`` and its card beside it (:func:`pyica.weights.save_weights`).
    ``card``: what to record (training, evaluation, ...); architecture, preprocessing and score range are added."""
    from ..weights import save_weights

    full = {"name": "icnet", **(card or {}), **model.describe(),
            "score": {"range": list(model.score_range), "higher": "more complex", **(card or {}).get("score", {})},
            "weights": {"names": "pyica (see pyica.models.icnet.pyica_to_official for the official ck.pth names)"}}
    model.card = save_weights(model.net.state_dict(), full, path)
    return model.card


def load_icnet(path: str | Path, config: ICNetConfig | None = None, *, allow_unverified: bool = False) -> ICNetModel:
    """An ICNet from ``path``, in eval mode: our safetensors with its card beside it (through
    :func:`pyica.weights.load_weights`: sha256 checked), or an official checkpoint (``ck.pth``, read with
    ``torch.load(weights_only=True)``; names translated). Loading is strict: a tensor too many, too few
    or of the wrong shape raises.

    ``config`` applies to a checkpoint without a card only (default: the official :class:`ICNetConfig`);
    e.g. ``ICNetConfig(input_size=256)`` runs the official weights at 256 px (cheaper, not what they
    were trained at). A card's config is always the one used; a card without a sha256 loads only with
    ``allow_unverified``. Every tensor must be finite and of the model's dtype kind."""
    from ..weights import card_path_of, check_dtypes, load_weights, sha256_file

    path = Path(path)
    if path.suffix == ".safetensors" and card_path_of(path).is_file():
        state, card = load_weights(path, allow_unverified=allow_unverified)
        if card["architecture"]["name"] != "icnet":
            raise ValueError(f"{card_path_of(path)}: not an ICNet card (architecture {card['architecture']['name']!r})")
        net = ICNet(ICNetConfig(**card["architecture"]["arguments"]))
    else:  # third-party weights (the official ck.pth): no card to check them against
        state = read_state_dict(path)  # NaN/Inf refused there
        official = _is_official(state)
        if official:
            state = official_to_pyica(state)
        net = ICNet(config or ICNetConfig())
        card = {"name": "icnet", "format": "official IC9600 checkpoint" if official else "ICNet state dict",
                "source": "tinglyfeng/IC9600 (ck.pth, trained on IC9600's training split)" if official else str(path),
                "weights": {"file": path.name, "sha256": sha256_file(path)}}
    own = net.state_dict()
    missing, unknown = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unknown or wrong:
        raise ValueError(f"{path}: does not fit ICNet (missing {missing[:3]}, unknown {unknown[:3]}, "
                         f"wrong shape {wrong[:3]})")
    check_dtypes(state, own, path)
    net.load_state_dict(state, strict=True)
    model = ICNetModel(net, card)
    model.card = {**card, **({} if "architecture" in card else model.describe())}
    return model.eval()


#: How each registered ICNet gets its weights: name -> (dataset it is trained on, where the weights come from).
#: Metadata (descriptions, score range) is declared in pyica.models.catalog.
REGISTERED = {
    "icnet.ic9600": ("ic9600", "the official ck.pth (Google Drive, linked from tinglyfeng/IC9600) or "
                               "weights trained on IC9600 with pyica"),
    "icnet.savoias": ("savoias", "`pyica train configs/icnet/icnet_savoias.json` (or the .cpu.json variant)"),
}


def build_registered(name: str, weights: str | None = None, allow_unverified: bool = False) -> ICNetModel:
    """The registered ICNet ``name`` from ``weights`` (it ships none)."""
    dataset, how = REGISTERED[name]
    if weights is None:
        raise ValueError(f"{name} ships no weights: pass them with --weights ({how})")
    model = load_icnet(weights, allow_unverified=allow_unverified)
    trained_on = (model.card.get("training") or {}).get("dataset")
    if trained_on and trained_on != dataset:
        log.warning("%s: weights trained on %r, not %s", weights, trained_on, dataset)
    return model
