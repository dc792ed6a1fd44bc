"""Training augmentation: geometry, and the look of other microscopes.

Two recipes, by name (:data:`AUGMENTATIONS`):

``"basic"``
    Flip, rotation, ±10% zoom, small shift, mild per-channel gain and offset
    (the augmentation of the earlier default models).
``"domain"``
    The same geometry with a wider zoom (another magnification, an error in
    the red-cell diameter estimate), then what another device changes in a
    crop: stain amounts in a colour-deconvolution (haematoxylin-eosin-DAB)
    space, hue, saturation, brightness and contrast, loss of resolution
    (shrink and re-enlarge: a blurrier objective or a smaller camera), JPEG
    compression and sensor noise. ``strength`` scales every range.

Every function takes and returns ``uint8`` RGB images and draws from the
generator it is given, so a seed fixes the result.
"""

from __future__ import annotations

import numpy as np

# Ruifrok & Johnston's stain vectors as in skimage.color (rgb_from_hed); copied so
# that augmentation needs no scikit-image import in the data-loading threads.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

AUGMENTATIONS = ("basic", "domain")
"""Recipe names accepted by :func:`augment`."""


def warp(image: np.ndarray, rng: np.random.Generator, scale_range: tuple[float, float]) -> np.ndarray:
    """Random horizontal flip, any rotation, a zoom drawn log-uniformly from ``scale_range`` and a ±6% shift.

    The image keeps its size; the border is reflected.
    """
    import cv2

    size = image.shape[0]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    angle = rng.uniform(0, 360)
    scale = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.06, 0.06, size=2) * size
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), borderMode=cv2.BORDER_REFLECT_101)


def stain_jitter(image: np.ndarray, rng: np.random.Generator, scale_sd: float, shift_sd: float) -> np.ndarray:
    """Scale and shift each stain's optical density (Tellez et al. 2018's HED augmentation).

    Pixels become optical densities, are projected on the haematoxylin, eosin
    and DAB vectors, each stain amount is multiplied by ``1 + N(0, scale_sd)``
    and shifted by ``N(0, shift_sd)``, and the result is projected back.
    """
    optical_density = -np.log((image.astype(np.float64) + 1.0) / 256.0)
    stains = optical_density.reshape(-1, 3) @ HED_FROM_RGB
    stains = stains * (1.0 + rng.normal(0.0, scale_sd, size=3)) + rng.normal(0.0, shift_sd, size=3)
    rgb = 256.0 * np.exp(-(stains @ RGB_FROM_HED)) - 1.0
    return np.clip(rgb.reshape(image.shape), 0, 255).astype(np.uint8)


def colour_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    hue_deg: float,
    saturation: float,
    brightness: float,
    contrast: float,
    channel_gain: float,
) -> np.ndarray:
    """Hue shift (±``hue_deg``), saturation, brightness and contrast factors (1 ± the value), per-channel gain."""
    import cv2

    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV).astype(np.float32)
    # OpenCV's 8-bit hue runs 0..180 (two degrees a unit).
    hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-hue_deg, hue_deg) / 2.0, 180.0)
    hsv[..., 1] *= rng.uniform(1 - saturation, 1 + saturation)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    out = out * rng.uniform(1 - brightness, 1 + brightness) * rng.uniform(1 - channel_gain, 1 + channel_gain, size=3)
    return np.clip(out, 0, 255).astype(np.uint8)


def lose_resolution(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrink by ``factor`` (area) and enlarge back (bilinear): the blur of a coarser optic or camera."""
    import cv2

    size = image.shape[0]
    small = max(4, int(round(size / factor)))
    shrunk = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
    return cv2.resize(shrunk, (size, size), interpolation=cv2.INTER_LINEAR)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at ``quality`` (1–100) and decode again."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        return image
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]


def augment(
    image: np.ndarray,
    rng: np.random.Generator,
    out_size_px: int | None = None,
    *,
    recipe: str = "domain",
    strength: float = 1.0,
) -> np.ndarray:
    """Augment one ``uint8`` RGB training image.

    The warp runs at the size of ``image`` (the training code keeps images
    at twice the input size, see :data:`smearflow.training.data.AUGMENT_OVERSAMPLING`);
    the result is shrunk to ``out_size_px`` with the inference resize, and
    the photometric changes run at that size.

    Parameters
    ----------
    image : ndarray of shape (M, M, 3), uint8
    rng : numpy.random.Generator
    out_size_px : int, optional
        Output side; default the input's.
    recipe : {"basic", "domain"}
        See the module docstring.
    strength : float
        Multiplies the photometric ranges of ``"domain"`` (0: geometry only).

    Returns
    -------
    ndarray of shape (out_size_px, out_size_px, 3), uint8

    Raises
    ------
    ValueError
        For an unknown recipe or a negative strength.
    """
    from smearflow.classifier.preprocessing import resize_rgb

    if recipe not in AUGMENTATIONS:
        raise ValueError(f"recipe must be one of {list(AUGMENTATIONS)}. Received: recipe={recipe!r}")
    if strength < 0:
        raise ValueError(f"strength must be >= 0. Received: strength={strength}")
    out_size_px = out_size_px or image.shape[0]
    if recipe == "basic":
        image = resize_rgb(warp(image, rng, (0.9, 1.1)), out_size_px)
        gain = rng.uniform(0.9, 1.1, size=3) * rng.uniform(0.9, 1.1)
        offset = rng.uniform(-12, 12, size=3)
        return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
    image = resize_rgb(warp(image, rng, (0.8, 1.25)), out_size_px)
    if strength == 0:
        return image
    s = strength
    if rng.random() < 0.8:
        image = stain_jitter(image, rng, scale_sd=0.15 * s, shift_sd=0.03 * s)
    image = colour_jitter(
        image, rng, hue_deg=12 * s, saturation=0.3 * s, brightness=0.2 * s, contrast=0.25 * s, channel_gain=0.08 * s
    )
    if rng.random() < 0.4:
        image = lose_resolution(image, rng.uniform(1.2, 1.0 + 1.5 * s))
    if rng.random() < 0.3:
        image = jpeg_roundtrip(image, int(rng.integers(max(5, int(round(95 - 65 * s))), 96)))
    if rng.random() < 0.2:
        noisy = image.astype(np.float32) + rng.normal(0, rng.uniform(1, 1 + 4 * s), size=image.shape)
        image = np.clip(noisy, 0, 255).astype(np.uint8)
    return image
