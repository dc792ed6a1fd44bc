"""Drawn fields and tiny dataset folders for the U-Net tests (colours chosen like a stained smear)."""

import numpy as np

from smearflow.imageio import write_rgb
from smearflow.segmentation.unet import normalise_field

BACKGROUND = (236, 226, 232)
PALETTE = {"rbc": (205, 120, 130), "cytoplasm": (200, 175, 215), "nucleus": (90, 50, 140), "platelet": (130, 80, 170)}


def disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def drawn_field(scale=1):
    """A 160x160 field (times ``scale``), red-cell diameter 32 (times ``scale``).

    Two white cells (one cut by the right edge: not counted), three red cells
    (two touching), one platelet.
    """
    shape = (160 * scale, 160 * scale)
    image = np.empty((*shape, 3), np.uint8)
    image[:] = BACKGROUND
    s = scale
    for centre in ((120 * s, 40 * s), (120 * s, 70 * s), (40 * s, 130 * s)):
        image[disc(shape, centre, 16 * s)] = PALETTE["rbc"]
    for centre, cell_r, nucleus_r in (((60 * s, 60 * s), 22 * s, 12 * s), ((100 * s, 150 * s), 22 * s, 10 * s)):
        image[disc(shape, centre, cell_r)] = PALETTE["cytoplasm"]
        image[disc(shape, centre, nucleus_r)] = PALETTE["nucleus"]
    image[disc(shape, (142 * s, 128 * s), 4 * s)] = PALETTE["platelet"]
    return image


class ColourOracle:
    """A stand-in network: labels each pixel by the nearest drawn colour (pointwise, exact)."""

    def __init__(self):
        names = ["background", "rbc", "cytoplasm", "nucleus", "platelet"]
        colours = np.array([BACKGROUND] + [PALETTE[n] for n in names[1:]], np.uint8)[None]
        self.reference = normalise_field(np.repeat(colours, 20, axis=0))[0]
        self.names = names

    def __call__(self, x, training=False):
        x = np.asarray(x)
        distance = ((x[..., None, :] - self.reference) ** 2).sum(-1)
        nearest = np.array(self.names)[distance.argmin(-1)]
        out = np.stack(
            [
                nearest == "nucleus",
                (nearest == "nucleus") | (nearest == "cytoplasm"),
                nearest == "rbc",
                nearest == "platelet",
            ],
            axis=-1,
        )
        return out.astype(np.float32)


def write_masks_dataset(root, n=3, size=48, mask_size=None):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = np.empty((size, size, 3), np.uint8)
        image[:] = BACKGROUND
        image[disc((size, size), (size // 2, size // 2), size // 4)] = PALETTE["cytoplasm"]
        image[disc((size, size), (size // 2, size // 2), size // 8)] = PALETTE["nucleus"]
        write_rgb(root / "images" / f"{i:03d}.png", image)
        m = mask_size or size
        mask = np.zeros((m, m), np.uint8)
        mask[disc((m, m), (m // 2, m // 2), m // 4)] = 128
        mask[disc((m, m), (m // 2, m // 2), m // 8)] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def write_boxes_dataset(root, n=3, rbc_boxes=3):
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        image = np.empty((64, 96, 3), np.uint8)
        image[:] = BACKGROUND
        objects = []
        for k in range(rbc_boxes):
            centre = (16, 16 + 30 * k)
            image[disc((64, 96), centre, 10)] = PALETTE["rbc"]
            objects.append(("RBC", centre[1] - 10, centre[0] - 10, centre[1] + 10, centre[0] + 10))
        image[disc((64, 96), (46, 48), 14)] = PALETTE["cytoplasm"]
        image[disc((64, 96), (46, 48), 7)] = PALETTE["nucleus"]
        objects.append(("WBC", 34, 32, 62, 60))
        write_rgb(root / "images" / f"img{i}.jpg", image)
        xml = "".join(
            f"<object><name>{name}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for name, x0, y0, x1, y1 in objects
        )
        (root / "annotations" / f"img{i}.xml").write_text(f"<annotation>{xml}</annotation>")
    return root
