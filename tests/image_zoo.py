"""A folder of awkward inputs: every Pillow mode pyica converts, plus broken files.

Used by the loading and CLI tests, and runnable to build the same folder for a manual check:
``python tests/image_zoo.py /tmp/zoo``.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

#: file name -> expected to load (True) or to fail with an error (False)
EXPECTED_OK: dict[str, bool] = {}


def _ramp(width: int = 64, height: int = 48) -> np.ndarray:
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` but whose data is a few bytes (a bomb stand-in)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def make_image_zoo(folder: str | Path) -> dict[str, bool]:
    """Write the zoo into ``folder``; return {file name: loads successfully}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _ramp()
    expected: dict[str, bool] = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        img.save(folder / name, **kw)
        expected[name] = True

    save("rgb.jpg", Image.fromarray(rgb), quality=90)
    save("grey_L.png", Image.fromarray(rgb[..., 0]))
    save("grey_alpha_LA.png", Image.fromarray(rgb[..., :2], mode="LA"))
    rgba = np.dstack([rgb, np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(rgb.shape[0], 0)])
    save("rgba.png", Image.fromarray(rgba))
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette_P.png", palette)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    save("palette_transparent_P.png", transparent, transparency=0)
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=90)
    save("deep_I16.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    save("float_F.tif", Image.fromarray(rgb[..., 1].astype(np.float32) / 255.0))
    save("bilevel_1.png", Image.fromarray(rgb[..., 0] > 127).convert("1"))
    frames = [Image.fromarray(np.full((48, 64, 3), v, np.uint8)) for v in (30, 200)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    expected["animated.gif"] = True
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display upright
    save("exif_rotated.jpg", rotated, exif=exif.tobytes(), quality=90)

    (folder / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = False
    good = (folder / "rgb.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    expected["truncated.jpg"] = False
    (folder / "not_an_image.png").write_text("this is a text file with an image extension\n")
    expected["not_an_image.png"] = False
    (folder / "bomb.png").write_bytes(png_header_only(40_000, 40_000))
    expected["bomb.png"] = False
    return expected


if __name__ == "__main__":
    result = make_image_zoo(sys.argv[1] if len(sys.argv) > 1 else "image_zoo")
    print(f"wrote {len(result)} files ({sum(result.values())} valid, {sum(not v for v in result.values())} broken)")
