import numpy as np
import pytest

from smearflow.training.augment import (
    AUGMENTATIONS,
    augment,
    colour_jitter,
    jpeg_roundtrip,
    lose_resolution,
    stain_jitter,
)


def _image(size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("recipe", AUGMENTATIONS)
def test_every_recipe_keeps_dtype_resizes_and_follows_the_seed(recipe):
    image = _image(48)
    out = augment(image, np.random.default_rng(1), out_size_px=24, recipe=recipe)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, augment(image, np.random.default_rng(1), out_size_px=24, recipe=recipe))


def test_stain_jitter_without_jitter_is_the_identity():
    image = _image()
    out = stain_jitter(image, np.random.default_rng(0), scale_sd=0.0, shift_sd=0.0)
    assert np.abs(out.astype(int) - image).max() <= 1


def test_stain_jitter_changes_the_stain_amounts():
    image = np.full((8, 8, 3), (150, 90, 200), np.uint8)
    outs = [stain_jitter(image, np.random.default_rng(seed), scale_sd=0.5, shift_sd=0.0) for seed in range(4)]
    assert all(out.dtype == np.uint8 for out in outs)
    assert max(np.abs(out.astype(int) - image).max() for out in outs) > 20


def test_colour_jitter_without_ranges_keeps_the_image():
    image = _image()
    same = colour_jitter(image, np.random.default_rng(0), hue_deg=0, saturation=0, brightness=0, contrast=0, channel_gain=0)
    assert np.abs(same.astype(int) - image).max() <= 6  # HSV round trip in 8 bits


def test_lose_resolution_and_jpeg_blur_fine_detail():
    checker = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, axis=2)
    assert lose_resolution(image, 2.0).std() < image.std() / 2
    assert jpeg_roundtrip(image, 10).shape == image.shape


def test_geometry_only_at_strength_zero_keeps_colours():
    image = np.full((32, 32, 3), (200, 100, 50), np.uint8)
    out = augment(image, np.random.default_rng(3), recipe="domain", strength=0.0)
    np.testing.assert_array_equal(out, image)


def test_augment_rejects_unknown_recipes_and_negative_strength():
    with pytest.raises(ValueError, match="recipe must be one of"):
        augment(_image(), np.random.default_rng(0), recipe="heavy")
    with pytest.raises(ValueError, match="strength must be >= 0. Received: strength=-1"):
        augment(_image(), np.random.default_rng(0), strength=-1)
