"""imageio: what converts, what is refused and why, and that nothing but BadImageError escapes."""

import io
import logging
import os
import struct
import zlib

import numpy as np
import pytest

from smearflow.errors import BadImageError
from smearflow.imageio import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    MIN_FIELD_SIDE_PX,
    display_name,
    is_image_file,
    read_mask,
    read_rgb,
    write_rgb,
)

FIELD_SHAPE = (72, 96)  # rows, cols: above the 64 px minimum, not square (so a rotation shows)


def _rgb(shape=FIELD_SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def _rgb16(shape=FIELD_SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, size=(*shape, 3), dtype=np.uint16)


def _scaled(values16):
    """What 16 bits scaled to 8 must give: round(v * 255 / 65535)."""
    return np.round(values16.astype(np.float64) * 255 / 65535).astype(np.uint8)


def _pil(array, mode=None):
    from PIL import Image

    return Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)


# --------------------------------------------------------------------------- plain RGB


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_lossless_round_trip_keeps_rgb_order(tmp_path, suffix):
    image = _rgb()
    path = tmp_path / f"field{suffix}"
    write_rgb(path, image)
    read = read_rgb(path)
    assert read.dtype == np.uint8 and read.flags.c_contiguous
    assert np.array_equal(read, image)


def test_jpeg_reads_as_rgb_not_bgr(tmp_path):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[..., 0] = 200  # pure red
    write_rgb(tmp_path / "red.jpg", image)
    pixels = read_rgb(tmp_path / "red.jpg")
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 64, 3)
    assert pixels[..., 0].mean() > 150 and pixels[..., 2].mean() < 50


def test_the_format_comes_from_the_content_not_the_suffix(tmp_path):
    image = _rgb()
    _pil(image).save(tmp_path / "field.jpg", format="PNG")
    assert np.array_equal(read_rgb(tmp_path / "field.jpg"), image)


def test_write_rgb_rejects_non_rgb_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_rgb(tmp_path / "x.png", np.zeros((4, 4), np.uint8))


# --------------------------------------------------------------------------- converted


def test_opaque_rgba_becomes_rgb(tmp_path):
    image = _rgb()
    rgba = np.dstack([image, np.full(FIELD_SHAPE, 255, np.uint8)])
    _pil(rgba).save(tmp_path / "opaque.png")
    assert np.array_equal(read_rgb(tmp_path / "opaque.png"), image)


def test_palette_without_transparency_becomes_rgb(tmp_path):
    palette_image = _pil(_rgb()).convert("P")
    palette_image.save(tmp_path / "palette.png")
    expected = np.asarray(palette_image.convert("RGB"))
    assert np.array_equal(read_rgb(tmp_path / "palette.png"), expected)


def test_palette_whose_transparent_colour_is_unused_becomes_rgb(tmp_path):
    indices = np.zeros(FIELD_SHAPE, np.uint8)
    indices[:, 40:] = 1
    palette_image = _pil(indices, "P")
    palette_image.putpalette([200, 100, 120, 240, 230, 235, 0, 0, 0] + [0] * (256 * 3 - 9))
    palette_image.save(tmp_path / "palette.png", transparency=2)  # index 2 is transparent, no pixel uses it
    image = read_rgb(tmp_path / "palette.png")
    assert tuple(image[0, 0]) == (200, 100, 120) and tuple(image[0, 50]) == (240, 230, 235)


def test_cmyk_becomes_rgb(tmp_path):
    cmyk = _pil(_rgb()).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.tif")
    assert np.array_equal(read_rgb(tmp_path / "cmyk.tif"), np.asarray(cmyk.convert("RGB")))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    image = np.full((64, 64, 3), (200, 120, 160), np.uint8)
    _pil(image).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert np.abs(read_rgb(tmp_path / "cmyk.jpg").astype(int) - image).max() <= 6


def test_ycbcr_tiff_becomes_rgb(tmp_path):
    ycbcr = _pil(_rgb()).convert("YCbCr")
    ycbcr.save(tmp_path / "ycbcr.tif")
    assert np.array_equal(read_rgb(tmp_path / "ycbcr.tif"), np.asarray(ycbcr.convert("RGB")))


# --------------------------------------------------------------------------- 16 bits per channel


