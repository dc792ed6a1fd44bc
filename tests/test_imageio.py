import numpy as np
import pytest

from smearflow.errors import BadImageError
from smearflow.imageio import is_image_file, read_mask, read_rgb, write_rgb


def _rgb(shape=(12, 16)):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_lossless_round_trip_keeps_rgb_order(tmp_path, suffix):
    image = _rgb()
    path = tmp_path / f"field{suffix}"
    write_rgb(path, image)
    assert np.array_equal(read_rgb(path), image)


def test_jpeg_reads_as_rgb_not_bgr(tmp_path):
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[..., 0] = 200  # pure red
    write_rgb(tmp_path / "red.jpg", image)
    pixels = read_rgb(tmp_path / "red.jpg")
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    assert pixels[..., 0].mean() > 150 and pixels[..., 2].mean() < 50


def _save_pil(path, array, mode=None):
    from PIL import Image

    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("gray.png", np.zeros((8, 8), np.uint8), "grayscale"),
        ("rgba.png", np.zeros((8, 8, 4), np.uint8), "alpha"),
        ("gray16.png", np.zeros((8, 8), np.uint16), "16-bit"),
    ],
)
def test_non_rgb_images_are_rejected_naming_the_file(tmp_path, name, array, message):
    path = tmp_path / name
    _save_pil(path, array)
    with pytest.raises(BadImageError, match=message) as info:
        read_rgb(path)
    assert name in str(info.value)


def test_48_bit_rgb_png_is_rejected(tmp_path):
    import cv2

    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), np.full((8, 8, 3), 40000, np.uint16))
    with pytest.raises(BadImageError, match="16 bits per channel") as info:
        read_rgb(path)
    assert "rgb16.png" in str(info.value)


def test_16_bit_rgb_tiff_is_rejected(tmp_path):
    import cv2

    path = tmp_path / "rgb16.tif"
    cv2.imwrite(str(path), np.full((8, 8, 3), 40000, np.uint16))
    with pytest.raises(BadImageError, match="rgb16.tif"):
        read_rgb(path)


def test_truncated_jpeg_is_rejected(tmp_path):
    path = tmp_path / "cut.jpg"
    write_rgb(path, _rgb((64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="cut.jpg.*truncated"):
        read_rgb(path)


def test_garbage_bytes_are_rejected(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image")
    with pytest.raises(BadImageError, match="notes.jpg: not a readable image"):
        read_rgb(path)


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(BadImageError, match="no such image file"):
        read_rgb(tmp_path / "absent.png")


def test_palette_image_is_rejected(tmp_path):
    from PIL import Image

    path = tmp_path / "palette.png"
    Image.fromarray(_rgb()).convert("P").save(path)
    with pytest.raises(BadImageError, match="palette"):
        read_rgb(path)


def test_cmyk_image_is_rejected(tmp_path):
    from PIL import Image

    path = tmp_path / "cmyk.jpg"
    Image.fromarray(_rgb()).convert("CMYK").save(path)
    with pytest.raises(BadImageError, match="CMYK"):
        read_rgb(path)


def test_unlisted_mode_is_rejected(tmp_path):
    from PIL import Image

    path = tmp_path / "ycbcr.jpg"
    Image.fromarray(_rgb()).convert("YCbCr").save(path, format="TIFF")
    with pytest.raises(BadImageError, match="ycbcr.jpg"):
        read_rgb(path)


def test_write_rgb_rejects_non_rgb_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_rgb(tmp_path / "x.png", np.zeros((4, 4), np.uint8))


def test_is_image_file_skips_hidden_and_other_suffixes(tmp_path):
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "field.TIFF").write_bytes(b"")
    assert not is_image_file(tmp_path / ".hidden.png")
    assert not is_image_file(tmp_path / "readme.txt")
    assert is_image_file(tmp_path / "field.TIFF")


def test_read_mask(tmp_path):
    mask = np.array([[0, 128], [255, 0]], np.uint8)
    _save_pil(tmp_path / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)


def test_read_mask_rejects_rgb_and_garbage(tmp_path):
    write_rgb(tmp_path / "rgb.png", _rgb())
    with pytest.raises(BadImageError, match="not single-channel"):
        read_mask(tmp_path / "rgb.png")
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(BadImageError, match="unreadable mask"):
        read_mask(tmp_path / "bad.png")
