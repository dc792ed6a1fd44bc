"""Box matching and mask scores on hand-made cases with hand-computed answers."""

import numpy as np
import pytest

from smearflow.segmentation.metrics import (
    DetectionScore,
    box_iou_matrix,
    detection_score,
    dice,
    mask_iou,
    match_boxes,
    precision_recall_f1,
    score_by_class,
)


def test_iou_of_hand_made_boxes():
    iou = box_iou_matrix([(0, 0, 10, 10)], [(0, 0, 10, 10), (0, 5, 10, 15), (20, 20, 30, 30), (0, 0, 5, 5)])
    # identical; half overlap 50/150; disjoint; contained 25/100
    assert iou.shape == (1, 4)
    assert iou[0] == pytest.approx([1.0, 1 / 3, 0.0, 0.25])


def test_matching_is_one_to_one_and_keeps_only_pairs_at_the_threshold():
    truth = [(0, 0, 10, 10), (0, 20, 10, 30), (50, 50, 60, 60)]
    predicted = [
        (0, 1, 10, 11),  # IoU 90/110 = 0.818 with truth 0
        (0, 0, 10, 9),  # IoU 90/100 = 0.9 with truth 0: wins it
        (0, 22, 10, 32),  # IoU 80/120 = 0.667 with truth 1
        (50, 55, 60, 65),  # IoU 50/150 = 0.333 with truth 2: below 0.5
    ]
    matches = match_boxes(predicted, truth)
    assert [(p, t) for p, t, _ in matches] == [(1, 0), (2, 1)]
    assert matches[0][2] == pytest.approx(0.9)
    score = detection_score(predicted, truth)
    # 2 TP, 2 FP, 1 FN: precision 2/4, recall 2/3, F1 = 2*0.5*0.667/(1.167) = 4/7
    assert (score.tp, score.fp, score.fn) == (2, 2, 1)
    assert (score.precision, score.recall, score.f1) == pytest.approx((0.5, 2 / 3, 4 / 7))
    assert detection_score(predicted, truth, iou_threshold=0.3).tp == 3


def test_scores_by_class_never_match_across_classes():
    box = (0, 0, 10, 10)
    scores = score_by_class({"wbc": [box], "rbc": []}, {"rbc": [box], "platelet": []})
    assert scores["wbc"] == DetectionScore(0, 1, 0)
    assert scores["rbc"] == DetectionScore(0, 0, 1)
    assert scores["platelet"] == DetectionScore(0, 0, 0)
    total = scores["wbc"] + scores["rbc"]
    assert (total.tp, total.fp, total.fn) == (0, 1, 1)


def test_conventions_for_empty_cases():
    assert precision_recall_f1(0, 0, 0) == (1.0, 1.0, 1.0)
    assert precision_recall_f1(0, 0, 3) == (1.0, 0.0, 0.0)
    assert precision_recall_f1(0, 2, 0) == (0.0, 1.0, 0.0)
    assert match_boxes([], [(0, 0, 1, 1)]) == []
    assert box_iou_matrix([], []).shape == (0, 0)


def test_dice_and_iou_of_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, :] = True  # 8 pixels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 12)
    assert mask_iou(a, b) == pytest.approx(4 / 8)
    assert dice(a, a) == mask_iou(a, a) == 1.0
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert dice(a, ~a) == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: box_iou_matrix([(0, 0, 1)], []), r"boxes_a.shape=\(1, 3\)"),
        (lambda: box_iou_matrix([], [(5, 0, 1, 1)]), "row_max >= row_min"),
        (lambda: match_boxes([], [], iou_threshold=0.0), "iou_threshold=0.0"),
        (lambda: match_boxes([], [], iou_threshold=1.5), "iou_threshold=1.5"),
        (lambda: precision_recall_f1(1, -1, 0), "fp=-1"),
        (lambda: dice(np.zeros((2, 2)), np.zeros((2, 3))), r"b.shape=\(2, 3\)"),
        (lambda: mask_iou(np.zeros((2, 2)), np.zeros((3, 2))), r"b.shape=\(3, 2\)"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
