"""Classic image complexity measures: fixed, documented functions of the pixels.

A *classic measure* has no learned parameters: it computes a statistic of the image that the
literature has found to correlate with how visually complex people judge it (compressed size,
amount of edges, grey-level entropy, gradient energy, colourfulness, colour diversity). Each one
is registered as a model (``kind="classic"``), so it is scored and evaluated by exactly the same
code path as a learned model, and :func:`classic_feature_vector` exposes all of them, plus a few
cheap extras, as hand-crafted features for learned regressors.

Conventions shared by every measure:

* **Working scale.** The model's transform (:class:`ClassicTransform`) shrinks every image so its
  longest side is at most 512 px (never enlarging it). Compression ratios, edge densities and
  gradients all depend on resolution, so a fixed working scale is what makes scores of a 6000 px
  photo and a 600 px web image comparable. The pure functions below take the array as given.
* **Luma** is ITU-R BT.601: ``Y = 0.299 R + 0.587 G + 0.114 B`` on 0..255 values, kept as float
  (rounded to the nearest of the 256 grey levels only where a histogram needs it).
* **Gradients** are scipy's 3x3 Sobel operator (kernel ``[1, 2, 1]`` x ``[-1, 0, 1]``, *not*
  divided by 8, as in ITU-T P.910) on 0..255 luma with mirrored ("reflect") borders; the
  gradient magnitude is ``sqrt(Gx^2 + Gy^2)``.
* **Pyramids** halve an image by averaging 2x2 blocks (an odd last row/column is dropped); an image
  whose shorter side is below 2 px is not halved further (its coarser levels repeat it).
* **Orientation.** Every measure is oriented so that higher = more complex; a flat (constant)
  image scores the minimum, 0, at any size (colourfulness: any flat *grey* image), and below
  uniform noise of any size from 8 px up (tested).

Every measure takes an ``np.uint8`` array of shape ``(H, W, 3)`` and returns a Python float.
"""

from __future__ import annotations

import io
import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .base import ComplexityModel, list_collate

__all__ = [
    "DEFAULT_MAX_SIDE",
    "ClassicTransform",
    "ClassicMeasure",
    "build_measure",
    "MEASURES",
    "canny_edges",
    "FEATURE_NAMES",
    "classic_features",
    "classic_feature_vector",
    "compression_ratio_jpeg",
    "compression_ratio_png",
    "edge_density",
    "entropy",
    "spatial_information",
    "colorfulness",
    "multiscale_gradient",
    "unique_colors",
]

#: Longest image side, in pixels, at which classic measures are computed.
DEFAULT_MAX_SIDE = 512

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601

JPEG_QUALITY = 75
JPEG_SUBSAMPLING = "4:2:0"
PNG_COMPRESS_LEVEL = 1

CANNY_SIGMA = 1.0
# Hysteresis thresholds on the Sobel magnitude of the smoothed 0..255 luma: 10% / 20% of the grey
# range, which is scikit-image's default for 8-bit images. The "strong" pair keeps only
# high-contrast edges.
CANNY_THRESHOLDS = (25.5, 51.0)
CANNY_STRONG_THRESHOLDS = (51.0, 102.0)

GRADIENT_SCALES = 4
UNIQUE_COLOR_SCALES = 3
UNIQUE_COLOR_BITS = 5  # per channel, so at most 2**15 = 32768 distinct colours

_TAN_22_5 = math.tan(math.radians(22.5))
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class ClassicTransform:
    """RGB PIL image -> ``np.uint8`` array ``(H, W, 3)`` whose longest side is at most ``max_side``.

    Larger images are shrunk with Pillow's BOX filter (exact area averaging). Unlike LANCZOS it has
    no negative lobes, so it adds no ringing halos around edges, which would otherwise inflate the
    edge, gradient and compression measures; it is also the fastest area-correct filter. Smaller
    images are left untouched: enlarging would only invent smooth pixels.
    """

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE):
        if max_side < 1:
            raise ValueError(f"max_side must be at least 1, got {max_side}")
        self.max_side = int(max_side)

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        longest = max(width, height)
        if longest > self.max_side:
            scale = self.max_side / longest
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(size, Image.Resampling.BOX)
        return np.asarray(image, dtype=np.uint8)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_side={self.max_side})"


# --- shared intermediates -------------------------------------------------------------------------


