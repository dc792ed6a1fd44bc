"""Synthetic blood-smear fields with known cells, for tests and demos.

A field is drawn as light passing through stained cells: the background
colour is multiplied by ``exp(-optical density)`` of every cell above it, so
overlapping red cells are darker where they overlap, as on a real slide. Red
cells are pink discs whose density is lower in the centre (central pallor);
white cells are a pale lilac cytoplasm disc around a dark purple nucleus,
round or of two to four lobes joined by thin strands; platelets are small
purple blobs, a dense granular core in a pale rim. Blur, vignetting and
noise follow.

Every drawn cell is recorded as a :class:`TruthCell` with its centre, radius,
and what the border rule of :mod:`smearflow.segmentation.border` says about
it, so a segmenter can be scored against the truth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from smearflow.segmentation.border import is_counted
from smearflow.types import CellKind

__all__ = ["SyntheticSmear", "TruthCell", "make_smear", "write_demo_slides"]

BACKGROUND_RGB = (228.0, 221.0, 226.0)
"""Lamp colour seen through the empty slide: a pale pinkish grey."""

# Optical density per channel (R, G, B) of each stain at unit thickness.
_RBC_DENSITY = np.array([0.10, 0.42, 0.30])
_CYTOPLASM_DENSITY = np.array([0.14, 0.14, 0.05])
_NUCLEUS_DENSITY = np.array([1.00, 1.10, 0.38])
_PLATELET_DENSITY = np.array([0.55, 0.62, 0.18])

_MAX_PLACEMENT_TRIES = 200
_PLACEMENT_BATCH = 256
_PLACEMENT_BATCHES = 32
_RBC_CENTRE_OUTSIDE = 0.3
_DEMO_FIRST_COLLECTION = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TruthCell:
    """One drawn cell.

    Attributes
    ----------
    kind : {"wbc", "rbc", "platelet"}
    centroid : tuple of float
        ``(row, col)`` of the disc centre, in field pixels (may lie outside
        the field for cells cut by the edge).
    radius_px : float
        Disc radius (for a white cell, of its cytoplasm).
    touches_border : bool
        The disc reaches beyond the field.
    counted : bool
        The border rule counts it.
    visible_fraction : float
        Share of the disc inside the field.
    n_lobes : int
        Nucleus lobes of a white cell (1 = round nucleus); 0 for other kinds.
    pair_id : int
        Index of the touching pair a red cell belongs to, or -1.
    """

    kind: CellKind
    centroid: tuple[float, float]
    radius_px: float
    touches_border: bool = False
    counted: bool = True
    visible_fraction: float = 1.0
    n_lobes: int = 0
    pair_id: int = -1


@dataclass(frozen=True)
class SyntheticSmear:
    """A synthetic field and what is in it.

    Attributes
    ----------
    image : ndarray of shape (M, N, 3), uint8
        RGB field.
    truth : tuple of TruthCell
        Every drawn cell.
    rbc_diameter_px : float
        Mean red-cell diameter used to draw it.
    nucleus_mask : ndarray of shape (M, N), bool
        White-cell nucleus pixels.
    wbc_mask : ndarray of shape (M, N), bool
        White-cell pixels (cytoplasm and nucleus).
    """

    image: np.ndarray = field(repr=False)
    truth: tuple[TruthCell, ...]
    rbc_diameter_px: float
    nucleus_mask: np.ndarray = field(repr=False, compare=False)
    wbc_mask: np.ndarray = field(repr=False, compare=False)

    def of_kind(self, kind: CellKind) -> tuple[TruthCell, ...]:
        """The drawn cells of one kind."""
        return tuple(cell for cell in self.truth if cell.kind == kind)

    def count(self, kind: CellKind) -> int:
        """Drawn cells of one kind that the border rule counts."""
        return sum(1 for cell in self.truth if cell.kind == kind and cell.counted)


def make_smear(
    seed: int,
    shape: tuple[int, int] = (480, 640),
    n_wbc: int = 2,
    n_rbc: int = 40,
    n_platelets: int = 4,
    rbc_diameter_px: float = 70.0,
    touching_rbc_pairs: int = 5,
    *,
    lobed_fraction: float = 0.5,
    noise_sigma: float = 3.0,
    blur_sigma_px: float = 1.0,
    vignetting: float = 0.06,
) -> SyntheticSmear:
    """Draw a synthetic Giemsa-like smear field with known cells.

    White cells and platelets lie wholly inside the field; red cells may be
    cut by its edge. ``touching_rbc_pairs`` of the red cells come as pairs
    whose discs overlap slightly (centres 0.75 to 0.9 diameters apart); the
    other cells keep a gap of at least 0.06 red-cell diameters.

    Parameters
    ----------
    seed : int
        Seed of the random generator; one seed, one field.
    shape : tuple of int
        ``(rows, cols)`` of the field.
    n_wbc, n_rbc, n_platelets : int
        How many cells of each kind (``n_rbc`` includes the paired ones).
    rbc_diameter_px : float
        Mean red-cell diameter; single cells vary by +-6 %.
    touching_rbc_pairs : int
        Pairs of overlapping red cells, at most ``n_rbc // 2``.
    lobed_fraction : float
        Probability that a white cell has a lobed nucleus.
    noise_sigma : float
        Standard deviation of the Gaussian pixel noise, in 8-bit levels.
    blur_sigma_px : float
        Gaussian blur of the optics.
    vignetting : float
        Relative darkening of the corners.

    Returns
    -------
    SyntheticSmear

    Raises
    ------
    ValueError
        When a count is negative, ``touching_rbc_pairs`` exceeds
        ``n_rbc // 2``, ``rbc_diameter_px`` is not positive or does not fit
        the field, a fraction is outside [0, 1], or the cells asked for do
        not fit in the field.
    """
    rows, cols = (int(shape[0]), int(shape[1]))
    counts = {"n_wbc": n_wbc, "n_rbc": n_rbc, "n_platelets": n_platelets, "touching_rbc_pairs": touching_rbc_pairs}
    _check_smear_arguments(shape, counts, rbc_diameter_px, lobed_fraction, noise_sigma, blur_sigma_px, vignetting)
    rng = np.random.default_rng(seed)
    diameter = float(rbc_diameter_px)
    asked = f"shape={shape}, n_wbc={n_wbc}, n_rbc={n_rbc}, n_platelets={n_platelets}, rbc_diameter_px={rbc_diameter_px}"
    layout = _Layout(rng, (rows, cols), diameter, asked)
    # The random draws come in a fixed order (placement, then painting, then noise): one seed, one field.
    wbc_specs = _place_wbcs(layout, n_wbc, lobed_fraction)
    rbc_specs = _place_rbcs(layout, n_rbc, touching_rbc_pairs, shape)
    platelet_specs = _place_platelets(layout, n_platelets)
    truth = [TruthCell("wbc", (row, col), radius, n_lobes=n_lobes) for row, col, radius, n_lobes in wbc_specs]
    truth += [TruthCell("rbc", (row, col), radius, pair_id=pair) for row, col, radius, pair in rbc_specs]
    truth += [TruthCell("platelet", (row, col), radius) for row, col, radius in platelet_specs]

    density = np.zeros((rows, cols, 3), dtype=np.float64)
    _paint_rbcs(density, rbc_specs)
    nucleus_mask, wbc_mask = _paint_wbcs(rng, density, wbc_specs)
    _paint_platelets(rng, density, platelet_specs)
    image = _through_the_optics(rng, density, vignetting, blur_sigma_px, noise_sigma)
    truth = [_with_border(cell, (rows, cols)) for cell in truth]
    return SyntheticSmear(image, tuple(truth), diameter, nucleus_mask=nucleus_mask, wbc_mask=wbc_mask)


def _check_smear_arguments(
    shape, counts: dict[str, int], rbc_diameter_px, lobed_fraction, noise_sigma, blur_sigma_px, vignetting
) -> None:
    """The ``ValueError`` of :func:`make_smear` for arguments out of range."""
    rows, cols = (int(shape[0]), int(shape[1]))
    n_rbc, touching_rbc_pairs = counts["n_rbc"], counts["touching_rbc_pairs"]
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be zero or positive. Received: {name}={value}")
    if touching_rbc_pairs > n_rbc // 2:
        raise ValueError(
            "touching_rbc_pairs must be at most n_rbc // 2. "
            f"Received: touching_rbc_pairs={touching_rbc_pairs}, n_rbc={n_rbc}"
        )
    if not rbc_diameter_px > 0 or 2.0 * rbc_diameter_px > min(rows, cols):
        raise ValueError(
            "rbc_diameter_px must be positive and at most half the field's shorter side. "
            f"Received: rbc_diameter_px={rbc_diameter_px}, shape={shape}"
        )
    for name, value in (("lobed_fraction", lobed_fraction), ("vignetting", vignetting)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value}")
    if noise_sigma < 0 or blur_sigma_px < 0:
        raise ValueError(
            f"noise_sigma and blur_sigma_px must be zero or positive. Received: noise_sigma={noise_sigma}, blur_sigma_px={blur_sigma_px}"
        )


class _Layout:
    """Where the discs of a field go: random places that keep a gap to every disc placed so far."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], diameter: float, asked: str):
        self.rng = rng
        self.rows, self.cols = shape
        self.diameter = diameter
        self.gap = 0.06 * diameter
        self.asked = asked  # the arguments, named when the cells do not fit
        self.placed: list[tuple[float, float, float]] = []  # (row, col, radius) of every disc so far

    def fits(self, row: float, col: float, radius: float) -> bool:
        """Whether a disc at ``(row, col)`` keeps the gap to every placed disc."""
        if not self.placed:
            return True
        others = np.asarray(self.placed)
        return bool(np.all(np.hypot(others[:, 0] - row, others[:, 1] - col) >= others[:, 2] + radius + self.gap))

    def place(self, radius: float, inside: bool) -> tuple[float, float]:
        """A free centre for a disc (not yet recorded: call :meth:`add`)."""
        # Red cells may be cut by the edge: their centres may lie a little outside.
        margin = radius + 2.0 if inside else -_RBC_CENTRE_OUTSIDE * self.diameter
        others = np.asarray(self.placed) if self.placed else np.zeros((0, 3))
        for _ in range(_PLACEMENT_BATCHES):
            candidates = np.column_stack([
                self.rng.uniform(margin, self.rows - margin, _PLACEMENT_BATCH),
                self.rng.uniform(margin, self.cols - margin, _PLACEMENT_BATCH),
            ])
            distance = np.hypot(candidates[:, None, 0] - others[None, :, 0], candidates[:, None, 1] - others[None, :, 1])
            free = np.all(distance >= others[None, :, 2] + radius + self.gap, axis=1)
            if free.any():
                row, col = candidates[np.argmax(free)]
                return float(row), float(col)
        raise ValueError(f"the cells asked for do not fit in the field. Received: {self.asked}")

    def add(self, row: float, col: float, radius: float) -> None:
        self.placed.append((row, col, radius))


