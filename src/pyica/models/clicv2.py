"""CLICv2 pretraining: content-invariant contrastive learning for image complexity (Liu, Zhao, Chen).

There is no reference code, so this follows the paper and fills its gaps with the readings of
``shared/research/methods.md`` (section 2.2). The pieces:

* **Shifted patchify (SP, Sec. 3.1).** Each image is cut into the G non-overlapping p x p patches of
  the ViT grid (one token = one shifted patch). Every patch is augmented on its own (flip, colour
  jitter, blur) and its content is then shifted along one of 8 directions with zero padding.
  Two independent SP views of the same image are made; the patches at the same grid position are
  the positive pairs.
* **MoCo pair.** Query ViT + projection MLP + prediction MLP (MoCo v3); key ViT + key projection
  are momentum copies (m = 0.999) that get no gradients.
* **Masking.** 60 % of the query view's patches are dropped before the encoder (MAE-style); the
  contrastive loss only uses the visible ones.
* **Patch-wise InfoNCE (Eq. 2-3)**, or the image-wise InfoNCE of Table 4 (``contrast="image"``).
* **Masked entropy modelling (MEM, Sec. 3.3).** A small MAE-style ViT decoder predicts, for every
  masked patch, the entropy of that patch (or its pixels / frequency amplitudes, Table 5).
* Total loss ``L = L_contrast + rec_weight * L_rec`` (Eq. 12, lambda = 2).

Open points: what the paper says, what we chose, why
----------------------------------------------------
1. **Negatives of Eq. 2.** Printed: ``exp(q . sum{k^{i-}} / tau)``, i.e. the negatives summed inside
   the dot product, a single negative term. Chosen: the standard InfoNCE of Eq. 1 (a typo reading),
   cross-entropy of ``q . k / tau`` against *all* B*G key patch features of the mini-batch with the
   same-index key patch of the same image as the target. So the negatives are the other patches of
   the same image *and* all patches of the other images ("different patches within the same
   mini-batch"; ``{k^{i-}}`` is the set for image i without (i, j)). Features L2-normalised,
   tau = 0.2, no memory bank, no MoCo v3 ``2*tau`` loss scaling (the paper shows none). The
   positive "k_j^{i+1}" is read as ``k_j^{i+}``. The mean is over the unmasked patches of all
   images (Eq. 3). Key features come from all G key patches (the key view is unmasked), so the
   masked query positions still provide negatives.
2. **Projection / prediction heads.** Unspecified; MoCo v3's: ``Linear-BN-ReLU-Linear`` projector
   (hidden 1024 here, 256-d out) on both sides and a predictor of the same form on the query side.
   Patch tokens are flattened to (B*T, D) so BatchNorm normalises over all tokens of the batch;
   ``head_norm="ln"`` gives a LayerNorm variant (no cross-sample statistics).
3. **Which encoder is masked.** Only the query; the key encoder sees all patches (MAE/MoCo hybrid
   reading: the keys must exist for every position to serve as negatives).
4. **Mask count.** ``M = round(mask_ratio * G)`` (half rounds up), clipped to [1, G-1]; a fresh
   random set per image (MAE's argsort of uniform noise). Keep indices are sorted.
5. **Shift distribution.** Unspecified. Chosen: one of the 8 directions (N, S, E, W, NE, NW, SE,
   SW) uniformly, an integer magnitude s uniform in [1, floor(max_shift * p)] pixels (at least 1),
   and diagonal shifts move s pixels along *both* axes. max_shift = 0.25 gives 1..8 px for 32 px
   patches. Content that leaves the patch is lost; the uncovered strip is zero (black: the shift
   is applied on [0, 1] pixels, before ImageNet normalisation; the other reading, zero after
   normalisation, would pad with the mean colour).
6. **Augmentations.** "Horizontal flip, colour dithering, blurring et al." Chosen, per patch and
   independent between patches and views: hflip p=0.5; with p=0.8 brightness/contrast/saturation
   jitter of strength 0.4/0.4/0.2 (MoCo v3's values; hue is left out: it needs an HSV round trip
   and changes no complexity); Gaussian blur p=0.5 with sigma uniform in [0.1, 2.0] px (a full-width
   separable Gaussian with renormalised borders, done as a matrix product per patch). Order:
   augment, then shift (Sec. 3.1: augmentation "before the shift"). See ``PatchAugConfig``.
7. **Entropy target H(F(P_m)).** F and the histogram are unspecified. Chosen: the Shannon entropy in
   bits of the 256-bin histogram of the patch's greyscale values (ITU-R BT.601 luma
   0.299R + 0.587G + 0.114B, quantised to 0..255 by rounding), divided by log2(bins) = 8 so it lies
   in [0, 1] (CLIC's global-entropy prior, per patch). It is computed on the patch *as fed to the
   query encoder* (after augmentation and shift, zero strip included), because that is the patch
   the decoder is asked to fill in; the unmasked context the decoder sees comes from that same
   view. ``entropy_bins`` < 256 merges the 256 levels into coarser bins.
8. **Eq. 11 sums over masked patches** (so lambda's scale depends on M). Chosen: Eq. 11 as printed,
   ``rec_reduction="sum"``: per image, the squared errors of its masked patches are summed (for a
   multi-dim target, each patch's error is first averaged over the target's elements, as MAE),
   and the sum is averaged over the images of the batch; lambda = 2 multiplies that. Why not the
   mean: measured on SAVOIAS at toy scale (ViT-Ti/32, 128 px, M = 10), the masked-patch MEAN of
   the [0, 1] entropy error settles at ~0.03, so lambda * L_rec ~ 0.06 was ~2 % of the loss next to
   InfoNCE ~ 2.5; the sum over M patches gives MEM the weight the paper's lambda implies.
   ``rec_reduction="mean"`` (mean over all masked patches of the batch) is kept for comparison.
9. **Decoder ("a smaller-scale ViT").** MAE-style: Linear(encoder dim -> decoder_dim), a learnable
   mask token at every masked position, learnable decoder positional embeddings (sin-cos init),
   ``decoder_depth`` pre-norm blocks, LayerNorm, a linear head to the target size (1 for entropy,
   no sigmoid). Defaults 128-d, 2 blocks, 4 heads: small next to a ViT-B, cheap for a ViT-Ti.
10. **Other targets (Table 5).** "pixels": the patch's 3*p*p values normalised per patch (mean 0,
    variance 1, MAE's norm_pix_loss); "frequency": log(1 + |rfft2|) (orthonormal) of the grey patch,
    normalised per patch the same way. Both on the query view's patch, like the entropy.
11. **Inputs.** ``forward`` takes images in [0, 1]; augmentation, shift and targets work on [0, 1]
    pixels and the patches are then ImageNet-normalised (mean/std) for the encoders, the input
    statistics ICNet's probing uses too. Images must be ``image_size`` square (the decoder's
    positions are fixed to that grid).
12. **Image-wise InfoNCE (Table 4).** The cls tokens of the (masked) query view and the (full) key
    view through the same heads, in-batch negatives (B-way softmax).
13. **Momentum update.** ``momentum_update()`` is *not* called by ``forward``: call it after every
    optimizer step (a cosine schedule towards 1 can be passed as its argument, as MoCo v3 does).
    Buffers (BatchNorm running statistics) are copied from the query side.
14. **Loss symmetrisation.** MoCo v3 swaps the two views and sums; the paper describes one query
    view and one key view, so we compute the loss one way only.
15. **Ablation switches (Table 2).** ``use_shift=False``: plain patchify (per-patch augmentation
    still applies, Table 3 (b)); ``use_mask=False``: no masking and hence no MEM; ``use_mem=False``:
    masking but no decoder loss; ``contrast="image"`` replaces L_PwIN. Table 2 (a)-(f) map to
    (shift, contrast, mem) = (F, image, F), (T, image, F), (F, patch, F), (F, image, T), (T, patch, F),
    (T, patch, T). Sec. 3.1 introduces masking inside SP, so another reading of "no SP" also drops
    masking: the switches are separate so both readings can be run. ``augment=False`` turns the
    per-patch augmentation off (Table 3 (a)/(d)); ``freeze_patch_embed`` is MoCo v3's
    stability trick for ViTs (off by default; the paper does not mention it).
16. **Several processes (torchrun).** "We select negative samples from different patches within the
    same mini-batch": the mini-batch is the global one (the paper: 2048 images on 4 GPUs). Each
    process scores its own queries against the key features of every process's images, gathered
    without gradient (MoCo's ``concat_all_gather``, :func:`gather_keys`); its positives sit at its
    images' offset among them. With equal shares, the mean of the processes' losses (what the loop
    reports) and DDP's mean of their gradients are those of one process with the whole batch, given
    global-batch BatchNorm in the heads (``"sync_bn": true``; per-process BatchNorm statistics are a
    separate difference). In one process nothing changes (the very key tensor, offset 0). Cost: the
    logits grow to (local queries) x (global keys), 4x those of one process's keys on 4 GPUs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .vit import VIT_PRESETS, Block, ViT, ViTConfig, init_vit_weights, sincos_pos_embed_2d, vit_config

__all__ = ["TARGETS", "CONTRASTS", "DIRECTIONS", "PatchAugConfig", "CLICv2Config", "patchify", "unpatchify",
           "augment_patches", "shift_patches", "shifted_patchify", "mask_count", "random_masking", "patchwise_info_nce",
           "imagewise_info_nce", "gather_keys", "patch_entropy", "patch_pixels_target", "patch_frequency_target",
           "reconstruction_target", "target_size", "masked_reconstruction_loss", "MEMDecoder", "mlp_head", "CLICv2"]

TARGETS = ("entropy", "pixels", "frequency")
CONTRASTS = ("patch", "image")
HEAD_NORMS = ("bn", "ln")
REC_REDUCTIONS = ("sum", "mean")
#: the 8 shift directions as unit (dy, dx): content moves down for dy > 0, right for dx > 0
DIRECTIONS: dict[str, tuple[int, int]] = {
    "N": (-1, 0), "S": (1, 0), "E": (0, 1), "W": (0, -1),
    "NE": (-1, 1), "NW": (-1, -1), "SE": (1, 1), "SW": (1, -1),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


# --- randomness with an explicit generator --------------------------------------------------------

def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device (a CPU generator works for CUDA inputs)."""
    return torch.rand(shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=generator, device=_gen_device(generator, device)).to(device)