def test_pillow_13_drops_the_low_byte_of_48_bit_png_and_tiff(tmp_path):
    """Why 16-bit files are decoded by OpenCV/tifffile: Pillow truncates them to 8 bits silently."""
    import cv2
    from PIL import Image

    values = np.full((64, 64, 3), 1000, np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), values)
    cv2.imwrite(str(tmp_path / "rgb16.tif"), values)
    for name in ("rgb16.png", "rgb16.tif"):
        with Image.open(tmp_path / name) as pil_image:
            assert pil_image.mode == "RGB"
            assert np.asarray(pil_image).max() == 1000 >> 8  # 3, where scaling gives round(3.89) = 4


def test_48_bit_png_is_read_at_16_bits_and_scaled(tmp_path):
    import cv2

    values = _rgb16()
    values[0, 0] = (0, 1000, 65535)  # 1000 -> 4 scaled; dropping the low byte would give 3
    cv2.imwrite(str(tmp_path / "rgb16.png"), values[..., ::-1])  # OpenCV writes BGR
    image = read_rgb(tmp_path / "rgb16.png")
    assert image.dtype == np.uint8 and image.shape == (*FIELD_SHAPE, 3)
    assert np.array_equal(image, _scaled(values))
    assert tuple(image[0, 0]) == (0, 4, 255)


def test_64_bit_rgba_png_opaque_is_read_and_translucent_is_refused(tmp_path):
    import cv2

    values = _rgb16()
    alpha = np.full(FIELD_SHAPE, 65535, np.uint16)
    cv2.imwrite(str(tmp_path / "opaque16.png"), np.dstack([values[..., ::-1], alpha]))
    assert np.array_equal(read_rgb(tmp_path / "opaque16.png"), _scaled(values))
    alpha[3, 3] = 65534
    cv2.imwrite(str(tmp_path / "glass16.png"), np.dstack([values[..., ::-1], alpha]))
    with pytest.raises(BadImageError, match="glass16.png: image is translucent: 1 of"):
        read_rgb(tmp_path / "glass16.png")


def test_48_bit_tiff_is_read_at_16_bits_and_scaled(tmp_path):
    import cv2

    values = _rgb16(seed=1)
    cv2.imwrite(str(tmp_path / "rgb16.tif"), values[..., ::-1])
    assert np.array_equal(read_rgb(tmp_path / "rgb16.tif"), _scaled(values))


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_48_bit_tiff_from_tifffile_is_read_in_both_plane_layouts(tmp_path, planar):
    import tifffile

    values = _rgb16(seed=2)
    data = values if planar == "contig" else np.moveaxis(values, -1, 0).copy()
    tifffile.imwrite(tmp_path / "rgb16.tif", data, photometric="rgb", planarconfig=planar)
    assert np.array_equal(read_rgb(tmp_path / "rgb16.tif"), _scaled(values))


def test_64_bit_rgba_tiff_translucent_is_refused(tmp_path):
    import tifffile

    alpha = np.full((*FIELD_SHAPE, 1), 65535, np.uint16)
    alpha[0, 0] = 0
    tifffile.imwrite(
        tmp_path / "glass16.tif", np.concatenate([_rgb16(), alpha], axis=2), photometric="rgb", extrasamples=["unassalpha"]
    )
    with pytest.raises(BadImageError, match="glass16.tif: image is translucent"):
        read_rgb(tmp_path / "glass16.tif")


def test_16_bit_tiff_in_another_colour_space_is_refused(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "cmyk16.tif", np.zeros((*FIELD_SHAPE, 4), np.uint16), photometric="separated")
    with pytest.raises(BadImageError, match="cmyk16.tif"):
        read_rgb(tmp_path / "cmyk16.tif")


def test_truncated_48_bit_png_is_refused(tmp_path):
    import cv2

    path = tmp_path / "cut16.png"
    cv2.imwrite(str(path), _rgb16())
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(BadImageError, match="cut16.png: unreadable or truncated"):
        read_rgb(path)


# --------------------------------------------------------------------------- orientation and pages


def _exif_with_orientation(orientation):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation):
    from PIL import Image, ImageOps

    path = tmp_path / f"turned{orientation}.png"
    _pil(_rgb()).save(path, exif=_exif_with_orientation(orientation))
    with Image.open(path) as pil_image:
        expected = np.asarray(ImageOps.exif_transpose(pil_image).convert("RGB"))
    image = read_rgb(path)
    assert image.shape == expected.shape and np.array_equal(image, expected)
    assert image.shape[:2] == (FIELD_SHAPE if orientation < 5 else FIELD_SHAPE[::-1])


