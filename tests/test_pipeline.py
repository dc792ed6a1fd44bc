"""The pipeline with a stand-in segmenter and classifier: counting rules only."""

import numpy as np
import pytest

from smearflow.config import PipelineConfig
from smearflow.errors import BadImageError
from smearflow.pipeline import analyze_slide, cells_to_classify
from smearflow.types import SlideInfo
from smearflow_testkit import ColumnClassifier, PlantedSegmenter, assert_same_classifications, planted_cell as _cell


CONFIG = PipelineConfig(check_quality=False)  # uniform stand-in fields: the counting rules only


def _info(n_fields=1):
    return SlideInfo("S", "P", None, None, "/slides/S", tuple(f"/slides/S/f{i}.png" for i in range(n_fields)))


def _reader(bad=()):
    def read(path):
        if path in bad:
            raise BadImageError(f"{path}: unreadable or truncated image")
        return np.full((100, 120, 3), 200, np.uint8)

    return read


def test_counts_follow_classes_and_border_rule():
    cells = [
        _cell("wbc", 50, 50),
        _cell("wbc", 30, 90),
        _cell("wbc", 0, 5, counted=True, visible=0.3),  # counted by the border rule, too cut off to classify
        _cell("wbc", 99, 60, counted=False, visible=0.5),  # not counted at all
        _cell("rbc", 20, 20),
        _cell("rbc", 70, 100),
        _cell("rbc", 99, 100, counted=False),
        _cell("platelet", 80, 20, radius=3),
    ]
    classifier = ColumnClassifier(["neutrophil", "lymphocyte", "platelet"])
    result = analyze_slide(_info(), PlantedSegmenter(cells), classifier, CONFIG, read_image=_reader())
    assert result.status == "done" and result.errors == ()
    assert result.counts == {"lymphocyte": 1, "neutrophil": 1}
    assert result.wbc_total == 2
    assert result.unclassified_wbc == 1
    assert result.rbc_count == 2
    assert result.platelet_count == 1
    assert result.model_version == "fake-1"
    assert classifier.seen_shapes == [(2, 224, 224, 3), (1, 224, 224, 3)]


def test_white_cells_are_never_labelled_platelet_when_the_model_knows_platelets():
    cells = [_cell("wbc", 50, 50), _cell("platelet", 80, 20, radius=3)]
    classifier = ColumnClassifier(["monocyte", "platelet"])
    classifier.classes = ("monocyte", "platelet")
    analyze_slide(_info(), PlantedSegmenter(cells), classifier, CONFIG, read_image=_reader())
    assert classifier.excluded == [("platelet",), ()]
    classifier = ColumnClassifier(["monocyte", "platelet"])
    classifier.classes = ("monocyte", "platelet")
    analyze_slide(_info(), PlantedSegmenter(cells), classifier, PipelineConfig(wbc_never_platelet=False, check_quality=False), read_image=_reader())
    assert classifier.excluded == [(), ()]


def test_platelets_are_not_classified_when_switched_off():
    cells = [_cell("wbc", 50, 50), _cell("platelet", 80, 20, radius=3)]
    config = PipelineConfig(classify_platelets=False)
    assert cells_to_classify(cells, config) == [0]


def test_a_bad_field_fails_alone_and_is_reported():
    info = _info(n_fields=2)
    classifier = ColumnClassifier(["monocyte"])
    result = analyze_slide(
        info, PlantedSegmenter([_cell("wbc", 50, 50)]), classifier, CONFIG, read_image=_reader(bad={info.field_paths[0]})
    )
    assert result.status == "partial"
    assert [f.status for f in result.fields] == ["failed", "done"]
    assert result.counts == {"monocyte": 1}
    assert len(result.errors) == 1 and "f0.png" in result.errors[0]


def test_a_slide_whose_fields_all_fail_is_failed():
    info = _info(n_fields=2)
    result = analyze_slide(
        info, PlantedSegmenter([]), ColumnClassifier([]), CONFIG, read_image=_reader(bad=set(info.field_paths))
    )
    assert result.status == "failed"
    assert len(result.errors) == 2 and result.counts == {}


