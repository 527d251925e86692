"""Tests of transferkit.metrics: top-k counting and the summed metrics."""

from __future__ import annotations

import math

import torch

from transferkit.train.metrics import MetricSums, topk_correct


def test_topk_correct_counts_targets_in_the_top_k():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    targets = torch.tensor([2, 0, 0])  # rank 2, rank 1, rank 3
    assert topk_correct(logits, targets, (1, 2, 3, 5)).tolist() == [1.0, 2.0, 3.0, 3.0]


def test_metric_sums_average_over_samples_not_batches():
    sums = MetricSums((1, 2), "cpu")
    sums.update(torch.tensor(1.0), torch.tensor([[1.0, 0.0]] * 2), torch.tensor([0, 1]))
    sums.update(torch.tensor(4.0), torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert sums.count == 3
    assert sums.result("val") == {"val_loss": 2.0, "val_acc": 2 / 3, "val_top2": 1.0}
    assert math.isnan(MetricSums((1,), "cpu").result("")["loss"])