def test_a_rotated_jpeg_comes_back_upright(tmp_path):
    upright = np.full((64, 128, 3), 230, np.uint8)
    upright[:20, :20] = (40, 40, 160)  # a blue mark top-left
    # A camera held sideways stores the pixels turned and the tag 6 ("rotate 90° clockwise to view").
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    _pil(stored).save(tmp_path / "sideways.jpg", exif=_exif_with_orientation(6), quality=95)
    image = read_rgb(tmp_path / "sideways.jpg")
    assert image.shape == (64, 128, 3)
    assert image[:20, :20, 2].mean() > 120 and image[:20, -20:, 2].mean() > 200 and image[:20, -20:, 0].mean() > 200


def test_multi_page_tiff_gives_its_first_page_and_logs_the_page_count(tmp_path, caplog):
    first, second = _rgb(seed=1), _rgb(seed=2)
    _pil(first).save(tmp_path / "pages.tif", save_all=True, append_images=[_pil(second)])
    with caplog.at_level(logging.WARNING, logger="smearflow.imageio"):
        image = read_rgb(tmp_path / "pages.tif")
    assert np.array_equal(image, first)
    assert "pages.tif: has 2 pages; reading the first" in caplog.text


def test_multi_page_48_bit_tiff_gives_its_first_page(tmp_path, caplog):
    import tifffile

    pages = np.stack([_rgb16(seed=1), _rgb16(seed=2), _rgb16(seed=3)])
    tifffile.imwrite(tmp_path / "pages16.tif", pages, photometric="rgb")
    with caplog.at_level(logging.WARNING, logger="smearflow.imageio"):
        image = read_rgb(tmp_path / "pages16.tif")
    assert np.array_equal(image, _scaled(pages[0]))
    assert "has 3 pages" in caplog.text


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("name", "array", "mode", "message"),
    [
        ("gray.png", np.zeros(FIELD_SHAPE, np.uint8), None, "is grayscale"),
        ("gray_alpha.png", np.zeros((*FIELD_SHAPE, 2), np.uint8), "LA", "grayscale with an alpha channel"),
        ("gray16.png", np.zeros(FIELD_SHAPE, np.uint16), None, "16-bit grayscale"),
        ("bits.png", np.zeros(FIELD_SHAPE, bool), None, "black-and-white"),
        ("gray32.tif", np.zeros(FIELD_SHAPE, np.int32), None, "32-bit integer"),
        ("float.tif", np.zeros(FIELD_SHAPE, np.float32), None, "floating-point"),
    ],
)
def test_grayscale_images_are_refused_naming_the_file(tmp_path, name, array, mode, message):
    path = tmp_path / name
    _pil(array, mode).save(path)
    with pytest.raises(BadImageError, match=message) as info:
        read_rgb(path)
    assert str(info.value).startswith(f"{tmp_path / name}: image ")
    assert "RGB colour" in str(info.value)


def test_translucent_rgba_is_refused(tmp_path):
    rgba = np.dstack([_rgb(), np.full(FIELD_SHAPE, 255, np.uint8)])
    rgba[10:12, 10:12, 3] = 254
    _pil(rgba).save(tmp_path / "glass.png")
    with pytest.raises(BadImageError, match="glass.png: image is translucent: 4 of 6,912 pixels have alpha"):
        read_rgb(tmp_path / "glass.png")


def test_palette_transparency_in_use_is_refused(tmp_path):
    indices = np.zeros(FIELD_SHAPE, np.uint8)
    indices[5, 5] = 2
    palette_image = _pil(indices, "P")
    palette_image.putpalette([200, 100, 120, 240, 230, 235, 0, 0, 0] + [0] * (256 * 3 - 9))
    palette_image.save(tmp_path / "holes.png", transparency=2)
    with pytest.raises(BadImageError, match="holes.png: image is translucent: 1 of"):
        read_rgb(tmp_path / "holes.png")


def test_another_colour_space_is_refused(tmp_path):
    _pil(_rgb()).convert("LAB").save(tmp_path / "lab.tif")
    with pytest.raises(BadImageError, match="lab.tif: image is in the LAB colour space; save the field as RGB"):
        read_rgb(tmp_path / "lab.tif")


def test_an_unsupported_bit_depth_is_refused(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "rgb32.tif", np.zeros((*FIELD_SHAPE, 3), np.uint32), photometric="rgb")
    with pytest.raises(BadImageError, match="rgb32.tif"):
        read_rgb(tmp_path / "rgb32.tif")