def _luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma as float32 on the 0..255 scale."""
    return rgb @ LUMA_WEIGHTS


def _sobel(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal and vertical Sobel responses (as ``scipy.ndimage.sobel``, reflected borders) and magnitude.

    Written as array slices: about 5x faster than two ``ndimage.sobel`` calls plus ``np.hypot``.
    """
    padded = np.pad(luma, 1, mode="symmetric")  # numpy's "symmetric" is scipy's "reflect"
    column_difference = padded[:, 2:] - padded[:, :-2]
    gx = column_difference[:-2] + 2 * column_difference[1:-1] + column_difference[2:]
    row_smoothed = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
    gy = row_smoothed[2:] - row_smoothed[:-2]
    return gx, gy, np.sqrt(gx * gx + gy * gy)


def _halve(image: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks, dropping an odd last row/column."""
    height, width = image.shape[:2]
    even = image[: height - height % 2, : width - width % 2]
    return 0.25 * (even[0::2, 0::2] + even[1::2, 0::2] + even[0::2, 1::2] + even[1::2, 1::2])


def _histogram_entropy(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution given by ``counts``."""
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def _grey_level_entropy(luma: np.ndarray) -> float:
    grey = np.clip(np.rint(luma), 0, 255).astype(np.intp)
    return _histogram_entropy(np.bincount(grey.ravel(), minlength=256))


def _encoded_size(rgb: np.ndarray, save_options: dict) -> int:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, **save_options)
    return buffer.tell()