def _place_wbcs(layout: _Layout, n_wbc: int, lobed_fraction: float) -> list[tuple[float, float, float, int]]:
    """``(row, col, radius, n_lobes)`` of each white cell, wholly inside the field."""
    rng, specs = layout.rng, []
    for _ in range(n_wbc):
        radius = layout.diameter * rng.uniform(0.75, 0.92)
        row, col = layout.place(radius, inside=True)
        layout.add(row, col, radius)
        n_lobes = int(rng.integers(2, 5)) if rng.random() < lobed_fraction else 1
        specs.append((row, col, radius, n_lobes))
    return specs


def _place_rbcs(layout: _Layout, n_rbc: int, touching_pairs: int, shape) -> list[tuple[float, float, float, int]]:
    """``(row, col, radius, pair_id)`` of each red cell: the touching pairs first, then single cells."""
    rng, specs = layout.rng, []
    for pair in range(touching_pairs):
        radius_a = 0.5 * layout.diameter * rng.uniform(0.94, 1.06)
        radius_b = 0.5 * layout.diameter * rng.uniform(0.94, 1.06)
        for _ in range(_MAX_PLACEMENT_TRIES):
            row_a, col_a = layout.place(radius_a, inside=False)
            angle = rng.uniform(0, 2 * math.pi)
            distance = (radius_a + radius_b) * rng.uniform(0.75, 0.9)
            row_b, col_b = row_a + distance * math.sin(angle), col_a + distance * math.cos(angle)
            if 0 <= row_b < layout.rows and 0 <= col_b < layout.cols and layout.fits(row_b, col_b, radius_b):
                break
        else:
            raise ValueError(f"could not place touching red-cell pair {pair}. Received: shape={shape}, n_rbc={n_rbc}")
        layout.add(row_a, col_a, radius_a)
        layout.add(row_b, col_b, radius_b)
        specs.extend([(row_a, col_a, radius_a, pair), (row_b, col_b, radius_b, pair)])
    for _ in range(n_rbc - 2 * touching_pairs):
        radius = 0.5 * layout.diameter * rng.uniform(0.94, 1.06)
        row, col = layout.place(radius, inside=False)
        layout.add(row, col, radius)
        specs.append((row, col, radius, -1))
    return specs