def test_truncated_jpeg_is_refused(tmp_path):
    path = tmp_path / "cut.jpg"
    write_rgb(path, _rgb((128, 128)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="cut.jpg: unreadable or truncated image \\(OSError: image file is truncated"):
        read_rgb(path)


def test_garbage_bytes_are_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image")
    with pytest.raises(BadImageError, match="notes.jpg: not a readable image"):
        read_rgb(path)


def test_formats_outside_the_four_are_refused(tmp_path):
    _pil(_rgb()).save(tmp_path / "field.gif")
    with pytest.raises(BadImageError, match="field.gif: not a readable image \\(not JPEG, PNG, TIFF or BMP"):
        read_rgb(tmp_path / "field.gif")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(BadImageError, match="absent.png: no such image file"):
        read_rgb(tmp_path / "absent.png")


def test_a_folder_or_a_fifo_is_not_a_regular_file(tmp_path):
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    for name in ("folder.png", "pipe.png"):
        with pytest.raises(BadImageError, match=f"{name}: not a regular file"):
            read_rgb(tmp_path / name)


def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "pipe.png")
    write_rgb(tmp_path / "real.png", _rgb())
    regular = os.lstat(tmp_path / "real.png")
    monkeypatch.setattr("smearflow.imageio.os.lstat", lambda path: regular)
    with pytest.raises(BadImageError, match="pipe.png: not a regular file"):
        read_rgb(tmp_path / "pipe.png")


# --------------------------------------------------------------------------- links and permissions


def test_a_symbolic_link_is_refused(tmp_path):
    write_rgb(tmp_path / "real.png", _rgb())
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    with pytest.raises(BadImageError, match="link.png: is a symbolic link; links are not followed"):
        read_rgb(tmp_path / "link.png")


def test_a_dangling_symbolic_link_is_refused_as_a_link(tmp_path):
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(BadImageError, match="dangling.png: is a symbolic link"):
        read_rgb(tmp_path / "dangling.png")


def test_a_link_swapped_in_after_the_check_is_not_followed(tmp_path, monkeypatch):
    write_rgb(tmp_path / "real.png", _rgb())
    (tmp_path / "swapped.png").symlink_to(tmp_path / "real.png")
    regular = os.lstat(tmp_path / "real.png")
    monkeypatch.setattr("smearflow.imageio.os.lstat", lambda path: regular)  # the check saw a plain file
    with pytest.raises(BadImageError, match="swapped.png: is a symbolic link; links are not followed"):
        read_rgb(tmp_path / "swapped.png")


def test_a_file_that_cannot_be_stat_or_opened_is_refused(tmp_path, monkeypatch):
    write_rgb(tmp_path / "locked.png", _rgb())

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("smearflow.imageio.os.open", denied)
    with pytest.raises(BadImageError, match="locked.png: cannot be opened \\(Permission denied\\)"):
        read_rgb(tmp_path / "locked.png")
    monkeypatch.setattr("smearflow.imageio.os.lstat", denied)
    with pytest.raises(BadImageError, match="locked.png: cannot be read \\(Permission denied\\)"):
        read_rgb(tmp_path / "locked.png")


def test_a_file_removed_between_check_and_open_is_missing(tmp_path, monkeypatch):
    write_rgb(tmp_path / "real.png", _rgb())
    regular = os.lstat(tmp_path / "real.png")
    monkeypatch.setattr("smearflow.imageio.os.lstat", lambda path: regular)
    with pytest.raises(BadImageError, match="gone.png: no such image file"):
        read_rgb(tmp_path / "gone.png")


# --------------------------------------------------------------------------- size limits


def _png_with_header_size(tmp_path, name, width, height):
    """A small valid PNG whose IHDR claims another size: decoding it would fail, reading the header does not."""
    buffer = io.BytesIO()
    _pil(_rgb((64, 64))).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def _forbid_decoding(monkeypatch):
    from PIL import ImageFile

    def load(self):
        raise AssertionError("decoded an image that should have been refused from its header")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_a_large_image_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch, recwarn):
    path = _png_with_header_size(tmp_path, "huge.png", 8000, 6000)
    _forbid_decoding(monkeypatch)
    with pytest.raises(BadImageError, match="huge.png: 8000×6000 px is 48,000,000 pixels, more than the 40,000,000"):
        read_rgb(path)
    assert MAX_PIXELS == 40_000_000