@pytest.mark.parametrize("n_fields", [1, 3])
def test_on_field_is_called_once_per_field(n_fields):
    seen = []
    analyze_slide(
        _info(n_fields), PlantedSegmenter([]), ColumnClassifier([]), CONFIG, read_image=_reader(), on_field=seen.append
    )
    assert len(seen) == n_fields


class FailingOn:
    """A segmenter or classifier stand-in that raises ``error`` on its ``n``-th call."""

    def __init__(self, inner, n, error):
        self.inner, self.n, self.error, self.calls = inner, n, error, 0
        self.classes = getattr(inner, "classes", ())
        self.version = getattr(inner, "version", None)

    def segment(self, image):
        return self._call(self.inner.segment, image)

    def classify(self, crops, **kwargs):
        return self._call(self.inner.classify, crops, **kwargs)

    def _call(self, method, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise self.error
        return method(*args, **kwargs)


@pytest.mark.parametrize(
    "error",
    [OverflowError("cannot convert float infinity to integer"), MemoryError(), ValueError("zero-size array")],
)
def test_any_error_in_segmenting_one_field_fails_that_field_only(error):
    info = _info(n_fields=3)
    segmenter = FailingOn(PlantedSegmenter([_cell("wbc", 50, 50)]), 2, error)
    result = analyze_slide(info, segmenter, ColumnClassifier(["monocyte", "monocyte"]), CONFIG, read_image=_reader())
    assert result.status == "partial" and [f.status for f in result.fields] == ["done", "failed", "done"]
    assert result.counts == {"monocyte": 2}
    (message,) = result.errors
    assert message.startswith("f1.png: could not be analysed") and type(error).__name__ in message


class FailingForPixel:
    """A classifier stand-in that raises ``error`` whenever a crop it is given is uniformly ``value``."""

    def __init__(self, inner, value, error):
        self.inner, self.value, self.error = inner, value, error
        self.classes = getattr(inner, "classes", ())
        self.version = getattr(inner, "version", None)

    def classify(self, crops, **kwargs):
        if (crops == self.value).all(axis=(1, 2, 3)).any():
            raise self.error
        return self.inner.classify(crops, **kwargs)


def test_an_error_in_classifying_or_reading_one_field_fails_that_field_only():
    # Crops of several fields share a classifier call; the batch that fails is retried field by field.
    info = _info(n_fields=3)
    classifier = FailingForPixel(ColumnClassifier(["lymphocyte"]), 90, RuntimeError("out of memory"))

    def read(path):
        if path.endswith("f2.png"):
            raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
        return np.full((100, 120, 3), 90 if path.endswith("f0.png") else 200, np.uint8)

    result = analyze_slide(info, PlantedSegmenter([_cell("wbc", 50, 50)]), classifier, CONFIG, read_image=read)
    assert [f.status for f in result.fields] == ["failed", "done", "failed"]
    assert result.errors[0] == "f0.png: could not be analysed (RuntimeError: out of memory)"
    assert result.errors[1].startswith("f2.png: could not be read (UnicodeEncodeError")


def test_errors_the_caller_names_end_the_slide():
    class TimeLimit(Exception):
        pass

    segmenter = FailingOn(PlantedSegmenter([]), 1, TimeLimit("soft time limit"))
    with pytest.raises(TimeLimit):
        analyze_slide(_info(2), segmenter, ColumnClassifier([]), CONFIG, read_image=_reader(), propagate=(TimeLimit,))


def test_a_field_name_that_is_not_utf8_is_shown_printable():
    import os

    info = SlideInfo("S", None, None, None, "/slides/S", (os.fsdecode(b"/slides/S/field-\xff.png"),))
    result = analyze_slide(info, PlantedSegmenter([]), ColumnClassifier([]), CONFIG, read_image=_reader(bad=set(info.field_paths)))
    result.fields[0].name.encode("utf-8")
    assert "field-" in result.fields[0].name


class ProbabilityClassifier:
    """Answers with fixed probabilities over named classes, like the real Classifier."""

    version = "probable-1"
    classes = ("lymphocyte", "neutrophil", "platelet")
    confidence_threshold = 0.6

    def __init__(self, rows):
        self.rows = list(rows)

    def classify(self, crops, batch_size=32, exclude=()):
        from smearflow.types import Classification

        answers = []
        for _ in range(len(crops)):
            p = self.rows.pop(0)
            best = int(np.argmax(p))
            answers.append(Classification(self.classes[best], float(p[best]), tuple(p)))
        return answers


def test_cells_keep_their_top_classes_and_low_confidence_ones_are_uncertain():
    cells = [_cell("wbc", 30, 30), _cell("wbc", 60, 80), _cell("platelet", 80, 20, radius=3), _cell("platelet", 20, 100, radius=3)]
    classifier = ProbabilityClassifier([(0.9, 0.05, 0.05), (0.45, 0.4, 0.15), (0.1, 0.2, 0.7), (0.1, 0.8, 0.1)])
    result = analyze_slide(_info(), PlantedSegmenter(cells), classifier, CONFIG, read_image=_reader())
    by_position = {c.cell.centroid: c.classification for c in result.fields[0].cells}
    sure, unsure = by_position[(30.0, 30.0)], by_position[(60.0, 80.0)]
    assert (sure.label, sure.uncertain, sure.top_classes[0]) == ("lymphocyte", False, ("lymphocyte", 0.9))
    assert (unsure.label, unsure.uncertain) == ("lymphocyte", True)  # 0.45 < the model's 0.6
    assert [name for name, _ in unsure.top_classes] == ["lymphocyte", "neutrophil", "platelet"]
    assert result.counts == {"lymphocyte": 2} and result.uncertain_wbc == 1
    platelet, not_platelet = by_position[(80.0, 20.0)], by_position[(20.0, 100.0)]
    assert (platelet.label, platelet.confidence, platelet.uncertain) == ("platelet", 0.7, False)
    assert (not_platelet.label, not_platelet.confidence) == ("artefact", pytest.approx(0.9))  # never "neutrophil"


def test_the_configured_confidence_threshold_wins_over_the_models():
    cells = [_cell("wbc", 30, 30)]
    config = PipelineConfig(check_quality=False, confidence_threshold=0.95)
    result = analyze_slide(_info(), PlantedSegmenter(cells), ProbabilityClassifier([(0.9, 0.05, 0.05)]), config, read_image=_reader())
    assert result.uncertain_wbc == 1
    with pytest.raises(ValueError, match="confidence_threshold must be in \\[0, 1\\]"):
        PipelineConfig(confidence_threshold=1.5)


# --- batching across fields, bounded overlap ---


def _noise_reader(seed=0):
    """Each field a different random image, so that every crop differs."""

    def read(path):
        field_seed = seed + int(path.rsplit("f", 1)[1].split(".")[0])
        return np.random.default_rng(field_seed).integers(0, 256, size=(100, 120, 3), dtype=np.uint8)

    return read


class ContentClassifier:
    """Answers from each crop's own pixels (its mean colour picks the class); records every call."""

    version = "content-1"
    classes = ("lymphocyte", "neutrophil", "platelet")
    confidence_threshold = 0.0

    def __init__(self):
        self.calls = []

    def classify(self, crops, batch_size=32, exclude=()):
        from smearflow.types import Classification

        self.calls.append((len(crops), exclude))
        answers = []
        for crop in crops:
            p = crop.reshape(-1, 3).mean(axis=0) + 1.0
            p = p / p.sum()
            best = int(np.argmax(p))
            answers.append(Classification(self.classes[best], float(p[best]), tuple(float(x) for x in p)))
        return answers


PLANTED = [_cell("wbc", 50, 50), _cell("wbc", 30, 90), _cell("platelet", 80, 20, radius=3)]


def test_crops_of_many_fields_share_classifier_calls_and_get_the_classes_they_get_alone():
    from smearflow.pipeline import analyze_field

    info = _info(n_fields=7)
    batched = ContentClassifier()
    config = PipelineConfig(check_quality=False, batch_size=4)
    result = analyze_slide(info, PlantedSegmenter(PLANTED), batched, config, read_image=_noise_reader())
    # 14 white-cell crops in calls of 4, 4, 4, 2; 7 platelet crops in 4, 3: 6 calls instead of 14
    assert sorted(n for n, _ in batched.calls) == [2, 3, 4, 4, 4, 4]
    read = _noise_reader()
    for path, field in zip(info.field_paths, result.fields):
        alone = analyze_field(field.name, read(path), PlantedSegmenter(PLANTED), ContentClassifier(), PipelineConfig(check_quality=False, batch_size=1))
        assert field == alone


@pytest.mark.parametrize("prepare_threads", [1, 2])
def test_batched_classes_match_cell_by_cell_with_a_real_model(tiny_model_dir, prepare_threads):
    from smearflow.classifier.classifier import Classifier
    from smearflow.pipeline import analyze_field

    classifier = Classifier.load(tiny_model_dir)
    info = _info(n_fields=5)
    config = PipelineConfig(check_quality=False, batch_size=4, prepare_threads=prepare_threads)
    result = analyze_slide(info, PlantedSegmenter(PLANTED), classifier, config, read_image=_noise_reader())
    assert [field.name for field in result.fields] == [path.rsplit("/", 1)[1] for path in info.field_paths]
    read = _noise_reader()
    one_by_one = PipelineConfig(check_quality=False, batch_size=1)
    for path, field in zip(info.field_paths, result.fields):
        alone = analyze_field(field.name, read(path), PlantedSegmenter(PLANTED), classifier, one_by_one)
        assert field.wbc_counts == alone.wbc_counts
        assert_same_classifications(field.cells, alone.cells)


def test_a_classifier_that_answers_for_too_few_crops_fails_those_fields():
    class Forgetful(ContentClassifier):
        def classify(self, crops, batch_size=32, exclude=()):
            return super().classify(crops, batch_size, exclude)[:-1]

    result = analyze_slide(_info(2), PlantedSegmenter(PLANTED), Forgetful(), CONFIG, read_image=_noise_reader())
    assert [f.status for f in result.fields] == ["failed", "failed"]
    assert "answered 1 times for 2 crops" in result.errors[0]


def test_a_field_without_crops_does_not_wait_for_a_batch():
    seen = []
    analyze_slide(
        _info(3), PlantedSegmenter([_cell("rbc", 20, 20)]), ContentClassifier(), CONFIG, read_image=_reader(), on_field=seen.append
    )
    assert [f.status for f in seen] == ["done"] * 3


@pytest.mark.parametrize(("prefetch_fields", "prepare_threads"), [(0, 1), (2, 1), (2, 2)])
def test_a_long_slide_never_holds_all_its_images_or_crops(monkeypatch, prefetch_fields, prepare_threads):
    """200 fields: the images and crop arrays alive at once stay a handful (weak references count them)."""
    import threading
    import weakref

    from smearflow.segmentation import crops as crops_module

    lock = threading.Lock()
    live = {"image": 0, "crops": 0}
    peak = {"image": 0, "crops": 0}

    def track(kind, array):
        def gone():
            with lock:
                live[kind] -= 1

        with lock:
            live[kind] += 1
            peak[kind] = max(peak[kind], live[kind])
        weakref.finalize(array, gone)
        return array

    read = _reader()
    crop_cells = crops_module.crop_cells
    monkeypatch.setattr(crops_module, "crop_cells", lambda *a, **k: track("crops", crop_cells(*a, **k)))
    config = PipelineConfig(
        check_quality=False, batch_size=8, prefetch_fields=prefetch_fields, prepare_threads=prepare_threads
    )
    result = analyze_slide(
        _info(200), PlantedSegmenter(PLANTED), ContentClassifier(), config, read_image=lambda p: track("image", read(p))
    )
    assert result.status == "done" and result.wbc_total == 400
    # at most: one field being read per thread, the prepared fields queued, one being classified
    assert peak["image"] <= prefetch_fields + prepare_threads + 1
    # two crop arrays per field (white cells, platelets); a batch of 8 waits on at most 8 fields
    assert peak["crops"] <= 2 * (8 + prefetch_fields + 2)
    assert live == {"image": 0, "crops": 0}


def test_pipeline_settings_are_checked():
    with pytest.raises(ValueError, match="prefetch_fields must be a whole number of at least 0. Received: prefetch_fields=-1"):
        PipelineConfig(prefetch_fields=-1)
    with pytest.raises(ValueError, match="prepare_threads must be a whole number of at least 1. Received: prepare_threads=0"):
        PipelineConfig(prepare_threads=0)
    with pytest.raises(ValueError, match="inference_precision must be one of"):
        PipelineConfig(inference_precision="float16")
    assert PipelineConfig.from_dict(PipelineConfig(batch_size=16, inference_precision="bfloat16").to_dict()).batch_size == 16


def test_a_large_input_is_classified_in_smaller_forward_passes():
    from smearflow.pipeline import forward_batch_size

    class Sized(ContentClassifier):
        def __init__(self, image_size):
            super().__init__()
            self.image_size = image_size
            self.batch_sizes = []

        def classify(self, crops, batch_size=32, exclude=()):
            self.batch_sizes.append(batch_size)
            return super().classify(crops, batch_size, exclude)

    config = PipelineConfig(check_quality=False)
    assert [forward_batch_size(Sized(side), config) for side in (32, 64, 224, 600)] == [64, 36, 3, 1]
    assert forward_batch_size(ContentClassifier(), config) == 64
    hybrid = Sized(224)
    analyze_slide(_info(3), PlantedSegmenter(PLANTED), hybrid, config, read_image=_noise_reader())
    assert set(hybrid.batch_sizes) == {3}
    with pytest.raises(ValueError, match="max_batch_pixels must be at least 1. Received: max_batch_pixels=0"):
        PipelineConfig(max_batch_pixels=0)


# --- preparing a field faster, with the same results (issue 14) ---------------------------------
# The references below are the implementations the faster code replaced, kept to prove the outputs equal.


def _reference_crop_cells(image, cells, side_px, out_size_px):
    """Crops as before: a square filled with the background colour, the field pasted in, resized."""
    import cv2

    from smearflow.segmentation.crops import background_colour

    crops = np.empty((len(cells), out_size_px, out_size_px, 3), np.uint8)
    fill = background_colour(image)
    rows, cols = image.shape[:2]
    interpolation = cv2.INTER_AREA if side_px > out_size_px else cv2.INTER_LINEAR
    for index, cell in enumerate(cells):
        top = int(round(cell.centroid[0] - side_px / 2.0))
        left = int(round(cell.centroid[1] - side_px / 2.0))
        square = np.empty((side_px, side_px, 3), np.uint8)
        square[:] = fill
        r0, r1, c0, c1 = max(0, top), min(rows, top + side_px), max(0, left), min(cols, left + side_px)
        if r0 < r1 and c0 < c1:
            square[r0 - top : r1 - top, c0 - left : c1 - left] = image[r0:r1, c0:c1]
        crops[index] = square if side_px == out_size_px else cv2.resize(square, (out_size_px, out_size_px), interpolation=interpolation)
    return crops


def _reference_flat_fraction(grid):
    """Flat pixels as before: equal to each of the eight shifted copies, in every channel."""
    packed = (grid[..., 0].astype(np.int32) << 16) | (grid[..., 1].astype(np.int32) << 8) | grid[..., 2]
    centre = packed[1:-1, 1:-1]
    rows, cols = centre.shape
    flat = np.ones(centre.shape, bool)
    for d_row in (-1, 0, 1):
        for d_col in (-1, 0, 1):
            if d_row or d_col:
                flat &= packed[1 + d_row : 1 + d_row + rows, 1 + d_col : 1 + d_col + cols] == centre
    inner = grid[1:-1, 1:-1]
    clipped = np.any((inner == 0) | (inner == 255), axis=2)
    return float(np.count_nonzero(flat & ~clipped)) / max(centre.size, 1)


def _smear_image(seed):
    from smearflow.synthetic import make_smear

    return make_smear(seed, shape=(120, 160), rbc_diameter_px=18.0).image


@pytest.mark.parametrize("side_px, out_size_px", [(40, 16), (40, 40), (40, 64), (150, 32), (7, 5)])
def test_crops_are_those_of_the_fill_and_paste_implementation(side_px, out_size_px):
    from smearflow.segmentation.crops import crop_cells

    image = _smear_image(1)
    rows, cols = image.shape[:2]
    centres = [(60, 80), (0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1), (5, 80), (60, 3),
               (rows + 30, cols + 30), (-200, 50), (60.4, 79.6), (61.5, 80.5)]  # inside, corners, edges, outside
    cells = [_cell("wbc", 0, 0)] * len(centres)
    cells = [type(cell)(**{**cell.__dict__, "centroid": (float(r), float(c))}) for cell, (r, c) in zip(cells, centres)]
    np.testing.assert_array_equal(
        crop_cells(image, cells, side_px, out_size_px), _reference_crop_cells(image, cells, side_px, out_size_px)
    )
    inside = cells[:1]  # no padding: the background colour is not needed, the crop is the same
    np.testing.assert_array_equal(crop_cells(image, inside, 20, 16), _reference_crop_cells(image, inside, 20, 16))


def _flat_grids():
    rng = np.random.default_rng(3)
    drawing = np.zeros((60, 80, 3), np.uint8)
    drawing[:, :40] = (200, 30, 90)
    drawing[10:30, 50:70] = (255, 255, 255)  # clipped: never counted
    drawing[40:, 45:] = (0, 120, 255)
    drawing[::7, ::5] = rng.integers(0, 256, size=drawing[::7, ::5].shape)
    one_channel_flat = np.dstack([np.full((30, 30), 100, np.uint8), rng.integers(0, 256, (30, 30), np.uint8), np.full((30, 30), 7, np.uint8)])
    return [
        _smear_image(2), _smear_image(2)[::2, ::2], rng.integers(0, 256, (50, 70, 3), np.uint8), drawing,
        one_channel_flat, np.full((3, 3, 3), 9, np.uint8), np.full((1, 40, 3), 9, np.uint8), np.full((2, 2, 3), 9, np.uint8),
    ]


@pytest.mark.parametrize("index", range(8))
def test_the_flat_fraction_is_that_of_the_shifted_comparisons(index):
    from smearflow.quality import _flat_fraction

    grid = _flat_grids()[index]
    assert _flat_fraction(grid) == _reference_flat_fraction(grid)


def test_a_prepared_field_is_what_the_replaced_crops_and_flat_fraction_give(monkeypatch):
    import smearflow.quality as quality
    import smearflow.segmentation.crops as crops
    from smearflow.pipeline import PreparedField, prepare_field
    from smearflow.segmentation import make_segmenter

    config = PipelineConfig()
    segmenter = make_segmenter(config.segmenter)
    images = [_smear_image(seed) for seed in (6, 7)]
    now = [prepare_field("f", image, segmenter, config) for image in images]
    monkeypatch.setattr(crops, "crop_cells", _reference_crop_cells)
    monkeypatch.setattr(quality, "_flat_fraction", _reference_flat_fraction)
    before = [prepare_field("f", image, segmenter, config) for image in images]
    assert all(isinstance(field, PreparedField) for field in now)
    assert sum(field.n_crops for field in now) > 0
    for a, b in zip(now, before):
        assert (a.cells, a.quality, a.crops.keys()) == (b.cells, b.quality, b.crops.keys())
        for kind in a.crops:
            assert a.crops[kind][0] == b.crops[kind][0]
            np.testing.assert_array_equal(a.crops[kind][1], b.crops[kind][1])