def _place_platelets(layout: _Layout, n_platelets: int) -> list[tuple[float, float, float]]:
    """``(row, col, radius)`` of each platelet, wholly inside the field."""
    specs = []
    for _ in range(n_platelets):
        radius = layout.diameter * layout.rng.uniform(0.15, 0.2)
        row, col = layout.place(radius, inside=True)
        layout.add(row, col, radius)
        specs.append((row, col, radius))
    return specs


def _paint_rbcs(density: np.ndarray, specs) -> None:
    """Add the red cells' optical density (pink discs, thinner in the centre)."""
    for row, col, radius, _ in specs:
        window, rho = _disc_window(row, col, radius * 1.0 + 1.5, density.shape[:2])
        if window is None:
            continue
        coverage = np.clip(radius - rho + 0.5, 0.0, 1.0)
        # Thicker rim, thinner centre: the central pallor of a biconcave disc.
        thickness = 0.35 + 0.65 * np.clip(rho / radius, 0.0, 1.0) ** 2
        density[window] += (coverage * thickness)[..., None] * _RBC_DENSITY


def _paint_wbcs(rng: np.random.Generator, density: np.ndarray, specs) -> tuple[np.ndarray, np.ndarray]:
    """Add the white cells' density (cytoplasm, then nucleus); their nucleus and cell masks."""
    nucleus_mask = np.zeros(density.shape[:2], dtype=bool)
    wbc_mask = np.zeros(density.shape[:2], dtype=bool)
    for row, col, radius, n_lobes in specs:
        window, rho = _disc_window(row, col, radius + 1.5, density.shape[:2])
        coverage = np.clip(radius - rho + 0.5, 0.0, 1.0)
        density[window] += coverage[..., None] * _CYTOPLASM_DENSITY
        wbc_mask[window] |= coverage >= 0.5
        nucleus = _nucleus_coverage(rng, row, col, radius, n_lobes, window)
        density[window] += nucleus[..., None] * (_NUCLEUS_DENSITY * rng.uniform(0.85, 1.1))
        nucleus_mask[window] |= nucleus >= 0.5
    return nucleus_mask, wbc_mask