@pytest.mark.parametrize(("width", "height"), [(10_000, 10_000), (30_000, 30_000)])
def test_pillow_decompression_bomb_warning_and_error_never_escape(tmp_path, monkeypatch, recwarn, width, height):
    """100 MP makes Pillow warn (DecompressionBombWarning), 900 MP makes it raise (DecompressionBombError)."""
    from PIL import Image

    path = _png_with_header_size(tmp_path, "bomb.png", width, height)
    _forbid_decoding(monkeypatch)
    with pytest.raises(BadImageError, match="bomb.png: .*refused before decoding"):
        read_rgb(path)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_max_pixels_is_a_keyword(tmp_path):
    write_rgb(tmp_path / "field.png", _rgb())
    with pytest.raises(BadImageError, match="96×72 px is 6,912 pixels, more than the 6,000 read"):
        read_rgb(tmp_path / "field.png", max_pixels=6000)
    assert read_rgb(tmp_path / "field.png", max_pixels=6912).shape == (*FIELD_SHAPE, 3)


def test_a_one_pixel_image_is_refused(tmp_path):
    write_rgb(tmp_path / "dot.png", np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(BadImageError, match="dot.png: 1×1 px, smaller than the 64 px a side a field needs"):
        read_rgb(tmp_path / "dot.png", min_side_px=MIN_FIELD_SIDE_PX)
    assert MIN_FIELD_SIDE_PX == 64
    assert read_rgb(tmp_path / "dot.png").shape == (1, 1, 3)  # any size unless asked: crops and masks are images too


def test_min_side_px_is_a_keyword_and_counts_the_upright_image(tmp_path):
    write_rgb(tmp_path / "strip.png", np.zeros((20, 300, 3), np.uint8))
    with pytest.raises(BadImageError, match="300×20 px, smaller than the 21 px a side a field needs"):
        read_rgb(tmp_path / "strip.png", min_side_px=21)
    assert read_rgb(tmp_path / "strip.png", min_side_px=20).shape == (20, 300, 3)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"max_pixels": 0}, "max_pixels must be a positive integer. Received: max_pixels=0"),
        ({"max_pixels": 1.5}, "max_pixels must be a positive integer. Received: max_pixels=1.5"),
        ({"min_side_px": -1}, "min_side_px must be a positive integer. Received: min_side_px=-1"),
        ({"min_side_px": True}, "min_side_px must be a positive integer. Received: min_side_px=True"),
    ],
)
def test_size_keywords_are_validated(tmp_path, keywords, message):
    write_rgb(tmp_path / "field.png", _rgb())
    with pytest.raises(ValueError, match=message):
        read_rgb(tmp_path / "field.png", **keywords)


# --------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad value"),
        SyntaxError("not a TIFF"),
        struct.error("unpack requires a buffer"),
        OSError("broken data stream"),
        EOFError(),
        MemoryError(),
        IndexError("list index out of range"),
        ZeroDivisionError("division by zero"),
        KeyError(b"\xff\xfe"),
    ],
)
def test_any_decoder_exception_becomes_a_bad_image_error(tmp_path, monkeypatch, error):
    from PIL import ImageFile

    write_rgb(tmp_path / "hostile.png", _rgb())

    def load(self):
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(BadImageError, match=f"hostile.png: unreadable or truncated image \\({type(error).__name__}"):
        read_rgb(tmp_path / "hostile.png")


