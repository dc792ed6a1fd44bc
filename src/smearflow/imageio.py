"""The one place where images are read and written.

Every image leaves this module as RGB, channel-last, ``uint8``. What converts
without a change of meaning is converted: an opaque RGBA or palette image, a
CMYK or YCbCr one, 16 bits per channel (scaled to 8), an EXIF-rotated JPEG
(turned upright), a multi-page TIFF (its first page). What cannot honestly be
analysed as a stained RGB field raises :class:`BadImageError` naming the file
and the problem: grayscale (a stain cannot be told from a grey level),
translucent images (what lies behind a transparent pixel is unknown), images
too large to decode safely or too small to hold a cell, unreadable or
truncated files, and symbolic links (an inbox is untrusted input; a link could
point anywhere).

Every message names the file through :func:`display_name`, so a file name
that is not valid UTF-8 still gives a message that can be printed, logged and
stored in PostgreSQL.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import warnings
from pathlib import Path

import numpy as np

from smearflow.errors import BadImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

MAX_PIXELS = 40_000_000
"""Default ``max_pixels`` of :func:`read_rgb`: the largest image read, width × height.

40 million pixels (for example 7300 × 5480) is above any microscope camera's
field. The size comes from the file's header and a larger image is refused
before a single pixel is decoded, so a hostile or broken file cannot make a
worker allocate gigabytes (a 40 MP RGB field is 120 MB decoded)."""

MIN_FIELD_SIDE_PX = 64
"""The shortest side a field of view may have, in pixels (``PipelineConfig.min_field_side_px``).

