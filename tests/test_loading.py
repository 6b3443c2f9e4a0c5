import io

import numpy as np
import pytest
from PIL import Image

from image_zoo import make_image_zoo, png_header_only
from pyica.loading import ImageLoadError, load_image, to_rgb
from pyica.registry import DEFAULT_MODEL, create_model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return folder, make_image_zoo(folder)


def test_every_valid_mode_loads_as_8bit_rgb(zoo):
    folder, expected = zoo
    for name, ok in expected.items():
        if ok:
            img = load_image(folder / name)
            assert img.mode == "RGB", name
            assert np.asarray(img).dtype == np.uint8


@pytest.mark.parametrize(
    "name, cause",
    [
        ("empty.jpg", "empty file"),
        ("truncated.jpg", "truncated"),
        ("not_an_image.png", "not an image"),
        ("bomb.png", "decompression bomb"),
    ],
)
def test_broken_files_name_the_file_and_the_cause(zoo, name, cause):
    folder, _ = zoo
    with pytest.raises(ImageLoadError) as info:
        load_image(folder / name)
    assert str(folder / name) in str(info.value)
    assert cause in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_pixel_budget_is_checked_before_decoding(tmp_path):
    # 12,000 x 12,000 is under Pillow's own hard limit, so only pyica's budget stops it.
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(12_000, 12_000))
    with pytest.raises(ImageLoadError, match="over the budget"):
        load_image(path)  # default budget 100 MP < 144 MP; decoding would fail on the fake data anyway
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(ImageLoadError, match="over the budget of 5,000"):
        load_image(small, max_pixels=5_000)
    assert load_image(small, max_pixels=10_000).size == (100, 100)


def test_exif_orientation_is_applied(zoo):
    folder, _ = zoo
    raw = Image.open(folder / "exif_rotated.jpg")
    assert raw.size == (64, 48)
    assert load_image(folder / "exif_rotated.jpg").size == (48, 64)


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = np.asarray(to_rgb(rgba))
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[3, 3]) == (255, 255, 255)
    assert 120 <= out[0, 1, 0] <= 135  # half-transparent black over white is mid grey


def test_palette_transparency_index_becomes_white():
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    out = np.asarray(to_rgb(p))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (0, 0, 255)


def test_high_bit_depth_scaling():
    deep = Image.fromarray(np.array([[0, 65535, 257 * 100]], dtype=np.uint16))
    assert np.asarray(to_rgb(deep))[0, :, 0].tolist() == [0, 255, 100]
    unit_float = Image.fromarray(np.array([[0.0, 1.0, 0.5]], dtype=np.float32))
    assert np.asarray(to_rgb(unit_float))[0, :, 0].tolist() == [0, 255, 128]
    wide_float = Image.fromarray(np.array([[-2.0, 2.0, 0.0]], dtype=np.float32))
    assert np.asarray(to_rgb(wide_float))[0, :, 0].tolist() == [0, 255, 128]


def test_first_frame_of_animation(zoo):
    folder, _ = zoo
    assert np.asarray(load_image(folder / "animated.gif")).mean() == pytest.approx(30, abs=2)


def test_bytes_and_streams():
    buf = io.BytesIO()
    Image.new("L", (8, 6), 77).save(buf, format="PNG")
    assert load_image(buf.getvalue()).size == (8, 6)
    buf.seek(0)
    assert load_image(buf).getpixel((0, 0)) == (77, 77, 77)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


# --- reduced-size JPEG decoding (decode_size) ---------------------------------------------------------------


def _photo(size=(1600, 1200)) -> Image.Image:
    """A smooth colour picture with a distinct top-left corner, so orientation and colour are checkable."""
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    rgb = np.stack([x * 255, y * 255, (1 - x) * 200 + 20], axis=-1)
    rgb[: h // 8, : w // 8] = (255, 0, 0)
    return Image.fromarray(rgb.astype(np.uint8))


def _reference(path, size):
    """Full decode, then the same size by area averaging."""
    return np.asarray(load_image(path).resize(size, Image.Resampling.BOX), dtype=np.float32)


@pytest.mark.parametrize("mode,progressive", [("RGB", False), ("RGB", True), ("L", False), ("CMYK", False)])
def test_reduced_decoding_keeps_colour_and_reduces_the_size(tmp_path, mode, progressive):
    path = tmp_path / "photo.jpg"
    _photo().convert(mode).save(path, quality=95, progressive=progressive)
    image = load_image(path, decode_size=(300, 300))
    assert image.mode == "RGB"
    assert image.size == (400, 300)  # 1/4: the largest reduction keeping both sides >= 300
    diff = np.abs(np.asarray(image, dtype=np.float32) - _reference(path, image.size))
    assert diff.mean() < 3.0
    if mode == "L":
        pixels = np.asarray(image)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_reduced_decoding_applies_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _photo().save(path, quality=95, exif=exif)
    reduced, full = load_image(path, decode_size=(300, 300)), load_image(path)
    assert full.size == (1200, 1600) and reduced.size == (300, 400)
    red = np.asarray(reduced)
    assert red[5, -5, 0] > 200 and red[5, -5, 1] < 60  # the red corner moved to the top right, as in full
    assert np.abs(np.asarray(reduced, dtype=np.float32) - _reference(path, reduced.size)).mean() < 3.0


def test_only_jpegs_large_enough_are_reduced(tmp_path):
    _photo().save(tmp_path / "big.png")
    _photo((500, 400)).save(tmp_path / "small.jpg", quality=95)
    assert load_image(tmp_path / "big.png", decode_size=(300, 300)).size == (1600, 1200)
    assert load_image(tmp_path / "small.jpg", decode_size=(300, 300)).size == (500, 400)
    assert load_image(tmp_path / "small.jpg", decode_size=lambda w, h: (w // 2, h // 2)).size == (250, 200)


def test_models_declare_what_they_need_decoded():
    from pyica.loading import DECODE_OVERSAMPLE
    from pyica.models.effnet import LongestSideResize, SquareResize

    assert SquareResize(192).decode_size(4000, 3000) == (192 * DECODE_OVERSAMPLE,) * 2
    w, h = LongestSideResize(256).decode_size(4000, 3000)
    assert max(w, h) == 256 * DECODE_OVERSAMPLE and abs(w / h - 4 / 3) < 0.01
    model = create_model(DEFAULT_MODEL)
    assert model.transform.decode_size(4000, 3000) is not None
    assert getattr(create_model("entropy").transform, "decode_size", None) is None  # classic: full resolution