def _paint_platelets(rng: np.random.Generator, density: np.ndarray, specs) -> None:
    """Add the platelets' density: a pale rim (hyalomere) around a dense granular core of two offset blobs."""
    for row, col, radius in specs:
        window, rho = _disc_window(row, col, radius + 1.5, density.shape[:2])
        rim = np.clip(radius - rho + 0.5, 0.0, 1.0)
        rows_grid, cols_grid = np.mgrid[window]
        core = np.zeros(rim.shape)
        for angle in rng.uniform(0, 2 * math.pi, 2):
            rho_core = np.hypot(rows_grid - (row + 0.3 * radius * math.sin(angle)), cols_grid - (col + 0.3 * radius * math.cos(angle)))
            core = np.maximum(core, np.clip(0.55 * radius - rho_core + 0.5, 0.0, 1.0))
        strength = rng.uniform(0.85, 1.15)
        density[window] += (0.3 * rim + 0.9 * core)[..., None] * _PLATELET_DENSITY * strength


def _through_the_optics(
    rng: np.random.Generator, density: np.ndarray, vignetting: float, blur_sigma_px: float, noise_sigma: float
) -> np.ndarray:
    """The RGB ``uint8`` field: lamp light through the density, vignetting, blur and noise."""
    rows, cols = density.shape[:2]
    transmitted = np.asarray(BACKGROUND_RGB) * np.exp(-density)
    if vignetting:
        row_rel = (np.arange(rows) / rows - 0.5)[:, None]
        col_rel = (np.arange(cols) / cols - 0.5)[None, :]
        transmitted *= (1.0 - 2.0 * vignetting * (row_rel**2 + col_rel**2))[..., None]
    if blur_sigma_px:
        from scipy import ndimage

        transmitted = ndimage.gaussian_filter(transmitted, sigma=(blur_sigma_px, blur_sigma_px, 0))
    transmitted += rng.normal(0.0, noise_sigma, transmitted.shape) if noise_sigma else 0.0
    return np.clip(np.round(transmitted), 0, 255).astype(np.uint8)


