"""The one place where images are read and written.

Every image leaves this module as RGB, channel-last, ``uint8``. Files that
cannot honestly be analysed as a stained RGB field (truncated, grayscale,
with an alpha channel, 16 bits per channel) raise :class:`BadImageError`
naming the file and the problem instead of being silently converted: a
converted grayscale or 16-bit field would give counts nobody can trust.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from smearflow.errors import BadImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

_PIL_MODE_PROBLEMS = {
    "1": "is black-and-white (1 bit per pixel), not RGB",
    "L": "is grayscale, not RGB",
    "LA": "is grayscale with an alpha channel, not RGB",
    "P": "is a palette image, not RGB",
    "PA": "is a palette image with an alpha channel, not RGB",
    "RGBA": "has an alpha channel (RGBA), not plain RGB",
    "CMYK": "is CMYK, not RGB",
    "I": "has 32-bit integer pixels, not 8-bit RGB",
    "F": "has floating-point pixels, not 8-bit RGB",
    "I;16": "is 16-bit grayscale, not 8-bit RGB",
    "I;16B": "is 16-bit grayscale, not 8-bit RGB",
    "I;16L": "is 16-bit grayscale, not 8-bit RGB",
}


def is_image_file(path: Path) -> bool:
    """True for a visible file whose suffix is one smearflow reads."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an 8-bit RGB image.

    Parameters
    ----------
    path : str or Path
        JPEG, PNG, TIFF or BMP file.

    Returns
    -------
    image : ndarray of shape (M, N, 3), uint8
        RGB pixels.

    Raises
    ------
    BadImageError
        When the file is missing, unreadable, truncated, or not 8-bit RGB.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as pil_image:
            mode = pil_image.mode
            bits = _bits_per_channel(pil_image)  # before load(), which drops the tile
            pil_image.load()  # decodes every byte: a truncated file fails here
            if mode in _PIL_MODE_PROBLEMS:
                raise BadImageError(f"{path}: image {_PIL_MODE_PROBLEMS[mode]}")
            if mode != "RGB":
                raise BadImageError(f"{path}: image mode {mode!r} is not RGB")
            if bits != 8:
                raise BadImageError(f"{path}: image has {bits} bits per channel, expected 8")
            image = np.asarray(pil_image, dtype=np.uint8).copy()
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except OSError as error:
        raise BadImageError(f"{path}: unreadable or truncated image ({error})") from None
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise BadImageError(f"{path}: expected an RGB image, got an array of shape {image.shape}")
    return image


def _bits_per_channel(pil_image) -> int:
    # Pillow reads 48-bit RGB PNG/TIFF as mode "RGB" after dropping the low
    # byte, so the stored depth must come from the file's own header: the TIFF
    # BitsPerSample tag, or the raw mode of the decoder tile ("RGB;16B").
    tiff_tags = getattr(pil_image, "tag_v2", None)
    if tiff_tags is not None and 258 in tiff_tags:
        depth = tiff_tags[258]
        return int(depth[0] if isinstance(depth, tuple) else depth)
    for tile in pil_image.tile or ():
        raw_mode = tile.args if isinstance(tile.args, str) else (tile.args[0] if tile.args else "")
        if isinstance(raw_mode, str) and ";16" in raw_mode:
            return 16
    return 8


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB ``uint8`` image; the format follows the suffix."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be an (M, N, 3) uint8 array. Received: shape={image.shape}, dtype={image.dtype}"
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel 8-bit label mask (for example wbcseg's 0/128/255).

    Raises
    ------
    BadImageError
        When the file is unreadable or not single-channel.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as pil_image:
            pil_image.load()
            if pil_image.mode not in ("L", "P", "1"):
                raise BadImageError(f"{path}: mask mode {pil_image.mode!r} is not single-channel")
            return np.asarray(pil_image.convert("L"), dtype=np.uint8).copy()
    except BadImageError:
        raise
    except (UnidentifiedImageError, OSError) as error:
        raise BadImageError(f"{path}: unreadable mask ({error})") from None
