"""Crops of several slides analysed at once share the classifier's calls (issue 14), with the same answers.

The batcher never waits long in a deployment; here ``max_wait_ms`` is long
(a minute) wherever a test counts calls, so that a call goes only when its
``batch_size`` crops are waiting: the counts depend on no timing.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fault_servers import wait_until
from smearflow_testkit import PlantedSegmenter, assert_same_classifications, planted_cell

from smearflow.classifier.shared_batches import BatcherClosedError, SharedBatcher
from smearflow.config import PipelineConfig
from smearflow.pipeline import analyze_field, analyze_slide
from smearflow.types import Classification, SlideInfo

LONG_WAIT_MS = 60_000.0
ONE_WBC = [planted_cell("wbc", 50, 50)]
TWO_WBC_ONE_PLATELET = [planted_cell("wbc", 50, 50), planted_cell("wbc", 30, 90), planted_cell("platelet", 80, 20, radius=3)]


class CountingClassifier:
    """Answers from each crop's mean colour, without the excluded classes; records every call's size and exclusions.

    Raises ``error`` for a call that holds a crop whose pixels are all ``bad_value``.
    """

    version = "counting-1"
    classes = ("lymphocyte", "neutrophil", "platelet")
    confidence_threshold = 0.0

    def __init__(self, bad_value=None, error=None):
        self.calls = []
        self.bad_value, self.error = bad_value, error
        self._lock = threading.Lock()

    def classify(self, crops, batch_size=32, exclude=()):
        with self._lock:
            self.calls.append((len(crops), exclude))
        if self.bad_value is not None and any((crop == self.bad_value).all() for crop in crops):
            raise self.error
        answers = []
        for crop in crops:
            p = (crop.reshape(-1, 3).mean(axis=0) + 1.0) * [c not in exclude for c in self.classes]
            p = p / p.sum()
            best = int(np.argmax(p))
            answers.append(Classification(self.classes[best], float(p[best]), tuple(float(x) for x in p)))
        return answers


def _slide(code, n_fields):
    return SlideInfo(code, "P", None, None, f"/slides/{code}", tuple(f"/slides/{code}/f{i}.png" for i in range(n_fields)))


def _reader(seed, bad_fields=()):
    """Each field its own random image (every crop differs); a bad field is uniformly 90."""

    def read(path):
        index = int(path.rsplit("f", 1)[1].split(".")[0])
        if index in bad_fields:
            return np.full((100, 120, 3), 90, np.uint8)
        return np.random.default_rng(seed * 1000 + index).integers(0, 256, size=(100, 120, 3), dtype=np.uint8)

    return read


def _at_once(slides, classifier, cells, config):
    """``(info, reader)`` slides analysed each in its own thread, all through ``classifier``."""
    with ThreadPoolExecutor(max_workers=len(slides)) as pool:
        futures = [
            pool.submit(analyze_slide, info, PlantedSegmenter(cells), classifier, config, read_image=read) for info, read in slides
        ]
        return [future.result() for future in futures]


def test_slides_analysed_at_once_share_calls_and_get_the_classes_they_get_alone():
    # One white cell per field, two crops per pipeline batch: each slide sends requests of 2 crops, one at a time.
    config = PipelineConfig(check_quality=False, batch_size=2, classify_platelets=False)
    slides = [(_slide(f"S-{k}", 4), _reader(seed=k)) for k in range(3)]
    model = CountingClassifier()
    with SharedBatcher(model, batch_size=6, max_wait_ms=LONG_WAIT_MS) as shared:
        results = _at_once(slides, shared, ONE_WBC, config)
    # 12 fields, 12 crops: two calls of 6, where each slide alone makes two calls of 2 and cell by cell 12 calls.
    assert [n for n, _ in model.calls] == [6, 6]
    for (info, read), result in zip(slides, results):
        assert result.status == "done" and result.wbc_total == 4
        alone = analyze_slide(info, PlantedSegmenter(ONE_WBC), CountingClassifier(), config, read_image=read)
        assert result == alone
        one_by_one = PipelineConfig(check_quality=False, batch_size=1, classify_platelets=False)
        for path, field in zip(info.field_paths, result.fields):
            assert field == analyze_field(field.name, read(path), PlantedSegmenter(ONE_WBC), CountingClassifier(), one_by_one)


def test_slides_of_different_sizes_with_platelets_get_the_classes_they_get_alone():
    config = PipelineConfig(check_quality=False, batch_size=4)
    slides = [(_slide("S-BIG", 7), _reader(seed=1)), (_slide("S-SMALL", 1), _reader(seed=2)), (_slide("S-MID", 3), _reader(seed=3))]
    model = CountingClassifier()
    with SharedBatcher(model, batch_size=4, max_wait_ms=5) as shared:
        results = _at_once(slides, shared, TWO_WBC_ONE_PLATELET, config)
    assert sum(n for n, _ in model.calls) == 3 * (7 + 1 + 3)  # every crop classified once
    # a call holds crops of one kind: white cells rule out platelet, platelet candidates rule out nothing
    assert {exclude for _, exclude in model.calls} == {("platelet",), ()}
    for (info, read), result in zip(slides, results):
        assert result == analyze_slide(info, PlantedSegmenter(TWO_WBC_ONE_PLATELET), CountingClassifier(), config, read_image=read)


def test_a_failing_shared_call_fails_only_the_field_that_fails_alone():
    # Field 0 of S-0 makes the classifier fail in whichever call holds it (which calls are shared is timing).
    config = PipelineConfig(check_quality=False, batch_size=2, classify_platelets=False)
    slides = [(_slide("S-0", 4), _reader(seed=0, bad_fields={0})), (_slide("S-1", 4), _reader(seed=1)), (_slide("S-2", 4), _reader(seed=2))]
    model = CountingClassifier(bad_value=90, error=RuntimeError("out of memory"))
    with SharedBatcher(model, batch_size=6, max_wait_ms=50) as shared:
        results = _at_once(slides, shared, ONE_WBC, config)
    bad = results[0]
    assert bad.status == "partial" and [f.status for f in bad.fields] == ["failed", "done", "done", "done"]
    assert "f0.png: could not be analysed (RuntimeError: out of memory)" in bad.errors[0]
    for (info, read), result in zip(slides[1:], results[1:]):
        assert result.status == "done"
        assert result == analyze_slide(info, PlantedSegmenter(ONE_WBC), CountingClassifier(), config, read_image=read)


def test_a_failing_call_is_made_again_per_request_and_only_the_bad_request_fails():
    model = CountingClassifier(bad_value=90, error=ValueError("cannot classify"))
    good = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    bad = np.full((1, 8, 8, 3), 90, np.uint8)
    with SharedBatcher(model, batch_size=4, max_wait_ms=LONG_WAIT_MS) as shared:
        futures = [shared.submit(good[:1]), shared.submit(bad), shared.submit(good)]
        answers = [f.exception() or f.result() for f in futures]
    assert [n for n, _ in model.calls] == [4, 1, 1, 2]  # together, then each alone
    assert isinstance(answers[1], ValueError) and str(answers[1]) == "cannot classify"
    assert answers[0] == model.classify(good[:1]) and answers[2] == model.classify(good)


def test_requests_that_cannot_share_a_call_go_in_separate_calls():
    model = CountingClassifier()
    small, large = np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 16, 16, 3), np.uint8)
    with SharedBatcher(model, batch_size=3, max_wait_ms=20) as shared:
        futures = [shared.submit(small, exclude=("platelet",)), shared.submit(small), shared.submit(large)]
        assert [len(f.result()) for f in futures] == [1, 1, 1]
    assert sorted(model.calls, key=str) == sorted([(1, ("platelet",)), (1, ()), (1, ())], key=str)


def test_a_classifier_that_answers_for_too_few_crops_fails_the_request():
    class Forgetful(CountingClassifier):
        def classify(self, crops, batch_size=32, exclude=()):
            return super().classify(crops, batch_size, exclude)[:-1]

    with (
        SharedBatcher(Forgetful(), batch_size=4, max_wait_ms=0) as shared,
        pytest.raises(RuntimeError, match="the classifier answered 1 times for 2 crops"),
    ):
        shared.classify(np.zeros((2, 8, 8, 3), np.uint8))


def test_closing_fails_the_waiting_callers_and_refuses_new_crops():
    model = CountingClassifier()
    shared = SharedBatcher(model, batch_size=100, max_wait_ms=LONG_WAIT_MS)
    with ThreadPoolExecutor(max_workers=2) as pool:
        waiting = [pool.submit(shared.classify, np.zeros((1, 8, 8, 3), np.uint8)) for _ in range(2)]
        wait_until(lambda: len(shared._pending) == 2, 10, "both callers to be waiting", interval_s=0.01)
        shared.close()
        for future in waiting:
            with pytest.raises(BatcherClosedError, match="the shared batcher was closed before classifying 1 crops"):
                future.result(timeout=10)
    assert model.calls == [] and shared.closed and not shared._thread.is_alive()
    with pytest.raises(BatcherClosedError, match="the shared batcher is closed"):
        shared.classify(np.zeros((1, 8, 8, 3), np.uint8))
    shared.close()  # closing twice does nothing more


def test_the_batcher_stands_in_for_the_classifier_and_checks_its_settings():
    model = CountingClassifier()
    with SharedBatcher(model) as shared:
        assert (shared.classes, shared.version, shared.confidence_threshold) == (model.classes, "counting-1", 0.0)
        with pytest.raises(AttributeError):
            shared.image_size  # noqa: B018 - the stand-in has none, like the pipeline's getattr expects
    with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1. Received: batch_size=0"):
        SharedBatcher(model, batch_size=0)
    for wait in (-1, float("nan")):
        with pytest.raises(ValueError, match=f"max_wait_ms must be a finite number of at least 0. Received: max_wait_ms={wait}"):
            SharedBatcher(model, max_wait_ms=wait)


def test_slides_at_once_match_cell_by_cell_with_a_real_model(tiny_model_dir):
    from smearflow.classifier.classifier import Classifier

    classifier = Classifier.load(tiny_model_dir)
    config = PipelineConfig(check_quality=False, batch_size=4)
    slides = [(_slide("S-A", 3), _reader(seed=5)), (_slide("S-B", 2), _reader(seed=6))]
    with SharedBatcher(classifier, batch_size=8, max_wait_ms=5) as shared:
        results = _at_once(slides, shared, TWO_WBC_ONE_PLATELET, config)
    one_by_one = PipelineConfig(check_quality=False, batch_size=1)
    for (info, read), result in zip(slides, results):
        assert result.model_version == classifier.version
        for path, field in zip(info.field_paths, result.fields):
            alone = analyze_field(field.name, read(path), PlantedSegmenter(TWO_WBC_ONE_PLATELET), classifier, one_by_one)
            assert field.wbc_counts == alone.wbc_counts
            assert_same_classifications(field.cells, alone.cells)
