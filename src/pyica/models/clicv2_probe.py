"""Probing a frozen CLICv2 encoder: an ICNet-style head or a linear head on top of the query ViT.

CLIC and CLICv2 call this "linear probing", but what they train is a whole ICNet head on the frozen
encoder (methods.md 2.1 / 2.2): CLIC's ``fine_tuning.py`` builds ``ICNet_ft`` (``clic/icnet.py``),
CLICv2 puts "the query encoder with frozen parameters in ICNet ... as a single branch". Both heads
are here; only the head has trainable tensors.

:class:`ICNetProbeHead` follows ``ICNet_ft`` layer by layer:

1. ``up_conv_bn_relu``: the encoder map is upsampled (bilinear, ``align_corners=True``) to
   ``map_size`` x ``map_size`` (64 = 512 / 8 in ICNet), then 1x1 conv -> BatchNorm -> ReLU to
   ``width`` (512) channels. Our encoder map is the ViT's patch-token grid ``(B, dim, H/p, W/p)``
   (methods.md 2.2: "reshape the patch tokens to a grid and upsample to 64x64").
   *Implementation detail, not a change:* the 1x1 conv is applied before the upsampling.
   Bilinear interpolation is a linear map whose weights sum to 1, so
   ``conv1x1(up(x)) == up(conv1x1(x))`` exactly (bias included), and the conv runs on the
   small grid instead of 64 x 64 positions.
2. **Map branch:** conv3x3 -> BN -> ReLU (``width`` -> ``width``) -> SLAM(``slam_size``) -> 1x1 conv to
   one channel -> sigmoid. That is the ``(B, 1, map_size, map_size)`` complexity map.
3. **Score branch:** conv3x3 -> BN -> ReLU -> SLAM -> global average pool ->
   ``Linear(width, score_hidden)`` -> ReLU -> ``Linear(score_hidden, 1)`` -> sigmoid. That is the score.
4. **SLAM (spatial layout attention).** Per channel, the map is resized (bilinear,
   ``align_corners=True``) to ``slam_size`` squared and flattened. A shared
   ``Linear(slam_size^2, slam_hidden)-ReLU-Linear(slam_hidden, 1)-Sigmoid`` gives a gate that
   multiplies that channel.
   SLAM and the map/score branches are ICNet's own code (:mod:`pyica.models.icnet`: ``SLAM``,
   ``MapScoreHeads``, ``icnet_loss``), shared with the full ICNet.
5. **Loss** (ICNet's ``train.py`` and CLIC's ``fine_tuning.py``):
   ``0.9 * MSE(score, y) + 0.1 * MSE(mean(map), y)``. The map is only weakly supervised.

**Scale knobs.** ``width``, ``map_size``, ``slam_size``, ``slam_hidden`` and ``score_hidden`` all
default to ICNet's values (512, 64, 32, 512, 512). With those the head costs about 20 GMAC per image,
and the two 3x3 convs at 64 x 64 dominate. That is fine on a GPU but not on a 2-core CPU, so the
SAVOIAS benchmark uses smaller values. That is the only simplification, and the card records it.

:class:`LinearProbeHead` is the linear probe of MAE (``main_linprobe.py``). The cls token of the last
layer (already LayerNorm-ed by the ViT's final norm) goes through ``BatchNorm1d(dim, affine=False)``,
which standardises the features with batch statistics in training and running statistics at
inference, and then through ``Linear(dim, 1)``, initialised trunc-normal with std 0.01 and a zero
bias. No LayerNorm is added. A sigmoid maps the output to [0, 1], like ICNet's score. The loss is
``MSE(score, y)``. ``pool="mean"`` reads the mean of the patch tokens instead of the cls token (MAE's
``global_pool`` option). Why offer it: CLICv2's patch-wise InfoNCE and MEM put only *patch* tokens in
the loss, so the last layer's cls output is never trained directly; the image-wise InfoNCE of Table 4
trains the cls token.

:class:`CLICv2Probe` is a :class:`~pyica.models.base.ComplexityModel`:

* ``transform``: the RGB image resized to the encoder's ``image_size`` square, bicubic. PIL's
  resampling widens its filter when it downscales, so the resize is antialiased. The result is a
  ``uint8`` ``(3, S, S)`` tensor. The aspect ratio is not kept; ICNet and CLIC resize to 512 x 512
  the same way.
* ``forward``: ``/255``, ImageNet mean/std, the frozen ViT (all tokens, no masking), then the head.
  The result is ``(B,)`` scores in [0, 1].

The encoder is frozen for good: its parameters never require gradients, and ``train()`` keeps it in
eval mode. :meth:`CLICv2Probe.probe_state_dict` holds the head's tensors only.

Weights on disk (``save_probe`` / ``load_probe``)
-------------------------------------------------
We save **encoder and head in one safetensors file** (keys ``encoder.*`` and ``head.*``), with a
JSON card (:mod:`pyica.weights`, ``pyica.card/1``) beside it that has the same stem. This makes a probe self-contained: the random-encoder
baseline has no encoder file to point to, and a probe cannot be paired with the wrong encoder. The
cost is the encoder's size, about 22 MB for a ViT-Ti.

The card records:

* in ``architecture.arguments``: the encoder's ViT config and the head kind and config;
* in ``architecture.encoder``: where the encoder came from: the pretraining card's sha256, method,
  config and training summary, or "random init" with its seed;
* the preprocessing;
* whatever the caller adds (training data and recipe, metrics);
* the sha256 of the safetensors file.

``load_probe`` checks that sha256, then loads strictly: every tensor must fit, and none may be
missing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..loading import DECODE_OVERSAMPLE
from .base import ComplexityModel
from .icnet import IMAGENET_MEAN, IMAGENET_STD, SLAM, MapScoreHeads, icnet_loss
from .vit import ViT, ViTConfig

__all__ = ["HEAD_KINDS", "ICNetHeadConfig", "SLAM", "ICNetProbeHead", "LinearProbeHead", "SquareResize", "CLICv2Probe",
           "build_head", "load_encoder", "random_encoder", "encoder_fingerprint", "save_probe", "load_probe"]

HEAD_KINDS = ("icnet", "linear")
LINEAR_POOLS = ("cls", "mean")


# --- heads -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ICNetHeadConfig:
    """Sizes of :class:`ICNetProbeHead`; the defaults are ICNet's / CLIC's ``ICNet_ft``."""

    width: int = 512
    map_size: int = 64
    slam_size: int = 32
    slam_hidden: int = 512
    score_hidden: int = 512
    map_weight: float = 0.1  # loss = (1 - map_weight) * MSE(score) + map_weight * MSE(mean(map))

    def __post_init__(self) -> None:
        if min(self.width, self.map_size, self.slam_size, self.slam_hidden, self.score_hidden) < 1:
            raise ValueError("ICNet head sizes must be at least 1")
        if not 0.0 <= self.map_weight <= 1.0:
            raise ValueError("map_weight must be in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


def _tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    """``(B, 1 + N, D)`` tokens (cls first) -> the patch grid ``(B, D, rows, cols)``."""
    patches = tokens[:, 1:]
    b, n, d = patches.shape
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not form a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    return patches.transpose(1, 2).reshape(b, d, grid[0], grid[1])


class ICNetProbeHead(MapScoreHeads, nn.Module):
    """ICNet's map and score heads on a frozen encoder's patch-token grid (see the module doc).

    ``forward(tokens, grid)`` -> ``(score (B,), map (B, 1, map_size, map_size))``, both in [0, 1].
    """

    kind = "icnet"

    def __init__(self, in_dim: int, config: ICNetHeadConfig | None = None):
        super().__init__()
        self.in_dim = in_dim
        self.config = c = config or ICNetHeadConfig()
        # up_conv_bn_relu (1x1 conv before the upsampling: identical, see the module doc)
        self.up_conv = nn.Conv2d(in_dim, c.width, kernel_size=1)
        self.up_bn = nn.BatchNorm2d(c.width)
        # map and score branches (shared with ICNet: pyica.models.icnet.MapScoreHeads)
        self._init_heads(c.width, c.slam_size, c.slam_hidden, c.score_hidden)

    def head_config(self) -> dict:
        return {"kind": self.kind, "in_dim": self.in_dim, **self.config.to_dict()}

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        x = self.up_conv(_tokens_to_map(tokens, grid))
        x = F.interpolate(x, size=(c.map_size, c.map_size), mode="bilinear", align_corners=True)
        return self.map_and_score(F.relu(self.up_bn(x)))

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor | None], target: torch.Tensor) -> torch.Tensor:
        return icnet_loss(outputs[0], outputs[1], target, self.config.map_weight)


class LinearProbeHead(nn.Module):
    """MAE's linear probe: ``sigmoid(Linear(BatchNorm1d(affine=False)(feature)))``, the feature being
    the cls token (``pool="cls"``) or the mean of the patch tokens (``pool="mean"``).

    ``forward(tokens, grid)`` -> ``(score (B,), None)``.
    """

    kind = "linear"

    def __init__(self, in_dim: int, pool: str = "cls"):
        super().__init__()
        if pool not in LINEAR_POOLS:
            raise ValueError(f"pool must be one of {LINEAR_POOLS}, not {pool!r}")
        self.in_dim, self.pool = in_dim, pool
        self.norm = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(in_dim, 1)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def head_config(self) -> dict:
        return {"kind": self.kind, "in_dim": self.in_dim, **({"pool": self.pool} if self.pool != "cls" else {})}

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, None]:
        feature = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(1)
        return torch.sigmoid(self.linear(self.norm(feature))).squeeze(-1), None

    def loss(self, outputs: tuple[torch.Tensor, None], target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs[0], target)


def build_head(kind: str, in_dim: int, **config) -> nn.Module:
    """``"icnet"`` (``config``: :class:`ICNetHeadConfig` fields) or ``"linear"`` (``config``: ``pool``)."""
    if kind == "icnet":
        return ICNetProbeHead(in_dim, ICNetHeadConfig(**config))
    if kind == "linear":
        if set(config) - {"pool"}:
            raise ValueError(f"the linear head takes only the option 'pool', got {sorted(config)}")
        return LinearProbeHead(in_dim, **config)
    raise ValueError(f"head must be one of {HEAD_KINDS}, not {kind!r}")


# --- the model -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SquareResize:
    """RGB PIL image -> ``uint8`` ``(3, size, size)`` tensor, bicubic (antialiased when shrinking)."""

    size: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC, reducing_gap=None)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """What to decode a ``width`` x ``height`` JPEG to at least (``pyica.loading.load_image``)."""
        side = DECODE_OVERSAMPLE * self.size
        return side, side


class CLICv2Probe(ComplexityModel):
    """A frozen ViT encoder + a trainable probing head; ``forward(uint8 (B, 3, S, S)) -> (B,)`` in [0, 1]."""

    score_range = (0.0, 1.0)

    def __init__(self, encoder: ViT, head: nn.Module, encoder_info: dict | None = None):
        super().__init__(SquareResize(encoder.config.image_size))
        self.encoder = encoder.requires_grad_(False).eval()
        self.head = head
        self.encoder_info = dict(encoder_info or {})
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.card: dict = {}

    @property
    def image_size(self) -> int:
        return self.encoder.config.image_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.grid

    def train(self, mode: bool = True) -> "CLICv2Probe":
        super().train(mode)
        self.encoder.eval()  # frozen: never in training mode
        return self

    def normalise(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        return (pixels_uint8.float() / 255.0 - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def encode(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's tokens ``(B, 1 + N, dim)`` (cls first): what the heads read."""
        return self.encoder.forward_tokens(self.normalise(pixels_uint8))

    def head_outputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(score (B,), map or None)`` from encoder tokens (cached or fresh)."""
        side = math.isqrt(tokens.shape[1] - 1)
        return self.head(tokens, (side, side))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.head_outputs(self.encode(batch))[0]

    def complexity_map(self, batch: torch.Tensor) -> torch.Tensor | None:
        """The ICNet head's ``(B, 1, map_size, map_size)`` map (``None`` for the linear head)."""
        return self.head_outputs(self.encode(batch))[1]

    def probe_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's tensors (parameters and BatchNorm statistics), keyed as in ``state_dict()``."""
        return {f"head.{k}": v for k, v in self.head.state_dict().items()}

    def describe(self) -> dict:
        """What the card says about the architecture and preprocessing."""
        return {"encoder": {"config": self.encoder.config.to_dict(), **self.encoder_info},
                "head": self.head.head_config(),
                "preprocessing": {"resize": f"{self.image_size}x{self.image_size} square, bicubic (antialiased), "
                                            "aspect ratio not kept",
                                  "normalise": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}}


