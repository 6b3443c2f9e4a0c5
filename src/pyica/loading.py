"""Image loading that never surprises.

Every model in pyica sees images through :func:`load_image`, so the same file gives the same pixels
whether it is scored from the CLI, the Python API or a training loop. The rules:

* **Orientation**: the EXIF orientation tag is applied (phone photos come out upright).
* **Frames**: animated or multi-page files (GIF, TIFF, WebP, MPO) use their first frame.
* **Decompression bombs**: the header's width x height is checked against a pixel budget
  (``max_pixels``, default :data:`DEFAULT_MAX_PIXELS`) *before* any pixel is decoded.
* **Colour modes** are converted to 8-bit RGB:

  - ``RGB`` is kept; ``L``, ``1``, ``P`` (opaque), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` use Pillow's
    conversion. An embedded ICC profile (e.g. Adobe RGB, CMYK print profiles) is converted to sRGB
    first when Pillow's colour management is available.
  - **Alpha** (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, and ``P``/``L``/``RGB`` with a ``transparency``
    entry) is composited onto an opaque **white** background. White, because transparent regions of
    logos and icons are meant to show a page behind them, and a flat page adds no visual complexity.
  - **16-bit and 32-bit integer** (``I;16``, ``I;16B``, ``I``): scaled from their nominal range to
    0..255 (``I;16`` divides by 257). For ``I`` the range is taken as 8-bit if all values fit in
    0..255, 16-bit if they fit in 0..65535, else the image's own min..max.
  - **Float** (``F``): values in [0, 1] are taken as unit range; otherwise the image's min..max is
    stretched to 0..255. Non-finite values become 0.

Errors: anything that goes wrong raises :class:`ImageLoadError`, whose message names the file and
the cause (missing, unreadable, empty, not an image, truncated, too many pixels, ...).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # colour management is optional in Pillow builds
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on the Pillow build
    ImageCms = None

__all__ = ["ImageLoadError", "load_image", "to_rgb", "DEFAULT_MAX_PIXELS", "DECODE_OVERSAMPLE", "max_pixels_budget",
           "image_extensions"]

#: Default pixel budget: 100 megapixels (a 10,000 x 10,000 image). Larger headers are rejected
#: before decoding, which protects batch jobs from decompression bombs. Override per call, or for
#: the process with the ``PYICA_MAX_PIXELS`` environment variable (see :func:`max_pixels_budget`).
DEFAULT_MAX_PIXELS = 100_000_000


def max_pixels_budget(max_pixels: int | None = None) -> int:
    """The pixel budget: ``max_pixels`` if given, else ``$PYICA_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`.

    Read when used, not at import, so that a bad value is one :class:`ValueError` naming the variable
    (and ``pyica list`` still runs).
    """
    if max_pixels is not None:
        return int(max_pixels)
    text = os.environ.get("PYICA_MAX_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"PYICA_MAX_PIXELS={text!r}: expected a whole number of pixels >= 1, e.g. 200000000")
    return value

#: Background used for transparent pixels.
ALPHA_BACKGROUND = (255, 255, 255)

ImageSource = Union[str, os.PathLike, bytes, BinaryIO]


class ImageLoadError(ValueError):
    """An image could not be loaded. ``str(err)`` is ``"<file>: <cause>"``."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) that the installed Pillow can open."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, bytes):
        return "<bytes>"
    return getattr(source, "name", None) or "<stream>"


#: A model's transform asks for JPEGs decoded at this many times its input size (at least), so that
#: the transform's own antialiased filter still makes the last reduction; the DCT-domain reduction
#: alone (1/2, 1/4, 1/8) is a box filter. See :func:`load_image`'s ``decode_size``.
DECODE_OVERSAMPLE = 2

DecodeSize = Union[Tuple[int, int], Callable[[int, int], Optional[Tuple[int, int]]], None]


def load_image(source: ImageSource, max_pixels: int | None = None, decode_size: DecodeSize = None) -> Image.Image:
    """Load ``source`` (path, bytes or binary stream) as an upright 8-bit RGB PIL image.

    ``decode_size``: the smallest ``(width, height)`` the caller needs, or a callable giving it from the
    file's ``(width, height)`` (before EXIF orientation; a request must not depend on which side is
    which). A JPEG is then decoded by libjpeg at the largest reduction (1/2, 1/4 or 1/8) that keeps
    both sides at or above it (Pillow's ``draft``), which costs a fraction of a full decode; other
    formats, and JPEGs too small to reduce, decode in full. Orientation, colour modes and ICC
    conversion follow the same rules either way. ``None``: always full resolution.

    Raises :class:`ImageLoadError` naming the file and the cause for every failure.
    """
    name = _describe(source)
    budget = max_pixels_budget(max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(name, "file not found")
        if path.is_dir():
            raise ImageLoadError(name, "is a directory, not an image file")
        try:
            size = path.stat().st_size
        except OSError as err:
            raise ImageLoadError(name, f"cannot read file ({err.strerror or err})") from err
        if size == 0:
            raise ImageLoadError(name, "empty file (0 bytes)")
    elif isinstance(source, bytes):
        if not source:
            raise ImageLoadError(name, "empty file (0 bytes)")
        source = io.BytesIO(source)

    try:
        with warnings.catch_warnings():
            # Our own budget replaces Pillow's bomb warning; Pillow's hard error still applies
            # above twice its limit and is reported below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise ImageLoadError(name, f"invalid image size {width}x{height}")
                if width * height > budget:
                    raise ImageLoadError(
                        name,
                        f"image has {width}x{height} = {width * height:,} pixels, over the budget of "
                        f"{budget:,} (possible decompression bomb; raise max_pixels / "
                        "PYICA_MAX_PIXELS to allow it)",
                    )
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                if decode_size is not None and img.format == "JPEG":
                    request = decode_size(width, height) if callable(decode_size) else decode_size
                    if request:
                        img.draft(None, (max(1, int(request[0])), max(1, int(request[1]))))  # keeps the mode
                img.load()
                return to_rgb(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadError(name, f"too many pixels, possible decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(name, "not an image file, or a format Pillow cannot read") from err
    except PermissionError as err:
        raise ImageLoadError(name, f"permission denied ({err.strerror or err})") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        msg = str(err)
        if "truncated" in msg.lower() or isinstance(err, EOFError):
            raise ImageLoadError(name, f"truncated or corrupt image data ({msg or 'unexpected end of file'})") from err
        raise ImageLoadError(name, f"cannot decode image ({type(err).__name__}: {msg})") from err


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _icc_to_srgb(img: Image.Image) -> Image.Image:
    profile = img.info.get("icc_profile")
    if not profile or ImageCms is None or img.mode not in ("RGB", "RGBA", "CMYK", "L", "LA"):
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        dst = ImageCms.createProfile("sRGB")
        out_mode = "RGBA" if img.mode in ("RGBA", "LA") else "RGB"
        if img.mode == "LA":
            return img  # grey+alpha profiles are rare; Pillow cannot transform LA -> RGBA directly
        converted = ImageCms.profileToProfile(img, src, dst, outputMode=out_mode)
        return converted if converted is not None else img
    except Exception:  # a broken profile must not make a readable image unreadable
        return img


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        else:
            scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    else:  # I;16 variants and 32-bit I
        arr = arr.astype(np.float64)
        if img.mode.startswith("I;16"):
            scaled = arr / 257.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            if lo >= 0 and hi <= 255:
                scaled = arr
            elif lo >= 0 and hi <= 65535:
                scaled = arr / 257.0
            else:
                scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any Pillow mode to 8-bit RGB (rules in the module doc)."""
    img = ImageOps.exif_transpose(img)
    img = _icc_to_srgb(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("F", "I") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_l(img).convert("RGB")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
