"""Tests of transferkit.train.multilabel_metrics: average precision, F1, the summed metrics."""

from __future__ import annotations

import math

import pytest
import torch

from transferkit.train.metrics import MetricSums, metric_sums
from transferkit.train.multilabel_metrics import (
    MultiLabelSums,
    average_precision,
    per_class_scores,
)


def test_average_precision_by_hand_and_nan_without_positives():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.3], [0.1, 0.4]])
    positives = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    ap = average_precision(scores, positives)
    assert ap[0].item() == pytest.approx((1 / 1 + 2 / 3) / 2)  # hits at ranks 1 and 3
    assert math.isnan(ap[1].item())


def test_tied_scores_form_one_step():
    # Two samples tied at the top, one positive: precision 1/2 at recall 1 (not 1 or 0).
    ap = average_precision(torch.tensor([[0.5], [0.5], [0.1]]), torch.tensor([[0], [1], [0]]))
    assert ap.item() == pytest.approx(0.5)
    swapped = average_precision(torch.tensor([[0.5], [0.5], [0.1]]), torch.tensor([[1], [0], [0]]))
    assert swapped.item() == ap.item()  # the order within a tie does not matter


def test_average_precision_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 6, (30, 4), generator=g).float()  # many ties
        positives = torch.rand(30, 4, generator=g) < 0.3
        ap = average_precision(scores, positives)
        for c in range(4):
            if positives[:, c].any():
                expected = metrics.average_precision_score(positives[:, c].numpy(),
                                                           scores[:, c].numpy())
                assert ap[c].item() == pytest.approx(expected, abs=1e-12)


def test_sums_count_f1_over_classes_that_occur_and_survive_packing():
    sums = MultiLabelSums(3, threshold=0.5, device="cpu", keep_scores=True)
    logits = torch.tensor([[2.0, -2.0, -2.0], [2.0, 2.0, -2.0], [-2.0, -2.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    sums.update(torch.tensor(0.3), logits[:2], targets[:2])
    sums.update(torch.tensor(0.6), logits[2:], targets[2:])
    # Class 0: TP 1, FP 1, FN 1 -> 0.5; class 1: TP 1 -> 1.0; class 2: never there, left out.
    result = sums.result("val")
    assert result["val_f1"] == pytest.approx(0.75)
    assert result["val_loss"] == pytest.approx((0.3 * 2 + 0.6) / 3)
    # Class 0 ranks a tie of one hit and one miss first (precision 1/2), then a hit (2/3).
    assert result["val_map"] == pytest.approx(((0.5 * 1 / 2 + 0.5 * 2 / 3) + 1.0) / 2)
    train = MultiLabelSums(3, threshold=0.5, device="cpu")
    train.load(sums.packed())
    assert train.count == 3 and "train_map" not in train.result("train")
    assert train.result("train")["train_f1"] == result["val_f1"]
    scores = per_class_scores(logits, targets)
    assert scores["support"].tolist() == [2, 1, 0] and math.isnan(scores["f1"][2].item())


def test_soft_targets_count_their_most_probable_class_and_the_task_picks_the_sums():
    sums = MetricSums((1,), "cpu")
    sums.update(torch.tensor(1.0), torch.tensor([[2.0, 0.0], [0.0, 2.0]]),
                torch.tensor([[0.7, 0.3], [0.6, 0.4]]))
    assert sums.result("")["acc"] == 0.5
    assert isinstance(metric_sums(None, topk=(1,), num_classes=2, threshold=0.5,
                                  device="cpu"), MetricSums)
    multi = metric_sums("multi_label", topk=(1,), num_classes=2, threshold=0.5, device="cpu",
                        evaluation=True)
    assert isinstance(multi, MultiLabelSums) and multi.keep_scores
