"""Image decoding: every layout the backend may receive ends as RGB uint8 [H, W, 3]."""
import io

import numpy as np
import pytest
from PIL import Image

from clickpose_core.image import ImageError, as_rgb_array, load_image


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _pattern(h=6, w=9):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip_from_bytes_path_and_stream(tmp_path):
    rgb = _pattern()
    data = _encode(Image.fromarray(rgb))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for source in (data, str(path), path, io.BytesIO(data)):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (6, 9, 3)
        np.testing.assert_array_equal(out, rgb)


def test_grayscale_is_replicated_to_three_channels():
    grey = _pattern()[:, :, 0]
    out = load_image(_encode(Image.fromarray(grey, "L")))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_rgba_is_composited_over_black():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[..., 3] = [[0, 255, 128], [64, 255, 0]]
    out = load_image(_encode(Image.fromarray(rgba, "RGBA")))
    expected = np.rint(np.array([200, 100, 50]) * rgba[..., 3:4] / 255.0)
    np.testing.assert_allclose(out, expected, atol=1)
    assert (out[0, 0] == 0).all() and (out[0, 1] == [200, 100, 50]).all()


def test_palette_with_transparency_keeps_colours_and_alpha():
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    pal.info["transparency"] = 1  # index 1 (green) fully transparent
    out = load_image(_encode(pal))
    assert (out[0, 0] == [255, 0, 0]).all()
    assert (out[0, 1] == [0, 0, 0]).all()


def test_16bit_grey_is_scaled_not_truncated():
    grey16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    out = load_image(_encode(Image.fromarray(grey16)))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert out.shape == (1, 4, 3)


def test_exif_orientation_is_applied():
    rgb = _pattern(4, 8)  # landscape in the file
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(_encode(img, "PNG", exif=exif.tobytes()))
    assert out.shape == (8, 4, 3)
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


def test_jpeg_decodes():
    out = load_image(_encode(Image.fromarray(_pattern(16, 16)), "JPEG", quality=95))
    assert out.shape == (16, 16, 3)


@pytest.mark.parametrize("source, needle", [
    (b"", "0 bytes"),
    (b"definitely not an image", "not a recognised image format"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a recognised image format|corrupt"),
    (12345, "cannot read an image from int"),
])
def test_bad_input_raises_image_error(source, needle):
    with pytest.raises(ImageError, match=needle):
        load_image(source)


def test_truncated_png_raises_image_error():
    data = _encode(Image.fromarray(_pattern(64, 64)))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_text_mode_stream_is_rejected(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello")
    with open(p) as f, pytest.raises(ImageError, match="binary mode"):
        load_image(f)


def test_as_rgb_array_layouts_and_errors():
    rgb = _pattern()
    assert as_rgb_array(rgb) is not None and (as_rgb_array(rgb) == rgb).all()
    assert as_rgb_array(rgb[:, :, 0]).shape == (6, 9, 3)
    assert as_rgb_array(np.full((2, 2), 65535, np.uint16)).max() == 255
    with pytest.raises(ImageError, match="dtype"):
        as_rgb_array(rgb.astype(np.float32))
    with pytest.raises(ImageError, match="shape"):
        as_rgb_array(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        as_rgb_array(np.zeros((0, 3, 3), np.uint8))