# --- configuration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatchAugConfig:
    """Per-patch augmentation of shifted patchify (open point 6). Probabilities are per patch;
    jitter factors are drawn uniformly in ``[1 - s, 1 + s]``; ``blur_sigma`` in pixels."""

    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        for name in ("flip_p", "jitter_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, not {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} jitter strength must be in [0, 1), not {getattr(self, name)}")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"blur_sigma must be 0 < low <= high, not {self.blur_sigma}")


@dataclass(frozen=True)
class CLICv2Config:
    """Everything that defines a CLICv2 pretraining model (see the module docstring for the choices).

    ``arch``: a ``VIT_PRESETS`` name; ``encoder_overrides`` replace ViTConfig fields (e.g. a tiny
    ``{"dim": 32, "depth": 2, "heads": 2}`` for tests). ``max_shift``: largest shift as a fraction
    of the patch side. ``target``: MEM target ("entropy", "pixels", "frequency"). ``contrast``:
    "patch" (L_PwIN) or "image" (L_IN, Table 4). ``use_shift`` / ``use_mask`` / ``use_mem``: the
    Table 2 ablations (no masking implies no MEM).
    """

    arch: str = "vit_tiny"
    patch_size: int = 32
    image_size: int = 224
    encoder_overrides: dict = field(default_factory=dict)
    proj_hidden: int = 1024
    proj_dim: int = 256
    head_norm: str = "bn"
    temperature: float = 0.2
    momentum: float = 0.999
    mask_ratio: float = 0.6
    max_shift: float = 0.25
    target: str = "entropy"
    rec_weight: float = 2.0
    rec_reduction: str = "sum"
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    contrast: str = "patch"
    use_shift: bool = True
    use_mask: bool = True
    use_mem: bool = True
    augment: bool = True
    aug: PatchAugConfig = field(default_factory=PatchAugConfig)
    entropy_bins: int = 256
    freeze_patch_embed: bool = False

    def __post_init__(self) -> None:
        if self.arch not in VIT_PRESETS:
            raise ValueError(f"arch must be one of {sorted(VIT_PRESETS)}, not {self.arch!r}")
        for value, allowed, what in ((self.target, TARGETS, "target"), (self.contrast, CONTRASTS, "contrast"),
                                     (self.head_norm, HEAD_NORMS, "head_norm"),
                                     (self.rec_reduction, REC_REDUCTIONS, "rec_reduction")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, not {value!r}")
        self.encoder_config()  # validates sizes and overrides
        if min(self.proj_hidden, self.proj_dim, self.decoder_dim, self.decoder_depth, self.decoder_heads) < 1:
            raise ValueError("head and decoder sizes must be at least 1")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim ({self.decoder_dim}) must be divisible by decoder_heads "
                             f"({self.decoder_heads})")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError("momentum must be in [0, 1]")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError("mask_ratio must be in (0, 1)")
        if not 0.0 <= self.max_shift < 1.0:
            raise ValueError("max_shift must be in [0, 1) (a fraction of the patch side)")
        if self.rec_weight < 0:
            raise ValueError("rec_weight must be non-negative")
        if not 2 <= self.entropy_bins <= 256:
            raise ValueError("entropy_bins must be in [2, 256]")
        if self.num_patches < 2:
            raise ValueError("the patch grid needs at least 2 patches to mask some and keep some")

    def encoder_config(self) -> ViTConfig:
        return vit_config(self.arch, patch_size=self.patch_size, image_size=self.image_size,
                          **self.encoder_overrides)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_masked(self) -> int:
        return mask_count(self.num_patches, self.mask_ratio)

    @property
    def mem_active(self) -> bool:
        return self.use_mask and self.use_mem

    def to_dict(self) -> dict:
        return asdict(self)


