"""Generate the synthetic example images that `make demo` scores.

They are drawn from code (no third-party pixels), span simple to cluttered, and are committed so the
demo needs nothing but the repository. Run: python examples/make_examples.py examples/images
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (512, 384)


def plain_wall(rng):
    return Image.new("RGB", SIZE, (236, 232, 224))


def sky_gradient(rng):
    y = np.linspace(0.0, 1.0, SIZE[1])[:, None, None]
    top, bottom = np.array([70, 130, 200]), np.array([200, 225, 245])
    rows = (top * (1 - y) + bottom * y).repeat(SIZE[0], axis=1)
    return Image.fromarray(rows.astype(np.uint8))


def single_object(rng):
    img = Image.new("RGB", SIZE, (245, 245, 245))
    ImageDraw.Draw(img).ellipse((186, 122, 326, 262), fill=(200, 40, 40))
    return img


def few_shapes(rng):
    img = Image.new("RGB", SIZE, (250, 248, 240))
    draw = ImageDraw.Draw(img)
    draw.rectangle((40, 200, 200, 340), fill=(30, 60, 160))
    draw.ellipse((260, 60, 400, 200), fill=(230, 180, 20))
    draw.polygon([(380, 330), (470, 190), (500, 340)], fill=(20, 140, 80))
    return img


def _random_shapes(rng, count, min_size, max_size, blur=0.0):
    img = Image.new("RGB", SIZE, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        x, y = rng.integers(0, SIZE[0]), rng.integers(0, SIZE[1])
        w, h = rng.integers(min_size, max_size, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        else:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur else img


def scattered_shapes(rng):
    return _random_shapes(rng, 25, 20, 90)


def cluttered_shapes(rng):
    return _random_shapes(rng, 600, 4, 40)


def text_page(rng):
    img = Image.new("RGB", SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    words = ["complexity", "image", "scene", "visual", "clutter", "order", "texture", "object", "colour"]
    y = 12
    while y < SIZE[1] - 14:
        line = " ".join(rng.choice(words) for _ in range(9))
        draw.text((12, y), line, fill=(20, 20, 20))
        y += 14
    return img


def fractal(rng):
    w, h = SIZE
    x = np.linspace(-0.7487667139, -0.7487667139 + 0.004, w)
    y = np.linspace(0.1236408, 0.1236408 + 0.003, h)
    c = x[None, :] + 1j * y[:, None]
    z = np.zeros_like(c)
    count = np.zeros(c.shape, dtype=np.int32)
    for _ in range(200):
        inside = np.abs(z) <= 2
        z[inside] = z[inside] ** 2 + c[inside]
        count += inside
    t = count / count.max()
    rgb = np.stack([np.sin(6 * t) ** 2, np.sin(6 * t + 2) ** 2, np.sin(6 * t + 4) ** 2], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def colour_noise(rng):
    return Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))


GENERATORS = [plain_wall, sky_gradient, single_object, few_shapes, scattered_shapes,
              text_page, cluttered_shapes, fractal, colour_noise]


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for index, make in enumerate(GENERATORS):
        rng = np.random.default_rng(index)
        make(rng).save(out / f"{make.__name__}.jpg", quality=90)
    print(f"wrote {len(GENERATORS)} images to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/images")
