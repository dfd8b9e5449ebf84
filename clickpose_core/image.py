"""Decode any common image into the one layout the model consumes: RGB uint8 [H, W, 3].

Choices (none of them exist in the official code, which only ever reads 8-bit RGB COCO JPEGs):

* EXIF orientation is applied, so coordinates match what a browser (and Label Studio) displays.
* Transparency is composited over black (`ALPHA_BACKGROUND`), i.e. the colour is premultiplied by
  alpha. Hidden colour values under fully transparent pixels are arbitrary, so dropping alpha would
  make the result depend on how the file was written; premultiplying does not.
* 16-bit grey is scaled with round(v * 255 / 65535), so 65535 maps to 255. Pillow itself decodes
  16-bit *colour* PNGs to 8 bits by keeping the high byte; that is at most one level off and is kept.
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

ALPHA_BACKGROUND: tuple[int, int, int] = (0, 0, 0)


class ImageError(ValueError):
    """The input is not an image this package can use (missing, empty, corrupt, unsupported)."""


def load_image(source: ImageSource) -> np.ndarray:
    """Read a path, bytes or binary file object -> RGB uint8 array [H, W, 3] (EXIF-upright)."""
    what = _describe(source)
    fp = _open_source(source, what)
    try:
        with Image.open(fp) as img:
            return pil_to_rgb(img, what)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what}: image is too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{what}: not a recognised image format") from e
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for truncated/corrupt data
        raise ImageError(f"{what}: corrupt or truncated image ({e})") from e


def pil_to_rgb(img: Image.Image, what: str = "image") -> np.ndarray:
    """An opened PIL image (any mode, maybe not decoded yet) -> RGB uint8 [H, W, 3], EXIF-upright.

    For callers that are handed a PIL image rather than bytes (cvat-sdk passes `PIL.Image.open(...)`).
    """
    try:
        img.load()  # decode now: truncated or corrupt data fails here, not later
        img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what}: image is too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{what}: corrupt or truncated image ({e})") from e
    return _to_rgb(img, what)


def as_rgb_array(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an in-memory image -> RGB uint8 [H, W, 3].

    Accepts [H, W] grey, [H, W, 1], [H, W, 3] RGB and [H, W, 4] RGBA (composited over black),
    as uint8 or uint16 (16-bit is scaled to 8 bits). Anything else raises ImageError.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageError(f"{name}: expected shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got {list(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: image is empty ({image.shape[1]}x{image.shape[0]} pixels)")
    if image.dtype == np.uint16:
        image = _scale_16bit(image)
    elif image.dtype != np.uint8:
        raise ImageError(f"{name}: expected dtype uint8 or uint16, got {image.dtype}")
    if image.shape[2] == 4:
        image = _composite(image[:, :, :3], image[:, :, 3])
    elif image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def _to_rgb(img: Image.Image, what: str) -> np.ndarray:
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{what}: image is empty ({img.width}x{img.height} pixels)")
    mode = img.mode
    if mode == "P":
        # Palette images may carry transparency in the palette; RGBA keeps it.
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return as_rgb_array(_int_to_uint16(np.asarray(img), what), what)
    if mode == "F":
        return as_rgb_array(_float_to_uint8(np.asarray(img), what), what)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return as_rgb_array(np.asarray(img.convert("RGBA")), what)
    if mode in ("1", "L", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return as_rgb_array(np.asarray(img.convert("RGB")), what)
    raise ImageError(f"{what}: unsupported image mode {mode!r}")


def _int_to_uint16(a: np.ndarray, what: str) -> np.ndarray:
    # Pillow opens 16-bit grey as "I;16*" or as 32-bit "I"; both hold 0..65535 for real files.
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ImageError(f"{what}: 32-bit integer image with values outside 0..65535 is not supported")
    return a.astype(np.uint16)


def _float_to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(a).all():
        raise ImageError(f"{what}: floating-point image contains NaN or infinity")
    scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0  # [0, 1] data vs 0..255 data
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


def _scale_16bit(a: np.ndarray) -> np.ndarray:
    # Integer round-half-up of v * 255 / 65535, exact for every 16-bit value.
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint32)[:, :, None]
    bg = np.asarray(ALPHA_BACKGROUND, dtype=np.uint32)
    out = (rgb.astype(np.uint32) * a + bg * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _open_source(source: ImageSource, what: str) -> Union[str, BinaryIO]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{what}: no data (0 bytes)")
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageError(f"{what}: no such file")
        if os.path.isdir(path):
            raise ImageError(f"{what}: is a directory, not an image file")
        if os.path.getsize(path) == 0:
            raise ImageError(f"{what}: file is empty (0 bytes)")
        return path  # Image.open owns (and closes) files it opens by name
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"{what}: file object must be opened in binary mode")
        if len(data) == 0:
            raise ImageError(f"{what}: no data (0 bytes)")
        return io.BytesIO(data)
    raise ImageError(f"cannot read an image from {type(source).__name__}; "
                     "pass a path, bytes or a binary file object")


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"image file {os.fspath(source)!r}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"image bytes ({len(source)} bytes)"
    return f"image stream {getattr(source, 'name', type(source).__name__)!r}"