# --- shifted patchify ----------------------------------------------------------------------------

def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, G, C, p, p)`` non-overlapping patches in row-major grid order."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c, p, p)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``patchify``: ``(B, G, C, p, p)`` -> ``(B, C, rows*p, cols*p)``."""
    b, g, c, p, _ = patches.shape
    rows, cols = grid
    x = patches.reshape(b, rows, cols, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, rows * p, cols * p)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of ``(..., 3, H, W)`` -> ``(..., H, W)``."""
    return LUMA[0] * x[..., 0, :, :] + LUMA[1] * x[..., 1, :, :] + LUMA[2] * x[..., 2, :, :]


def augment_patches(patches: torch.Tensor, aug: PatchAugConfig, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
    """Independent augmentation of ``(N, 3, p, p)`` patches in [0, 1], vectorised over N.

    hflip -> (brightness, contrast, saturation) jitter -> Gaussian blur, each with its per-patch
    probability; a patch that skips a step passes through unchanged.
    """
    n, _, p, _ = patches.shape
    dev = patches.device
    x = patches

    flip = _rand((n,), generator, dev) < aug.flip_p
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)

    def factor(strength: float, apply: torch.Tensor) -> torch.Tensor:
        f = 1.0 + strength * (2.0 * _rand((n,), generator, dev) - 1.0)
        return torch.where(apply, f, torch.ones_like(f))[:, None, None, None]

    jitter = _rand((n,), generator, dev) < aug.jitter_p
    fb, fc, fs = (factor(s, jitter) for s in (aug.brightness, aug.contrast, aug.saturation))
    x = (x * fb).clamp(0, 1)
    mean_grey = _grey(x).mean(dim=(-2, -1))[:, None, None, None]  # contrast blends with the mean grey
    x = (fc * x + (1 - fc) * mean_grey).clamp(0, 1)
    grey = _grey(x)[:, None]  # saturation blends with the pixel's own grey
    x = (fs * x + (1 - fs) * grey).clamp(0, 1)

    blur = _rand((n,), generator, dev) < aug.blur_p
    lo, hi = aug.blur_sigma
    sigma = lo + (hi - lo) * _rand((n,), generator, dev)
    idx = torch.arange(p, device=dev, dtype=x.dtype)
    # a 1-D Gaussian operator per patch, rows renormalised at the borders: blur = K x K^T
    kernel = torch.exp(-(idx[:, None] - idx[None, :]) ** 2 / (2 * sigma.to(x.dtype)[:, None, None] ** 2))
    kernel = (kernel / kernel.sum(-1, keepdim=True))[:, None]  # (N, 1, p, p)
    blurred = (kernel @ x @ kernel.transpose(-1, -2)).clamp(0, 1)  # rounding can step past 1
    return torch.where(blur[:, None, None, None], blurred, x)


def shift_patches(patches: torch.Tensor, shifts: torch.Tensor, max_offset: int | None = None) -> torch.Tensor:
    """Move each patch's content by its ``(dy, dx)`` in ``shifts`` (N, 2), zero fill:
    ``out[y, x] = in[y - dy, x - dx]`` where that is inside the patch, else 0. ``max_offset`` (a bound
    on ``|shifts|``) saves a device sync when known."""
    n, c, p, _ = patches.shape
    if n == 0:
        return patches
    pad = int(shifts.abs().max().item()) if max_offset is None else int(max_offset)
    pad = min(pad, p)  # anything shifted by p or more is all zeros anyway
    shifts = shifts.clamp(-pad, pad)
    if pad == 0:
        return patches
    padded = F.pad(patches, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (N, p+2s, p+2s, C)
    ar = torch.arange(p, device=patches.device)
    rows = pad - shifts[:, 0:1] + ar  # (N, p): source row of each output row, in padded coordinates
    cols = pad - shifts[:, 1:2] + ar
    out = padded[torch.arange(n, device=patches.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def shifted_patchify(images: torch.Tensor, patch_size: int, max_shift: float,
                     generator: torch.Generator | None = None, augment: bool = True,
                     aug: PatchAugConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One shifted-patchify view of ``images`` (B, 3, H, W) in [0, 1].

    Returns ``(patches (B, G, 3, p, p), shifts (B, G, 2))``. Patch g is always cut from grid cell g
    (row-major), so two calls pair up position by position. Each patch is augmented on its own
    (when ``augment``), then shifted by ``(dy, dx) = s * direction``: a direction from
    ``DIRECTIONS`` and an integer ``s`` uniform in [1, max(1, floor(max_shift * p))].
    ``max_shift = 0`` means no shift (all shift vectors zero).
    """
    patches = patchify(images, patch_size)
    b, g = patches.shape[:2]
    flat = patches.reshape(b * g, *patches.shape[2:])
    if augment:
        flat = augment_patches(flat, aug or PatchAugConfig(), generator)
    dev = images.device
    if max_shift > 0:
        largest = max(1, int(math.floor(max_shift * patch_size)))
        units = torch.tensor(list(DIRECTIONS.values()), device=dev)
        direction = units[_randint(0, len(DIRECTIONS), (b * g,), generator, dev)]
        magnitude = _randint(1, largest + 1, (b * g, 1), generator, dev)
        shifts = direction * magnitude
        flat = shift_patches(flat, shifts, largest)
    else:
        shifts = torch.zeros(b * g, 2, dtype=torch.long, device=dev)
    return flat.reshape(patches.shape), shifts.reshape(b, g, 2)