def test_an_exception_from_the_header_parser_becomes_a_bad_image_error(tmp_path, monkeypatch):
    from PIL import Image

    write_rgb(tmp_path / "hostile.png", _rgb())

    def open_image(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(Image, "open", open_image)
    with pytest.raises(BadImageError, match="hostile.png: unreadable or truncated image \\(error: unpack"):
        read_rgb(tmp_path / "hostile.png")


def _fuzzed_files(tmp_path):
    import cv2
    import tifffile

    image = _rgb((64, 64))
    originals = {}
    for suffix, save in (
        (".png", lambda p: _pil(image).save(p)),
        (".jpg", lambda p: _pil(image).save(p, quality=90)),
        (".bmp", lambda p: _pil(image).save(p)),
        (".tif", lambda p: _pil(image).save(p, compression="tiff_lzw")),
        ("16.png", lambda p: cv2.imwrite(str(p), _rgb16((64, 64)))),
        ("16.tif", lambda p: tifffile.imwrite(p, _rgb16((64, 64)), photometric="rgb", compression="zlib")),
    ):
        path = tmp_path / f"original{suffix}"
        save(path)
        originals[suffix] = path.read_bytes()
    rng = np.random.default_rng(7)
    for suffix, data in originals.items():
        for trial in range(60):
            mutated = bytearray(data)
            if trial % 3 == 0:
                mutated = mutated[: int(rng.integers(1, len(mutated)))]
            else:
                for position in rng.integers(0, len(mutated), size=int(rng.integers(1, 12))):
                    mutated[position] = int(rng.integers(0, 256))
            yield suffix, trial, bytes(mutated)


def test_corrupted_files_give_an_image_or_a_bad_image_error_never_anything_else(tmp_path):
    outcomes = {"read": 0, "refused": 0}
    for suffix, trial, data in _fuzzed_files(tmp_path):
        path = tmp_path / f"fuzz_{trial}{suffix}"
        path.write_bytes(data)
        try:
            image = read_rgb(path)
        except BadImageError as error:
            assert str(error).startswith(str(path)), str(error)
            outcomes["refused"] += 1
        else:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            outcomes["read"] += 1
    assert outcomes["refused"] > 100


# --------------------------------------------------------------------------- file names


def test_display_name_escapes_bytes_that_are_not_utf8_and_control_characters():
    assert display_name(os.fsdecode(b"field_\xff.png")) == "field_\\xff.png"
    assert display_name(b"/slides/S\xe9/f.png") == "/slides/S\\xe9/f.png"
    assert display_name("two\nlines\t.png") == "two\\nlines\\t.png"
    assert display_name("Blutausstrich_ä_µm.png") == "Blutausstrich_ä_µm.png"
    assert display_name("lone\ud800.png") == "lone\\ud800.png"


def test_errors_about_a_file_name_that_is_not_utf8_can_be_printed_and_stored(tmp_path):
    folder = os.fsencode(tmp_path)
    bad_name = os.path.join(folder, b"field_\xff.png")
    with open(bad_name, "wb") as file:
        file.write(b"not an image")
    path = os.fsdecode(bad_name)
    with pytest.raises(BadImageError) as info:
        read_rgb(path)
    message = str(info.value)
    message.encode("utf-8")  # never raises: PostgreSQL and log files get valid text
    assert "field_\\xff.png: not a readable image" in message
    with pytest.raises(BadImageError) as info:
        read_rgb(os.fsdecode(os.path.join(folder, b"missing_\xfe.png")))
    assert "missing_\\xfe.png: no such image file" in str(info.value).encode("utf-8").decode("utf-8")


def test_a_field_whose_name_is_not_utf8_still_reads(tmp_path):
    path = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"field_\xff.png"))
    image = _rgb()
    write_rgb(path, image)
    assert np.array_equal(read_rgb(path), image)


def test_a_warning_from_pillow_is_logged_with_the_file_name(tmp_path, monkeypatch, caplog):
    import warnings

    from PIL import ImageFile

    write_rgb(tmp_path / "odd.png", _rgb())
    original_load = ImageFile.ImageFile.load

    def load(self):
        warnings.warn("Possibly corrupt EXIF data", UserWarning)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with caplog.at_level(logging.WARNING, logger="smearflow.imageio"):
        read_rgb(tmp_path / "odd.png")
    assert "odd.png: Possibly corrupt EXIF data" in caplog.text


# --------------------------------------------------------------------------- the other helpers


def test_is_image_file_skips_hidden_and_other_suffixes(tmp_path):
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "field.TIFF").write_bytes(b"")
    assert not is_image_file(tmp_path / ".hidden.png")
    assert not is_image_file(tmp_path / "readme.txt")
    assert is_image_file(tmp_path / "field.TIFF")
    assert IMAGE_SUFFIXES == {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


def test_read_mask(tmp_path):
    mask = np.array([[0, 128], [255, 0]], np.uint8)
    _pil(mask).save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)


def test_read_mask_rejects_rgb_and_garbage(tmp_path):
    write_rgb(tmp_path / "rgb.png", _rgb())
    with pytest.raises(BadImageError, match="not single-channel"):
        read_mask(tmp_path / "rgb.png")
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(BadImageError, match="unreadable mask"):
        read_mask(tmp_path / "bad.png")