def _disc_window(row: float, col: float, reach: float, shape: tuple[int, int]):
    """Slices of the field around a disc and the distance of each pixel to its centre."""
    rows, cols = shape
    r0, r1 = max(0, int(math.floor(row - reach))), min(rows, int(math.ceil(row + reach)) + 1)
    c0, c1 = max(0, int(math.floor(col - reach))), min(cols, int(math.ceil(col + reach)) + 1)
    if r0 >= r1 or c0 >= c1:
        return None, None
    window = (slice(r0, r1), slice(c0, c1))
    rows_grid, cols_grid = np.mgrid[window]
    return window, np.hypot(rows_grid - row, cols_grid - col)


def _nucleus_coverage(rng: np.random.Generator, row: float, col: float, radius: float, n_lobes: int, window) -> np.ndarray:
    rows_grid, cols_grid = np.mgrid[window]
    if n_lobes == 1:
        nucleus_radius = radius * rng.uniform(0.55, 0.7)
        offset = radius * 0.1
        angle = rng.uniform(0, 2 * math.pi)
        rho = np.hypot(rows_grid - (row + offset * math.sin(angle)), cols_grid - (col + offset * math.cos(angle)))
        return np.clip(nucleus_radius - rho + 0.5, 0.0, 1.0)
    lobe_radius = radius * rng.uniform(0.3, 0.36)
    ring_radius = radius * 0.45
    start = rng.uniform(0, 2 * math.pi)
    step = rng.uniform(1.1, 1.5) * 2 * math.pi / (n_lobes + 1)
    centres = [
        (row + ring_radius * math.sin(start + k * step), col + ring_radius * math.cos(start + k * step))
        for k in range(n_lobes)
    ]
    coverage = np.zeros(rows_grid.shape)
    for lobe_row, lobe_col in centres:
        rho = np.hypot(rows_grid - lobe_row, cols_grid - lobe_col)
        coverage = np.maximum(coverage, np.clip(lobe_radius - rho + 0.5, 0.0, 1.0))
    strand_half_width = max(1.0, 0.05 * radius)
    for (row_a, col_a), (row_b, col_b) in zip(centres[:-1], centres[1:]):
        along = np.clip(
            ((rows_grid - row_a) * (row_b - row_a) + (cols_grid - col_a) * (col_b - col_a))
            / max((row_b - row_a) ** 2 + (col_b - col_a) ** 2, 1e-9),
            0.0,
            1.0,
        )
        distance = np.hypot(rows_grid - (row_a + along * (row_b - row_a)), cols_grid - (col_a + along * (col_b - col_a)))
        coverage = np.maximum(coverage, np.clip(strand_half_width - distance + 0.5, 0.0, 1.0))
    return coverage