# --- masking -------------------------------------------------------------------------------------

def mask_count(num_patches: int, mask_ratio: float) -> int:
    """``round(mask_ratio * G)`` with halves rounded up, clipped to [1, G-1]."""
    return min(max(int(math.floor(mask_ratio * num_patches + 0.5)), 1), num_patches - 1)


def random_masking(batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A random mask per image: ``keep`` (B, G-M) sorted visible indices and ``mask`` (B, G) bool,
    True where masked (M = ``mask_count``)."""
    device = torch.device(device)
    n_keep = num_patches - mask_count(num_patches, mask_ratio)
    order = _rand((batch, num_patches), generator, device).argsort(dim=1)
    keep = order[:, :n_keep].sort(dim=1).values
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, keep, False)
    return keep, mask


# --- contrastive losses --------------------------------------------------------------------------

def patchwise_info_nce(q: torch.Tensor, k: torch.Tensor, q_index: torch.Tensor, temperature: float,
                       offset: int = 0) -> torch.Tensor:
    """L_PwIN (Eq. 2-3, standard-InfoNCE reading). ``q`` (B, G', D): query features of the visible
    patches, ``q_index`` (B, G') their grid indices; ``k`` (B_all, G, D): key features of all patches
    of the mini-batch, of which this process's images are ``offset:offset + B`` (with several
    processes ``k`` is the global batch's keys, gathered; in one process ``B_all = B``, ``offset = 0``).

    Query (i, j) is scored against all B_all*G keys; the target is key (offset + i, q_index[i, j]);
    every other key (other patches of image i and all patches of the other images) is a negative.
    Mean over all B*G' queries. Features are L2-normalised here.
    """
    b, gq, d = q.shape
    g = k.shape[1]
    qn = F.normalize(q.float(), dim=-1).reshape(b * gq, d)
    kn = F.normalize(k.float(), dim=-1).reshape(-1, d)
    logits = qn @ kn.t() / temperature
    positive_image = offset + torch.arange(b, device=q.device)
    target = (positive_image[:, None] * g + q_index).reshape(-1)
    return F.cross_entropy(logits, target)


def imagewise_info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float, offset: int = 0) -> torch.Tensor:
    """L_IN (Eq. 1) with in-batch negatives: ``q`` (B, D), ``k`` (B_all, D) (the global batch's keys,
    this process's at ``offset:offset + B``); image i's positive is key ``offset + i``."""
    logits = F.normalize(q.float(), dim=-1) @ F.normalize(k.float(), dim=-1).t() / temperature
    return F.cross_entropy(logits, offset + torch.arange(q.shape[0], device=q.device))


def gather_keys(k: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The key features of every process's images, in rank order (no gradient: the keys have none),
    and the offset of this process's images among them; ``(k, 0)`` in a single process (open point 16)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_world_size() == 1:
        return k, 0
    from ..training.distributed import all_gather_rows  # only under torchrun

    return all_gather_rows(k)


# --- masked entropy modelling: targets and loss --------------------------------------------------

def patch_entropy(patches: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Grey-histogram Shannon entropy of ``(..., 3, p, p)`` patches in [0, 1], in bits / log2(bins),
    so in [0, 1]. Luma (BT.601) is quantised to 0..255 by rounding; ``bins`` < 256 merges levels.
    Exact counts by ``scatter_add`` over all patches at once."""
    lead = patches.shape[:-3]
    levels = (_grey(patches.float()) * 255).round().clamp(0, 255).long().flatten(-2).reshape(-1, patches.shape[-1] ** 2)
    if bins != 256:
        levels = levels * bins // 256
    counts = torch.zeros(levels.shape[0], bins, device=patches.device)
    counts.scatter_add_(1, levels, torch.ones_like(levels, dtype=counts.dtype))
    prob = counts / levels.shape[1]
    bits = -torch.special.xlogy(prob, prob).sum(-1) / math.log(2)
    return (bits / math.log2(bins)).reshape(lead)


def _standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / (var + eps).sqrt()


def patch_pixels_target(patches: torch.Tensor) -> torch.Tensor:
    """``(..., 3, p, p)`` -> ``(..., 3*p*p)`` pixels normalised per patch (MAE's norm_pix_loss)."""
    return _standardise(patches.float().flatten(-3))


def patch_frequency_target(patches: torch.Tensor) -> torch.Tensor:
    """``(..., 3, p, p)`` -> ``(..., p*(p//2+1))``: log(1 + |rfft2|) of the grey patch, normalised per patch."""
    amplitude = torch.fft.rfft2(_grey(patches.float()), norm="ortho").abs()
    return _standardise(torch.log1p(amplitude).flatten(-2))


def target_size(target: str, patch_size: int) -> int:
    return {"entropy": 1, "pixels": 3 * patch_size ** 2, "frequency": patch_size * (patch_size // 2 + 1)}[target]


def reconstruction_target(patches: torch.Tensor, target: str, bins: int = 256) -> torch.Tensor:
    """The MEM target of every patch: ``(B, G, 3, p, p)`` -> ``(B, G, T)``."""
    if target == "entropy":
        return patch_entropy(patches, bins).unsqueeze(-1)
    if target == "pixels":
        return patch_pixels_target(patches)
    if target == "frequency":
        return patch_frequency_target(patches)
    raise ValueError(f"target must be one of {TARGETS}, not {target!r}")


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               reduction: str = "sum") -> torch.Tensor:
    """L_rec over masked patches only (open point 8). Each patch's squared error is averaged over its
    T target values; then ``"sum"`` (Eq. 11): summed over an image's masked patches, averaged over
    images; ``"mean"``: averaged over all masked patches of the batch.
    ``pred``/``target`` (B, G, T), ``mask`` (B, G) bool True = masked."""
    per_patch = (pred.float() - target.float()).pow(2).mean(-1)
    weights = mask.to(per_patch.dtype)
    if reduction == "sum":
        return (per_patch * weights).sum() / per_patch.shape[0]
    if reduction == "mean":
        return (per_patch * weights).sum() / weights.sum().clamp(min=1.0)
    raise ValueError(f"reduction must be one of {REC_REDUCTIONS}, not {reduction!r}")


class MEMDecoder(nn.Module):
    """MAE-style decoder (open point 9): encoder tokens of the visible patches -> a prediction for
    every grid position, ``(B, G, out_dim)``; only the masked ones enter the loss."""

    def __init__(self, encoder_dim: int, num_patches: int, out_dim: int, dim: int = 128, depth: int = 2,
                 heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        side = math.isqrt(num_patches)
        self.num_patches = num_patches
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        with torch.no_grad():
            if dim % 4 == 0 and side * side == num_patches:
                self.pos_embed[0, 1:] = sincos_pos_embed_2d(dim, side, side)
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_vit_weights)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, 1 + G', encoder_dim) from the query encoder (cls first), ``keep`` (B, G')."""
        x = self.embed(tokens)
        b, dim = x.shape[0], x.shape[-1]
        full = self.mask_token.expand(b, self.num_patches, dim).to(x.dtype)
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dim), x[:, 1:])  # visible tokens back in place
        x = torch.cat([x[:, :1], full], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))[:, 1:]


# --- the model -----------------------------------------------------------------------------------

def mlp_head(in_dim: int, hidden: int, out_dim: int, norm: str = "bn") -> nn.Sequential:
    """MoCo v3 style ``Linear-Norm-ReLU-Linear`` on (N, D) inputs."""
    norm_layer = nn.BatchNorm1d(hidden) if norm == "bn" else nn.LayerNorm(hidden)
    return nn.Sequential(nn.Linear(in_dim, hidden), norm_layer, nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class CLICv2(nn.Module):
    """CLICv2 pretraining model. ``encoder`` is the query ViT (the one probing uses).

    ``forward(images, generator)`` returns ``(loss, parts)``. Call ``momentum_update()`` after each
    optimizer step.
    """

    def __init__(self, config: CLICv2Config | None = None):
        super().__init__()
        self.config = c = config or CLICv2Config()
        self.encoder = ViT(c.encoder_config())
        if c.freeze_patch_embed:
            self.encoder.patch_embed.requires_grad_(False)
        dim = self.encoder.num_features
        self.projector = mlp_head(dim, c.proj_hidden, c.proj_dim, c.head_norm)
        self.predictor = mlp_head(c.proj_dim, c.proj_hidden, c.proj_dim, c.head_norm)
        # key side: momentum copies, never trained by gradients
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.decoder = (MEMDecoder(dim, c.num_patches, target_size(c.target, c.patch_size), c.decoder_dim,
                                   c.decoder_depth, c.decoder_heads) if c.mem_active else None)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.key_encoder), (self.projector, self.key_projector)]

    @torch.no_grad()
    def momentum_update(self, momentum: float | None = None) -> None:
        """``k = m * k + (1 - m) * q`` for the key encoder and key projector; buffers are copied."""
        m = self.config.momentum if momentum is None else momentum
        for query, key in self._pairs():
            for pq, pk in zip(query.parameters(), key.parameters()):
                pk.mul_(m).add_(pq.detach() * (1.0 - m))
            for bq, bk in zip(query.buffers(), key.buffers()):
                bk.copy_(bq)

    def normalise(self, patches: torch.Tensor) -> torch.Tensor:
        """ImageNet mean/std on ``(B, G, 3, p, p)`` patches in [0, 1]."""
        return (patches - self.pixel_mean) / self.pixel_std

    def make_view(self, images: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """One SP view in [0, 1]: ``(patches (B, G, 3, p, p), shifts (B, G, 2))``."""
        c = self.config
        return shifted_patchify(images, c.patch_size, c.max_shift if c.use_shift else 0.0, generator,
                                augment=c.augment, aug=c.aug)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_on_views(*self.sample_inputs(images, generator))

    def sample_inputs(self, images: torch.Tensor, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The random part of a step: ``(view_q, view_k, keep, mask)``, two independent SP views
        (B, G, 3, p, p) in [0, 1] and the query view's mask (``None`` without masking)."""
        c = self.config
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (c.image_size, c.image_size):
            raise ValueError(f"images must be (B, 3, {c.image_size}, {c.image_size}) in [0, 1], "
                             f"got {tuple(images.shape)}")
        view_q, _ = self.make_view(images, generator)
        view_k, _ = self.make_view(images, generator)  # independent augmentations and shifts
        keep = mask = None
        if c.use_mask:
            keep, mask = random_masking(images.shape[0], c.num_patches, c.mask_ratio, generator, images.device)
        return view_q, view_k, keep, mask

    def loss_on_views(self, view_q: torch.Tensor, view_k: torch.Tensor, keep: torch.Tensor | None,
                      mask: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, parts)`` of the views and mask of :meth:`sample_inputs`. Under torchrun the key
        features of all processes are gathered (:func:`gather_keys`), so the negatives are those of
        the global batch, as in one process."""
        c = self.config
        b, g = view_q.shape[0], c.num_patches
        q_tokens = self.encoder.forward_tokens_from_patches(self.normalise(view_q), keep)
        with torch.no_grad():
            k_tokens = self.key_encoder.forward_tokens_from_patches(self.normalise(view_k))

        if c.contrast == "patch":
            visible = q_tokens[:, 1:]
            qf = self.predictor(self.projector(visible.flatten(0, 1))).view(b, visible.shape[1], -1)
            with torch.no_grad():
                kf = self.key_projector(k_tokens[:, 1:].flatten(0, 1)).view(b, g, -1)
            q_index = keep if keep is not None else torch.arange(g, device=view_q.device).expand(b, g)
            kf_all, offset = gather_keys(kf)
            l_con = patchwise_info_nce(qf, kf_all, q_index, c.temperature, offset)
        else:
            qf = self.predictor(self.projector(q_tokens[:, 0]))
            with torch.no_grad():
                kf = self.key_projector(k_tokens[:, 0])
            kf_all, offset = gather_keys(kf)
            l_con = imagewise_info_nce(qf, kf_all, c.temperature, offset)

        loss = l_con
        parts = {"contrastive": float(l_con.detach())}
        if self.decoder is not None and keep is not None:
            pred = self.decoder(q_tokens, keep)
            with torch.no_grad():  # the target of the patch the query encoder would have seen
                target = reconstruction_target(view_q, c.target, c.entropy_bins)
            l_rec = masked_reconstruction_loss(pred, target, mask, c.rec_reduction)
            loss = loss + c.rec_weight * l_rec
            parts["reconstruction"] = float(l_rec.detach())
        parts["loss"] = float(loss.detach())
        return loss, parts
