from pathlib import Path

import numpy as np
import pytest

from smearflow_testkit import write_class_folders
from smearflow.errors import BadDatasetError
from smearflow.training.augment import augment
from smearflow.training.data import batches
from smearflow.datasets import concatenate_datasets, scan_class_folders, stratified_holdout


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


def test_stratified_folds_partition_and_depend_on_the_seed():
    from smearflow.datasets import stratified_folds

    labels = np.repeat([0, 1, 2], [10, 6, 4])
    folds = stratified_folds(labels, 2, seed=1)
    validation = np.concatenate([val for _, val in folds])
    assert sorted(validation) == list(range(20))
    for train, val in folds:
        assert not set(train) & set(val)
        assert np.bincount(labels[val]).tolist() == [5, 3, 2]
    again = stratified_folds(labels, 2, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = stratified_folds(labels, 2, seed=2)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))
    with pytest.raises(ValueError, match="n_folds must be an integer of at least 2. Received: n_folds=1"):
        stratified_folds(labels, 1, seed=0)
    with pytest.raises(ValueError, match=r"every class needs at least n_folds=5 images .* \[10, 6, 4\]"):
        stratified_folds(labels, 5, seed=0)


def test_subset_per_class(tmp_path):
    from smearflow.datasets import subset_per_class

    write_class_folders(tmp_path, classes=("a", "b"), per_class=6)
    (tmp_path / "b" / "b_5.png").unlink()
    dataset = scan_class_folders(tmp_path)
    subset = subset_per_class(dataset, 5, seed=0)
    assert subset.class_counts() == {"a": 5, "b": 5}
    assert subset.paths == subset_per_class(dataset, 5, seed=0).paths
    assert set(subset.paths) <= set(dataset.paths) and list(subset.paths) == sorted(subset.paths)
    with pytest.raises(ValueError, match="per_class must be at least 1. Received: per_class=0"):
        subset_per_class(dataset, 0, seed=0)


def test_a_batch_of_only_unreadable_images(tmp_path):
    write_class_folders(tmp_path, classes=("a", "b"), per_class=3)
    for i in range(3):
        (tmp_path / "a" / f"a_{i}.png").write_text("broken")
    dataset = scan_class_folders(tmp_path)  # a_0..2 come first: the first batch of 3 is all broken
    evaluation = batches(dataset, 16, 3, training=False, num_classes=2)
    x, y = evaluation[0]
    assert x.shape == (0, 16, 16, 3) and y.shape == (0, 2)
    assert evaluation[1][0].shape == (3, 16, 16, 3)
    training = batches(dataset, 16, 3, training=True, seed=0, num_classes=2)
    training.order = np.arange(6)  # force the broken images into one batch
    x, y = training[0]
    assert x.shape == (3, 16, 16, 3) and y[:, 1].sum() == 3  # borrowed from class b


def test_a_dataset_with_no_readable_image_fails_clearly(tmp_path):
    from smearflow.errors import BadDatasetError

    write_class_folders(tmp_path, classes=("a",), per_class=2)
    for i in range(2):
        (tmp_path / "a" / f"a_{i}.png").write_text("broken")
    with pytest.raises(BadDatasetError, match="none of the 2 images can be read"):
        batches(scan_class_folders(tmp_path), 16, 2, training=True)[0]


def test_shared_decode_cache_is_keyed_by_path_and_size(tmp_path):
    write_class_folders(tmp_path, classes=("a", "b"), per_class=2)
    dataset = scan_class_folders(tmp_path)
    decoded = {}
    first = batches(dataset, 16, 4, training=False, decoded=decoded)[0][0]
    assert set(decoded) == {(path, 16) for path in dataset.paths}
    batches(dataset, 16, 4, training=True, decoded=decoded)[0]
    assert {size for _, size in decoded} == {16, 32}  # training warps at twice the size
    for path in dataset.paths:  # served from the cache from now on
        Path(path).unlink()
    again = batches(dataset.subset([3, 2, 1, 0]), 16, 4, training=False, decoded=decoded)[0][0]
    np.testing.assert_array_equal(again, first[::-1])


def test_augment_shrinks_after_warping():
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    assert augment(image, np.random.default_rng(1), out_size_px=24).shape == (24, 24, 3)


def test_extra_data_may_hold_some_classes_only(tmp_path):
    write_class_folders(tmp_path, classes=("b",), per_class=2)
    dataset = scan_class_folders(tmp_path, ("a", "b", "c"), allow_missing=True)
    assert dataset.classes == ("a", "b", "c") and dataset.labels.tolist() == [1, 1]
    with pytest.raises(BadDatasetError, match=r"none of the classes \['x', 'y'\] has a folder"):
        scan_class_folders(tmp_path, ("x", "y"), allow_missing=True)


def test_concatenate_datasets(tmp_path):
    first = scan_class_folders(write_class_folders(tmp_path / "one", per_class=2))
    second = scan_class_folders(write_class_folders(tmp_path / "two", classes=("c",), per_class=1), ("a", "b", "c"), allow_missing=True)
    joined = concatenate_datasets(first, second)
    assert len(joined) == 7 and joined.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert joined.paths[-1] == second.paths[0] and joined.root == first.root
    with pytest.raises(ValueError, match="different classes"):
        concatenate_datasets(first, scan_class_folders(tmp_path / "two"))