def _with_border(cell: TruthCell, shape: tuple[int, int]) -> TruthCell:
    rows, cols = shape
    row, col = cell.centroid
    radius = cell.radius_px
    edges = set()
    if row - radius < 0.5:
        edges.add("top")
    if col - radius < 0.5:
        edges.add("left")
    if row + radius > rows - 0.5:
        edges.add("bottom")
    if col + radius > cols - 0.5:
        edges.add("right")
    visible = 1.0
    if edges:
        offsets = (np.arange(64) + 0.5) / 64 * 2.0 - 1.0
        d_row, d_col = np.meshgrid(offsets, offsets, indexing="ij")
        in_disc = d_row**2 + d_col**2 <= 1.0
        sample_rows = row + radius * d_row[in_disc]
        sample_cols = col + radius * d_col[in_disc]
        visible = float(((sample_rows >= 0) & (sample_rows < rows) & (sample_cols >= 0) & (sample_cols < cols)).mean())
    return TruthCell(
        kind=cell.kind,
        centroid=cell.centroid,
        radius_px=cell.radius_px,
        touches_border=bool(edges),
        counted=is_counted(edges),
        visible_fraction=visible,
        n_lobes=cell.n_lobes,
        pair_id=cell.pair_id,
    )


def write_demo_slides(out_dir: str | Path, n_slides: int = 3, seed: int = 0) -> list[Path]:
    """Write demo slide folders of synthetic fields.

    Each slide is a folder ``DEMO-SLIDE-NNN`` holding two or three field
    images ``field_NN.png`` and a ``slide.json`` with ``slide_id``,
    ``patient_id``, ``collected_at`` (ISO 8601) and ``notes``. The first two
    slides belong to patient ``DEMO-001``; later slides get patients
    ``DEMO-002``, ``DEMO-003`` and so on.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing.
    n_slides : int
        At least 1.
    seed : int
        Seed of the first field; the others follow from it.

    Returns
    -------
    list of Path
        The slide folders, in order.

    Raises
    ------
    ValueError
        When ``n_slides`` is below 1.
    """
    from smearflow.imageio import write_rgb

    if n_slides < 1:
        raise ValueError(f"n_slides must be at least 1. Received: n_slides={n_slides}")
    out_dir = Path(out_dir)
    slide_dirs = []
    for slide in range(n_slides):
        slide_id = f"DEMO-SLIDE-{slide + 1:03d}"
        patient_number = 1 if slide < 2 else slide
        slide_dir = out_dir / slide_id
        slide_dir.mkdir(parents=True, exist_ok=True)
        n_fields = 2 + slide % 2
        for field_index in range(n_fields):
            field_seed = seed * 1000 + slide * 10 + field_index
            smear = make_smear(field_seed, n_wbc=1 + (slide + field_index) % 3)
            write_rgb(slide_dir / f"field_{field_index + 1:02d}.png", smear.image)
        info = {
            "slide_id": slide_id,
            "patient_id": f"DEMO-{patient_number:03d}",
            "collected_at": (_DEMO_FIRST_COLLECTION + timedelta(days=slide)).isoformat(),
            "notes": f"synthetic demo slide from smearflow.synthetic (seed={seed}); not patient data",
        }
        (slide_dir / "slide.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        slide_dirs.append(slide_dir)
    return slide_dirs