# --- encoders --------------------------------------------------------------------------------------

def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 of the encoder's tensors (names, shapes, dtypes, bytes): identifies a frozen encoder."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def random_encoder(config: ViTConfig, seed: int = 0, arch: str | None = None) -> tuple[ViT, dict]:
    """A randomly initialised ViT (MAE init, seeded): the probing baseline. ``arch`` (a preset name)
    is only recorded."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        encoder = ViT(config)
    finally:
        torch.random.set_rng_state(state)
    return encoder.eval(), {"source": "random init", "seed": seed, "arch": arch}


def load_encoder(path: str | Path, *, allow_unverified: bool = False) -> tuple[ViT, dict]:
    """The query encoder `pyica pretrain` wrote. ``path`` is ``encoder.safetensors`` or its run folder;
    the card ``encoder.json`` beside it gives the config and the sha256 (checked by
    :func:`pyica.weights.load_weights`)."""
    from ..weights import card_path_of, check_dtypes, load_weights
    from .clicv2 import CLICv2Config

    path = Path(path)
    if path.is_dir():
        path = path / "encoder.safetensors"
    state, card = load_weights(path, allow_unverified=allow_unverified)
    arch = card["architecture"]
    if arch.get("method") != "clicv2":
        raise ValueError(f"{card_path_of(path)}: not a CLICv2 encoder card (method {arch.get('method')!r})")
    encoder = ViT(CLICv2Config(**arch["arguments"]).encoder_config())
    check_dtypes(state, encoder.state_dict(), path)
    encoder.load_state_dict(state)
    training = card.get("training") or {}
    info = {"source": "clicv2 pretraining", "file": str(path), "sha256": card["weights"]["sha256"],
            "arch": arch["arguments"].get("arch"), "pretrain_config": arch["arguments"],
            "pretraining": {k: training.get(k) for k in ("steps", "total_steps", "epochs_done", "samples_seen",
                                                         "global_batch", "peak_lr", "final_loss", "final_parts",
                                                         "finished", "seconds_total", "data")}}
    return encoder.eval(), info


# --- weights on disk -------------------------------------------------------------------------------

def save_probe(model: CLICv2Probe, path: str | Path, card: dict | None = None) -> dict:
    """Write encoder + head tensors to ``path`` and the card beside it (:func:`pyica.weights.save_weights`).

    ``card``: anything to record (training data, recipe, metrics); the architecture, preprocessing
    and score range are added. Returns the card.
    """
    from ..weights import save_weights

    tensors = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    tensors.update(model.probe_state_dict())
    described = model.describe()
    encoder = dict(described["encoder"])
    full = {"name": f"clicv2_probe.{model.encoder_info.get('arch') or 'vit'}", **(card or {}),
            "architecture": {"name": "clicv2_probe",
                             "arguments": {"encoder": encoder.pop("config"), "head": described["head"]},
                             "encoder": encoder},
            "preprocessing": described["preprocessing"],
            "score": {"range": list(model.score_range), "higher": "more complex", **(card or {}).get("score", {})},
            "weights": {"holds": "frozen encoder (encoder.*) and trained head (head.*)",
                        "parameters": {"encoder": int(sum(p.numel() for p in model.encoder.parameters())),
                                       "head": int(sum(p.numel() for p in model.head.parameters()))}}}
    model.card = save_weights(tensors, full, path)
    return model.card


def load_probe(path: str | Path, *, allow_unverified: bool = False) -> CLICv2Probe:
    """A probe written by :func:`save_probe`, through :func:`pyica.weights.load_weights` (sha256 checked),
    loaded strictly, in eval mode."""
    from ..weights import card_path_of, check_dtypes, load_weights

    path = Path(path)
    state, card = load_weights(path, allow_unverified=allow_unverified)
    arch = card["architecture"]
    if arch["name"] != "clicv2_probe":
        raise ValueError(f"{card_path_of(path)}: not a CLICv2 probe card (architecture {arch['name']!r})")
    encoder = ViT(ViTConfig(**arch["arguments"]["encoder"]))
    head_cfg = dict(arch["arguments"]["head"])
    kind, in_dim = head_cfg.pop("kind"), head_cfg.pop("in_dim")
    model = CLICv2Probe(encoder, build_head(kind, in_dim, **head_cfg), arch.get("encoder"))
    check_dtypes(state, model.state_dict(), path)
    model.load_state_dict(state, strict=True)  # a tensor too many or too few is an error
    model.card = card
    return model.eval()


def build_registered(name: str, weights: str | None = None, allow_unverified: bool = False) -> CLICv2Probe:
    """The registered probe ``name`` (``clicv2_probe.vit_tiny``) from ``weights`` (it ships none); metadata
    is declared in pyica.models.catalog."""
    if weights is None:
        raise ValueError(f"{name} has no shipped weights: pretrain and probe one (python -m benchmarks.clicv2_savoias "
                         "or pyica.training.probe) and pass the .safetensors with --weights")
    model = load_probe(weights, allow_unverified=allow_unverified)
    arch = (model.card["architecture"].get("encoder") or {}).get("arch")
    if arch not in (None, name.partition(".")[2]):
        raise ValueError(f"{weights}: a probe on a {arch} encoder, not {name}'s {name.partition('.')[2]}")
    return model
