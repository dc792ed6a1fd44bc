import numpy as np
import pytest

from conftest import write_class_folders
from smearflow.errors import BadDatasetError
from smearflow.training.data import augment, batches, scan_class_folders, stratified_holdout


def test_scan_lists_classes_in_sorted_order(tmp_path):
    write_class_folders(tmp_path, classes=("b", "a"), per_class=3)
    (tmp_path / "a" / "readme.txt").write_text("x")
    dataset = scan_class_folders(tmp_path)
    assert dataset.classes == ("a", "b") and len(dataset) == 6
    assert dataset.class_counts() == {"a": 3, "b": 3}


def test_scan_in_model_order_ignores_extra_folders(tmp_path, caplog):
    write_class_folders(tmp_path, classes=("a", "b", "z"), per_class=2)
    dataset = scan_class_folders(tmp_path, classes=["b", "a"])
    assert dataset.classes == ("b", "a") and set(dataset.labels) == {0, 1}
    assert "z" in caplog.text


def test_missing_dataset(tmp_path):
    with pytest.raises(BadDatasetError, match="does not exist"):
        scan_class_folders(tmp_path / "none")


def test_no_class_folders(tmp_path):
    with pytest.raises(BadDatasetError, match="no class folders"):
        scan_class_folders(tmp_path)


def test_empty_class_folder(tmp_path):
    write_class_folders(tmp_path, classes=("a",), per_class=2)
    (tmp_path / "b").mkdir()
    with pytest.raises(BadDatasetError, match="holds no image"):
        scan_class_folders(tmp_path)


def test_model_class_missing_from_data(tmp_path):
    write_class_folders(tmp_path, classes=("a", "b"), per_class=2)
    with pytest.raises(BadDatasetError, match=r"\['c'\] have no folder"):
        scan_class_folders(tmp_path, classes=["a", "b", "c"])


def test_stratified_holdout_is_seeded_and_disjoint():
    labels = np.repeat([0, 1, 2], 20)
    train, test = stratified_holdout(labels, 0.25, seed=3)
    again_train, again_test = stratified_holdout(labels, 0.25, seed=3)
    assert np.array_equal(test, again_test) and np.array_equal(train, again_train)
    assert not set(train) & set(test) and len(test) == 15
    assert np.bincount(labels[test]).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_holdout(labels, 1.0, seed=0)


def test_batches_skip_unreadable_images_and_count_them(tmp_path):
    write_class_folders(tmp_path, classes=("a", "b"), per_class=3)
    (tmp_path / "a" / "a_0.png").write_text("broken")
    sequence = batches(scan_class_folders(tmp_path), 16, 4, training=False, num_classes=2)
    shapes = [sequence[i][0].shape for i in range(len(sequence))]
    assert sum(s[0] for s in shapes) == 5 and sequence.n_skipped == 1
    x, y = sequence[1]
    assert x.dtype == np.float32 and y.shape == (len(x), 2)


def test_augment_keeps_shape_and_dtype():
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    out = augment(image, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