A field narrower than this cannot hold one whole red cell at any magnification
smearflow is used at (red cells are 30 to 100 px across). :func:`read_rgb`
itself accepts any size unless ``min_side_px`` is given: training crops and
masks are images too, and small ones."""

_PILLOW_FORMATS = ("JPEG", "PNG", "TIFF", "BMP")
"""Formats Pillow may identify a file as (a multi-picture JPEG, MPO, is a JPEG); no other decoder is
ever tried: EPS, for one, runs Ghostscript."""

_EXIF_ORIENTATION_TAG = 0x0112
_TIFF_BITS_PER_SAMPLE_TAG = 258
_MAX_ERROR_TEXT_CHARS = 200

_GRAYSCALE_MODES = {
    "1": "is black-and-white (1 bit per pixel); a stained field must be RGB colour",
    "L": "is grayscale; a stained field must be RGB colour",
    "LA": "is grayscale with an alpha channel; a stained field must be RGB colour",
    "La": "is grayscale with an alpha channel; a stained field must be RGB colour",
    "I": "is grayscale with 32-bit integer pixels; a stained field must be RGB colour",
    "F": "is grayscale with floating-point pixels; a stained field must be RGB colour",
    "I;16": "is 16-bit grayscale; a stained field must be RGB colour",
    "I;16B": "is 16-bit grayscale; a stained field must be RGB colour",
    "I;16L": "is 16-bit grayscale; a stained field must be RGB colour",
    "I;16N": "is 16-bit grayscale; a stained field must be RGB colour",
}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "PA"})
_CONVERTED_MODES = frozenset({"CMYK", "YCbCr", "RGBX"})


def display_name(path: str | bytes | os.PathLike) -> str:
    """A file name as printable text that always encodes to UTF-8.

    Bytes that are not valid UTF-8 (kept by Python as lone surrogates,
    ``os.fsdecode(b"field_\\xff.png") == "field_\\udcff.png"``) are shown as
    ``\\xff``; control characters and other unprintable characters as
    backslash escapes (a newline in a name becomes ``\\n``).

    Parameters
    ----------
    path : str, bytes or path-like

    Returns
    -------
    name : str
        Printable text, safe to print, log and store in a UTF-8 database.
    """
    text = os.fsdecode(path)
    return "".join(_printable_char(char) for char in text)


def _printable_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, escaped by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if char.isprintable():
        return char
    return char.encode("unicode_escape").decode("ascii")


def is_image_file(path: Path) -> bool:
    """True for a visible file whose suffix is one smearflow reads."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def read_rgb(
    path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, min_side_px: int = 1
) -> np.ndarray:
    """Read a field of view as 8-bit RGB.

    Converted: RGBA and palette images that are fully opaque, CMYK and YCbCr,
    16 bits per channel (PNG and TIFF, read at 16 bits and scaled to 8 with
    rounding, ``round(v * 255 / 65535)``). The EXIF orientation tag is applied
    (a rotated JPEG comes back upright). A multi-page TIFF gives its first page,
    with a warning in the log.

    Refused: grayscale (1-bit, 8-bit, 16-bit, integer or float), translucent
    images (alpha below 255 anywhere, or a palette transparency that a pixel
    uses), other colour spaces (LAB), images with more than ``max_pixels``
    pixels (checked from the header, before decoding), images with a side
    shorter than ``min_side_px``, symbolic links, anything that is not a
    regular file, and anything Pillow, OpenCV or tifffile fail to decode.

    Parameters
    ----------
    path : str or path-like
        A JPEG, PNG, TIFF or BMP file (the format is read from the content, not
        the suffix). It must not be a symbolic link: links are never followed,
        also when one is swapped in between the check and the opening.
    max_pixels : int, keyword-only
        Largest width × height read; default :data:`MAX_PIXELS` (40 000 000).
        Pillow refuses anything above twice ``PIL.Image.MAX_IMAGE_PIXELS``
        (about 179 million pixels) whatever this is.
    min_side_px : int, keyword-only
        Shortest side accepted, in pixels; any size by default. The pipeline
        reads fields with :data:`MIN_FIELD_SIDE_PX` (64).

    Returns
    -------
    image : ndarray of shape (M, N, 3), uint8
        RGB pixels, upright.

    Raises
    ------
    BadImageError
        When the file is missing, a link, not a regular file, unreadable,
        truncated, too large, too small, grayscale, translucent or in a colour
        space that is not read; the message starts with the file's
        :func:`display_name`.
    ValueError
        When ``max_pixels`` or ``min_side_px`` is not a positive integer.
    """
    for keyword, value in (("max_pixels", max_pixels), ("min_side_px", min_side_px)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{keyword} must be a positive integer. Received: {keyword}={value!r}")
    name = display_name(path)
    descriptor = _open_regular_file(path, name)
    with os.fdopen(descriptor, "rb") as file:
        try:
            image = _decode(file, name, int(max_pixels))
        except BadImageError:
            raise
        except Exception as error:  # noqa: BLE001 - a hostile file may make a decoder raise anything
            raise BadImageError(f"{name}: unreadable or truncated image ({_describe(error)})") from None
    rows, cols = image.shape[:2]
    if min(rows, cols) < min_side_px:
        raise BadImageError(f"{name}: {cols}×{rows} px, smaller than the {min_side_px} px a side a field needs")
    return image


def _open_regular_file(path, name: str) -> int:
    """A read-only descriptor of a regular file that is not a symbolic link."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise BadImageError(f"{name}: no such image file") from None
    except OSError as error:
        raise BadImageError(f"{name}: cannot be read ({error.strerror or type(error).__name__})") from None
    if stat.S_ISLNK(info.st_mode):
        raise BadImageError(f"{name}: is a symbolic link; links are not followed")
    if not stat.S_ISREG(info.st_mode):
        raise BadImageError(f"{name}: not a regular file")
    # O_NOFOLLOW: a link swapped in after the lstat fails here instead of being
    # followed; O_NONBLOCK: a FIFO swapped in cannot block the reader.
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BadImageError(f"{name}: is a symbolic link; links are not followed") from None
        if error.errno == errno.ENOENT:
            raise BadImageError(f"{name}: no such image file") from None
        raise BadImageError(f"{name}: cannot be opened ({error.strerror or type(error).__name__})") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise BadImageError(f"{name}: not a regular file")
    return descriptor


def _decode(file, name: str, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    # Pillow reports odd files through warnings (a malformed MPO, corrupt EXIF)
    # and warns about large images before we can check their size: record them
    # all here, log them with the file name, and never let one escape.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            try:
                pil_image = Image.open(file, formats=_PILLOW_FORMATS)
            except Image.DecompressionBombError:
                raise BadImageError(
                    f"{name}: image has far more than {max_pixels:,} pixels; refused before decoding"
                ) from None
            except UnidentifiedImageError:
                raise BadImageError(
                    f"{name}: not a readable image (not JPEG, PNG, TIFF or BMP, or corrupt)"
                ) from None
            with pil_image:
                return _decode_opened(pil_image, file, name, max_pixels)
        finally:
            for warning in caught:
                if not issubclass(warning.category, Image.DecompressionBombWarning):
                    logger.warning("%s: %s", name, _printable(str(warning.message)))


def _decode_opened(pil_image, file, name: str, max_pixels: int) -> np.ndarray:
    width, height = pil_image.size
    mode = pil_image.mode
    if mode in _GRAYSCALE_MODES:
        raise BadImageError(f"{name}: image {_GRAYSCALE_MODES[mode]}")
    if mode not in {"RGB", "P"} | _ALPHA_MODES | _CONVERTED_MODES:
        raise BadImageError(f"{name}: image is in the {mode} colour space; save the field as RGB")
    if width * height > max_pixels:
        raise BadImageError(
            f"{name}: {width}×{height} px is {width * height:,} pixels, more than the {max_pixels:,} read; "
            "refused before decoding"
        )
    pages = int(getattr(pil_image, "n_frames", 1))
    if pages > 1:
        logger.warning("%s: has %d pages; reading the first", name, pages)
        pil_image.seek(0)
    bits = 8 if mode == "P" else _bits_per_channel(pil_image)  # a palette's index depth is not a colour depth
    # After the depth: reading a PNG's EXIF may decode the pixels, which drops the decoder tile.
    orientation = int(pil_image.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
    if bits == 16:
        channels = _read_16_bit(pil_image.format, file, name)
        if channels.shape[:2] != (height, width):
            raise BadImageError(
                f"{name}: the 16-bit pixels are {channels.shape[1]}×{channels.shape[0]} px, "
                f"the header says {width}×{height}"
            )
        max_value = np.uint32(65535)
        image = _opaque_rgb(channels, max_value, name)
        image = ((image.astype(np.uint32) * 255 + max_value // 2) // max_value).astype(np.uint8)
    elif bits == 8:
        image = _read_8_bit(pil_image, name)
    else:
        raise BadImageError(f"{name}: image has {bits} bits per channel; 8 and 16 are read")
    return np.ascontiguousarray(_apply_orientation(image, orientation))


def _bits_per_channel(pil_image) -> int:
    # Pillow 13 still reads 48-bit RGB PNG and TIFF as 8-bit "RGB" by dropping
    # the low byte, so the stored depth must come from the file's own header:
    # the TIFF BitsPerSample tag, or the raw mode of the decoder tile ("RGB;16B").
    # (A 16-bit BMP is 5-6-5 bits, which Pillow expands correctly: only PNG
    # and TIFF store 16 bits per channel.)
    if pil_image.format == "TIFF":
        depth = pil_image.tag_v2.get(_TIFF_BITS_PER_SAMPLE_TAG, 1)
        return int(max(depth) if isinstance(depth, tuple) else depth)
    if pil_image.format != "PNG":
        return 8
    for tile in pil_image.tile or ():
        raw_mode = tile.args if isinstance(tile.args, str) else (tile.args[0] if tile.args else "")
        if isinstance(raw_mode, str) and ";16" in raw_mode:
            return 16
    return 8


def _read_8_bit(pil_image, name: str) -> np.ndarray:
    pil_image.load()  # decodes every byte: a truncated file fails here
    mode = pil_image.mode
    if mode == "RGB":
        return np.asarray(pil_image, dtype=np.uint8)
    if mode in _CONVERTED_MODES:
        return np.asarray(pil_image.convert("RGB"), dtype=np.uint8)
    if mode == "P" and "transparency" not in pil_image.info:
        return np.asarray(pil_image.convert("RGB"), dtype=np.uint8)
    rgba = np.asarray(pil_image if mode in ("RGBA", "RGBa") else pil_image.convert("RGBA"), dtype=np.uint8)
    return _opaque_rgb(rgba, np.uint8(255), name)


def _opaque_rgb(channels: np.ndarray, max_value, name: str) -> np.ndarray:
    """RGB of an RGB or RGBA array whose alpha is ``max_value`` everywhere."""
    if channels.ndim != 3 or channels.shape[2] not in (3, 4):
        raise BadImageError(f"{name}: expected RGB or RGBA pixels, got an array of shape {channels.shape}")
    if channels.shape[2] == 4:
        translucent = int(np.count_nonzero(channels[..., 3] < max_value))
        if translucent:
            raise BadImageError(
                f"{name}: image is translucent: {translucent:,} of {channels[..., 3].size:,} pixels have "
                "alpha (opacity) below full; what lies behind them is unknown"
            )
    return channels[..., :3]


def _read_16_bit(image_format: str | None, file, name: str) -> np.ndarray:
    """RGB or RGBA pixels of a 16-bit PNG or TIFF, as ``uint16``, at their full depth.

    OpenCV (libpng, libtiff) decodes every PNG and every TIFF compression but
    silently garbles a TIFF stored as separate colour planes; tifffile reads
    those (it needs the optional imagecodecs package for LZW and JPEG
    compression, and says so in its error).
    """
    if image_format not in ("PNG", "TIFF"):
        raise BadImageError(f"{name}: 16 bits per channel are read from PNG and TIFF only, not {image_format}")
    file.seek(0)
    data = file.read()
    channels = None
    if image_format == "TIFF":
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages[0]
            if page.photometric != tifffile.PHOTOMETRIC.RGB:
                raise BadImageError(
                    f"{name}: 16-bit TIFF in the {page.photometric.name} colour space; save the field as RGB"
                )
            if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
                channels = np.moveaxis(page.asarray(), 0, -1)
    if channels is None:
        import cv2

        channels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if channels is None:
            raise BadImageError(f"{name}: unreadable or truncated image (the 16-bit {image_format} could not be decoded)")
        if channels.ndim == 3:  # OpenCV gives BGR or BGRA
            channels = channels[..., [2, 1, 0, 3][: channels.shape[2]]]
    if channels.dtype != np.uint16:
        raise BadImageError(f"{name}: expected 16-bit pixels, the decoder gave {channels.dtype}")
    return channels


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image upright according to its EXIF orientation (1 to 8)."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(image, k=-1)
    if orientation == 7:
        return image[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(image, k=1)
    return image


def _describe(error: BaseException) -> str:
    text = _printable(str(error))
    if len(text) > _MAX_ERROR_TEXT_CHARS:
        text = text[:_MAX_ERROR_TEXT_CHARS] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _printable(text: str) -> str:
    return "".join(_printable_char(char) for char in text)


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
                raise BadImageError(f"{display_name(path)}: mask mode {pil_image.mode!r} is not single-channel")
            return np.asarray(pil_image.convert("L"), dtype=np.uint8).copy()
    except BadImageError:
        raise
    except (UnidentifiedImageError, OSError) as error:
        raise BadImageError(f"{display_name(path)}: unreadable mask ({_describe(error)})") from None


def encode_png(image: np.ndarray) -> bytes:
    """An RGB ``uint8`` image as PNG bytes (a crop served to a web page).

    Raises
    ------
    ValueError
        When ``image`` is not an (M, N, 3) uint8 array.
    """
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be an (M, N, 3) uint8 array. Received: shape={image.shape}, dtype={image.dtype}"
        )
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