def _encoded_ratio(rgb: np.ndarray, **save_options) -> float:
    """(encoded bytes - encoded bytes of the flat image of the same shape and mean colour) / raw bytes.

    The flat image's bytes are what the encoder spends on that shape whatever the content
    (headers, tables, per-row or per-block codes); see :func:`compression_ratio_jpeg` for why they
    are subtracted. The flat reference takes the image's own rounded mean colour because flat
    images of different colours encode to different sizes (a flat black 512 px PNG is 900 bytes
    smaller than a grey one), so every flat image scores exactly 0. Clipped at 0 for a near-flat
    image a few bytes smaller than its reference.
    """
    mean_colour = np.rint(rgb.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    flat = np.broadcast_to(mean_colour, rgb.shape)
    content_bytes = _encoded_size(rgb, save_options) - _encoded_size(np.ascontiguousarray(flat), save_options)
    return max(0, content_bytes) / rgb.size


def _canny_suppressed(luma: np.ndarray) -> np.ndarray:
    """Canny up to non-maximum suppression: gradient magnitude on ridge pixels, 0 elsewhere.

    Gaussian smoothing (``CANNY_SIGMA``, reflected borders), Sobel gradients, then each pixel is
    kept only if its magnitude is a maximum along the gradient direction, quantised to 0, 45, 90
    or 135 degrees. Of two tied pixels only the later one (right/lower) is kept, so a symmetric
    step edge gives a one-pixel line. The one-pixel image border is never an edge (its outer
    neighbours are mirrored copies, not image content).
    """
    smoothed = ndimage.gaussian_filter(luma, CANNY_SIGMA, mode="reflect")
    gx, gy, magnitude = _sobel(smoothed)
    height, width = magnitude.shape
    padded = np.pad(magnitude, 1)

    def neighbour(d_row: int, d_col: int) -> np.ndarray:
        return padded[1 + d_row : 1 + d_row + height, 1 + d_col : 1 + d_col + width]

    abs_gx, abs_gy = np.abs(gx), np.abs(gy)
    horizontal = abs_gy <= _TAN_22_5 * abs_gx  # gradient along the row: compare left/right
    vertical = abs_gx <= _TAN_22_5 * abs_gy
    diagonal = ~(horizontal | vertical)
    down_right = gx * gy > 0  # rows grow downwards, so the gradient points down-right (or up-left)
    is_ridge = (
        (horizontal & (magnitude >= neighbour(0, -1)) & (magnitude > neighbour(0, 1)))
        | (vertical & (magnitude >= neighbour(-1, 0)) & (magnitude > neighbour(1, 0)))
        | (diagonal & down_right & (magnitude >= neighbour(-1, -1)) & (magnitude > neighbour(1, 1)))
        | (diagonal & ~down_right & (magnitude >= neighbour(-1, 1)) & (magnitude > neighbour(1, -1)))
    )
    is_ridge[[0, -1], :] = False
    is_ridge[:, [0, -1]] = False
    return magnitude * is_ridge


def _hysteresis(suppressed: np.ndarray, low: float, high: float) -> np.ndarray:
    """Edge mask: 8-connected ridge segments above ``low`` that reach ``high`` somewhere."""
    labels, count = ndimage.label(suppressed >= low, structure=_EIGHT_CONNECTED)
    reaches_high = np.bincount(labels[suppressed >= high], minlength=count + 1) > 0
    reaches_high[0] = False  # label 0 is the background
    return reaches_high[labels]


def canny_edges(luma: np.ndarray, low: float = CANNY_THRESHOLDS[0], high: float = CANNY_THRESHOLDS[1]) -> np.ndarray:
    """Boolean Canny edge map of a 2-D luma image on the 0..255 scale (definition in :func:`edge_density`)."""
    return _hysteresis(_canny_suppressed(np.asarray(luma, dtype=np.float32)), low, high)


def _gradient_pyramid_means(luma: np.ndarray, magnitude: np.ndarray) -> list[float]:
    """Mean Sobel magnitude per working-scale pixel at ``GRADIENT_SCALES`` pyramid levels.

    ``magnitude`` is level 0's, reused. Level ``k``'s mean is divided by ``2**k`` (its pixels are
    ``2**k`` working-scale pixels wide), so a step edge contributes the same at every level.
    """
    means = [float(magnitude.mean())]
    pixel_width = 1
    for _ in range(GRADIENT_SCALES - 1):
        if min(luma.shape) >= 2:
            luma, pixel_width = _halve(luma), 2 * pixel_width
        means.append(float(_sobel(luma)[2].mean()) / pixel_width)
    return means


def _block_sums(image: np.ndarray) -> np.ndarray:
    """uint16 sums of 2x2 blocks, dropping an odd last row/column."""
    height, width = image.shape[:2]
    even = image[: height - height % 2, : width - width % 2].astype(np.uint16)
    return even[0::2, 0::2] + even[1::2, 0::2] + even[0::2, 1::2] + even[1::2, 1::2]


def _unique_color_fractions(rgb: np.ndarray) -> list[float]:
    """Per scale: (distinct 5-bit colours - 1) / (most that could be distinct - 1).

    Scales are kept as integer sums of ``4**k`` pixels, so ``floor(mean / 8)`` is the exact shift
    ``sum >> (3 + 2k)``; integer sums are faster than float averages and free of rounding.
    """
    levels = 1 << UNIQUE_COLOR_BITS
    sums, shift = rgb, 8 - UNIQUE_COLOR_BITS
    fractions = []
    for scale in range(UNIQUE_COLOR_SCALES):
        if scale and min(sums.shape[:2]) >= 2:
            sums, shift = _block_sums(sums), shift + 2
        red, green, blue = np.moveaxis((sums >> shift).astype(np.uint16), -1, 0)  # 15-bit codes fit uint16
        codes = (red << 2 * UNIQUE_COLOR_BITS) | (green << UNIQUE_COLOR_BITS) | blue
        distinct = np.count_nonzero(np.bincount(codes.ravel(), minlength=levels**3))
        most_possible = min(codes.size, levels**3)
        fractions.append(float(distinct - 1) / (most_possible - 1) if most_possible > 1 else 0.0)
    return fractions


# --- the measures -----------------------------------------------------------------------------------


def compression_ratio_jpeg(rgb: np.ndarray) -> float:
    """JPEG-encoded size beyond a flat image's / raw size.

    ``(len(JPEG bytes) - len(JPEG bytes of the flat image)) / (H * W * 3)``, encoded by Pillow
    (libjpeg) at quality 75 with 4:2:0 chroma subsampling, baseline, no Huffman optimisation; the
    flat image has the same shape and the image's rounded mean colour. The flat image's bytes
    (about 630 of headers and tables, plus a few bits per 8x8 block) are subtracted because they
    are paid whatever the content: included, they made every image under ~32 px score above
    noise at 48 px and up (a flat 16x16 image 0.82, 512 px noise 0.20). At the 512 px working
    scale the subtraction lowers values by about 0.006, a constant per shape (SRCC with the
    uncorrected ratio 0.9998 on 59 photos). A flat image scores 0.

    References: Machado et al., "Computerized measures of visual complexity", Acta Psychologica
    2015; Corchs et al., "Predicting complexity perception of real world images", PLoS ONE 2016.
    """
    return _encoded_ratio(rgb, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)


def compression_ratio_png(rgb: np.ndarray) -> float:
    """Lossless PNG-encoded size beyond a flat image's / raw size.

    ``(len(PNG bytes) - len(PNG bytes of the flat image)) / (H * W * 3)``, encoded by Pillow with
    its per-row adaptive filter choice and zlib compression level 1; the flat image has the same
    shape and the image's rounded mean colour. Level 1 is chosen for speed: on photographs level 6
    takes about 3x longer for sizes only ~8% smaller, a near-constant factor that does not change
    rankings. The flat image's bytes (about 60 of chunks and zlib framing, a filter byte per row,
    deflate's codes for the constant rows) are subtracted for the reason given in
    :func:`compression_ratio_jpeg`: they made a flat 8x8 image score 0.41, close to the 0.49 of
    1024 px grey noise shrunk to the working scale. At the 512 px working scale values drop by about 0.006 (SRCC 0.9999 with the uncorrected
    ratio on 59 photos); noise scores about 1 at any size, a flat image 0.

    References: Machado et al., Acta Psychologica 2015; Corchs et al., PLoS ONE 2016.
    """
    return _encoded_ratio(rgb, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def edge_density(rgb: np.ndarray) -> float:
    """Fraction of pixels that are Canny edges on the luma image.

    Canny (1986) with Gaussian sigma 1.0, Sobel gradients, non-maximum suppression along the
    gradient direction quantised to 45 degrees, and hysteresis with fixed thresholds 25.5 / 51 on
    the Sobel magnitude of the 0..255 luma (10% / 20% of the grey range, scikit-image's 8-bit
    default); 8-connected segments above the low threshold are kept when they reach the high one.
    Fixed (not per-image relative) thresholds keep faint texture from counting as much as strong
    structure, and give a flat image 0. The outermost pixel ring is never an edge.

    Reference: Canny, "A computational approach to edge detection", IEEE TPAMI 1986; as an ICA
    measure: Corchs et al., PLoS ONE 2016; Machado et al., Acta Psychologica 2015.
    """
    return float(canny_edges(_luma(rgb)).mean())


def entropy(rgb: np.ndarray) -> float:
    """Shannon entropy, in bits (0..8), of the 256-bin grey-level histogram.

    ``-sum(p_i * log2 p_i)`` over the non-empty bins, grey level = BT.601 luma rounded to the
    nearest integer.

    Reference: Shannon, "A mathematical theory of communication", 1948; as an image complexity
    measure: Rigau, Feixas & Sbert, "An information-theoretic framework for image complexity",
    Computational Aesthetics 2005.
    """
    return _grey_level_entropy(_luma(rgb))


def spatial_information(rgb: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of the luma (SI_mean).

    ``mean(sqrt(Gx^2 + Gy^2))`` with the unnormalised 3x3 Sobel on 0..255 luma, reflected borders.
    ITU-T P.910 defines SI as the *standard deviation* of the same map; it is the
    ``spatial_information_std`` feature of :func:`classic_features`.

    Reference: Yu & Winkler, "Image complexity and spatial information", QoMEX 2013.
    """
    return float(_sobel(_luma(rgb))[2].mean())


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk colourfulness ``sigma_rgyb + 0.3 * mu_rgyb``.

    With ``rg = R - G`` and ``yb = (R + G) / 2 - B`` on 0..255 values:
    ``sigma_rgyb = sqrt(std(rg)^2 + std(yb)^2)`` (population std) and
    ``mu_rgyb = sqrt(mean(rg)^2 + mean(yb)^2)``. Any grey image scores exactly 0.

    Reference: Hasler & Suesstrunk, "Measuring colourfulness in natural images", SPIE 5007, 2003.
    """
    channels = rgb.astype(np.float32)
    red, green, blue = channels[..., 0], channels[..., 1], channels[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    sigma = math.hypot(float(rg.std()), float(yb.std()))
    mu = math.hypot(float(rg.mean()), float(yb.mean()))
    return sigma + 0.3 * mu


def multiscale_gradient(rgb: np.ndarray) -> float:
    """Mean gradient magnitude averaged over a 4-level pyramid.

    The luma is halved three times by 2x2 block averaging (levels k = 0..3, scales 1 .. 1/8). At
    level k the mean unnormalised Sobel magnitude is divided by ``2**k``, giving grey levels per
    working-scale pixel, so the four terms share one unit and a step edge contributes equally to
    each; the measure is their mean. Structure that persists across scales counts up to four
    times, pixel-level texture and noise (gone after a few halvings) about once.

    Reference: pyica's multi-scale extension of SI_mean (Yu & Winkler, "Image complexity and
    spatial information", QoMEX 2013).
    """
    luma = _luma(rgb)
    return float(np.mean(_gradient_pyramid_means(luma, _sobel(luma)[2])))


def unique_colors(rgb: np.ndarray) -> float:
    """Multi-scale fraction of distinct colours, 0..1.

    At 3 scales (1, 1/2, 1/4 by 2x2 block averaging of RGB), each channel is quantised to 5 bits
    (``floor(v / 8)``) and ``(n_distinct - 1) / (min(n_pixels, 32768) - 1)`` is taken: 0 for one
    colour, 1 when every pixel (or every one of the 2**15 colours) is different; a 1-pixel scale
    counts 0. The measure is the mean over the scales.

    Reference: colour counts among the colour features of Corchs et al., PLoS ONE 2016; the
    multi-scale, normalised form is pyica's.
    """
    return float(np.mean(_unique_color_fractions(rgb)))


#: Every measure by its registered name, in registration order.
MEASURES: dict[str, Callable[[np.ndarray], float]] = {
    fn.__name__: fn
    for fn in (
        compression_ratio_jpeg,
        compression_ratio_png,
        edge_density,
        entropy,
        spatial_information,
        colorfulness,
        multiscale_gradient,
        unique_colors,
    )
}

#: Names of :func:`classic_features`, in the order of :func:`classic_feature_vector`.
FEATURE_NAMES: tuple[str, ...] = (
    *MEASURES,
    "edge_density_strong",
    "spatial_information_std",
    "gradient_entropy",
    "rms_contrast",
    *(f"gradient_scale{s}" for s in range(GRADIENT_SCALES)),
    *(f"unique_colors_scale{s}" for s in range(UNIQUE_COLOR_SCALES)),
)


def classic_features(rgb: np.ndarray) -> dict[str, float]:
    """All measures plus cheap extras, sharing luma, gradients and pyramids between them.

    Each measure's value equals its function's. The extras:

    * ``edge_density_strong``: edge density with hysteresis thresholds 51 / 102 (strong edges only);
    * ``spatial_information_std``: ITU-T P.910 SI, the std of the Sobel magnitude map;
    * ``gradient_entropy``: entropy (bits) of the Sobel magnitudes binned by 8 (one grey level per
      pixel of slope) into 256 bins, the last one open-ended;
    * ``rms_contrast``: std of the 0..255 luma;
    * ``gradient_scale{0..3}``: the per-level terms behind ``multiscale_gradient`` (level 0 is SI);
    * ``unique_colors_scale{0..2}``: the per-scale fractions behind ``unique_colors``.
    """
    luma = _luma(rgb)
    magnitude = _sobel(luma)[2]
    suppressed = _canny_suppressed(luma)
    gradient_means = _gradient_pyramid_means(luma, magnitude)
    color_fractions = _unique_color_fractions(rgb)
    gradient_bins = np.minimum(magnitude * 0.125, 255).astype(np.intp)
    features = {
        "compression_ratio_jpeg": compression_ratio_jpeg(rgb),
        "compression_ratio_png": compression_ratio_png(rgb),
        "edge_density": float(_hysteresis(suppressed, *CANNY_THRESHOLDS).mean()),
        "entropy": _grey_level_entropy(luma),
        "spatial_information": gradient_means[0],
        "colorfulness": colorfulness(rgb),
        "multiscale_gradient": float(np.mean(gradient_means)),
        "unique_colors": float(np.mean(color_fractions)),
        "edge_density_strong": float(_hysteresis(suppressed, *CANNY_STRONG_THRESHOLDS).mean()),
        "spatial_information_std": float(magnitude.std()),
        "gradient_entropy": _histogram_entropy(np.bincount(gradient_bins.ravel(), minlength=256)),
        "rms_contrast": float(luma.std()),
    }
    features.update({f"gradient_scale{s}": value for s, value in enumerate(gradient_means)})
    features.update({f"unique_colors_scale{s}": value for s, value in enumerate(color_fractions)})
    return {name: features[name] for name in FEATURE_NAMES}


def classic_feature_vector(rgb: np.ndarray) -> np.ndarray:
    """:func:`classic_features` as a float32 vector in :data:`FEATURE_NAMES` order."""
    return np.fromiter(classic_features(rgb).values(), dtype=np.float32, count=len(FEATURE_NAMES))


# --- the model ------------------------------------------------------------------------------------


class ClassicMeasure(ComplexityModel):
    """A classic measure as a :class:`ComplexityModel`: batches are lists of uint8 RGB arrays."""

    def __init__(self, measure: Callable[[np.ndarray], float], max_side: int = DEFAULT_MAX_SIDE):
        super().__init__(ClassicTransform(max_side), collate=list_collate)
        self.measure = measure

    def forward(self, batch: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.tensor([self.measure(rgb) for rgb in batch], dtype=torch.float32)

    def extra_repr(self) -> str:
        return f"measure={self.measure.__name__}, transform={self.transform!r}"


def build_measure(name: str, max_side: int = DEFAULT_MAX_SIDE) -> ClassicMeasure:
    """The classic measure ``name`` (longest side <= max_side px); registered in :mod:`pyica.models.catalog`."""
    return ClassicMeasure(MEASURES[name], max_side=max_side)
