"""Tests of transferkit.train.targets: the task of a target batch, its loss, class weights,
and what the Trainer does with them (multi-label runs, soft targets, balanced weights)."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.data import TensorLoader
from transferkit.errors import ConfigError, DataError
from transferkit.train import Trainer
from transferkit.train.targets import (
    MultiLabelLoss,
    SingleLabelLoss,
    balanced_weights,
    check_target_options,
    check_targets,
    class_weights_for,
    label_counts,
    task_loss,
)

ONE_HOT = torch.eye(3)[[0, 2, 1, 0]]
MULTI_HOT = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])


def tiny(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, classes))


def multilabel_batches(n: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = (torch.rand(8, 3, generator=g) < 0.4).float()
        y[0] = torch.tensor([1.0, 1.0, 0.0])  # never an all one-hot (ambiguous) batch
        out.append((torch.randn(8, 1, 6, 6, generator=g) + y[:, :1, None, None], y))
    return out


def trainer(model: nn.Module, **kwargs) -> Trainer:
    kwargs.setdefault("epochs", 2)
    return Trainer(model, device="cpu", progress=False, lr=1e-2, **kwargs)


# ------------------------------------------------------------------ the rule
@pytest.mark.parametrize(("targets", "task"), [
    (torch.tensor([0, 2, 1]), "single_label"),
    (torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]]), "single_label"),  # soft (mixed)
    (torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]), "single_label"),  # smoothed
    (MULTI_HOT, "multi_label"),
])
def test_the_task_is_read_off_the_targets(targets, task):
    assert check_targets(targets, num_classes=3) == task


def test_an_all_one_hot_batch_is_ambiguous_and_task_decides():
    with pytest.raises(DataError, match=r"ambiguous: every row \(4\) holds exactly one 1.*"
                                        r"task='single_label' or task='multi_label'"):
        check_targets(ONE_HOT, num_classes=3)
    assert check_targets(ONE_HOT, num_classes=3, task="single_label") == "single_label"
    assert check_targets(ONE_HOT, num_classes=3, task="multi_label") == "multi_label"


@pytest.mark.parametrize(("targets", "kwargs", "match"), [
    (torch.tensor([[0.5, 0.2, 0.0]]), {}, r"row 0 sums to 0\.7.*pass task='multi_label'"),
    (torch.tensor([[0.5, 0.2, 0.0]]), {"task": "single_label"}, r"row 0 sums to 0\.7\.$"),
    (torch.tensor([[1.5, -0.5, 0.0]]), {}, r"outside \[0, 1\] \(min -0\.5, max 1\.5\)"),
    (torch.tensor([[float("nan"), 1.0, 0.0]]), {}, r"outside \[0, 1\]"),
    (torch.ones(2, 4), {}, "4 columns but the model has 3 outputs"),
    (torch.ones(2, 3, dtype=torch.long), {}, r"convert 0/1 integer or bool targets"),
    (torch.tensor([0, 3]), {}, r"labels include 3, outside the model's 3 classes"),
    (torch.tensor([0, 1]), {"task": "multi_label"}, r"task='multi_label' needs \(batch, 3\)"),
])
def test_bad_targets_are_named(targets, kwargs, match):
    with pytest.raises(DataError, match=match):
        check_targets(targets, num_classes=3, **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"task": "multilabel"}, "task='multilabel' is not valid.*'multi_label'"),
    ({"label_smoothing": 1.0}, "label_smoothing must be below 1"),
    ({"label_smoothing": -0.1}, "label_smoothing must be a finite number >= 0"),
    ({"threshold": 1.0}, r"threshold must lie in \(0, 1\)"),
    ({"class_weights": "balance"}, "class_weights='balance' is not valid; use 'balanced'"),
    ({"class_weights": [1.0, -2.0]}, "one positive, finite weight per class"),
    ({"class_weights": [1.0], "loss_fn": nn.MSELoss()}, "class_weights configures the default"),
    ({"label_smoothing": 0.1, "loss_fn": nn.MSELoss()}, "label_smoothing configures"),
])
def test_target_options_are_checked(kwargs, match):
    values = {"task": None, "label_smoothing": 0.0, "class_weights": None, "threshold": 0.5,
              "loss_fn": None, **kwargs}
    with pytest.raises(ConfigError, match=match):
        check_target_options(**values)
    with pytest.raises(ConfigError, match=match):
        Trainer(tiny(), device="cpu", **kwargs)


# ------------------------------------------------------------------ losses
def test_single_label_loss_is_torchs_cross_entropy():
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    soft = torch.softmax(torch.randn(5, 3), 1)
    assert torch.allclose(SingleLabelLoss()(logits, y), F.cross_entropy(logits, y))
    assert torch.allclose(SingleLabelLoss()(logits, soft), F.cross_entropy(logits, soft))
    smooth = SingleLabelLoss(label_smoothing=0.1)(logits, y)
    assert torch.allclose(smooth, F.cross_entropy(logits, y, label_smoothing=0.1))
    # Weighted: sum_c w_c y_c (-log p_c), averaged over the samples (not over the weights).
    w = torch.tensor([1.0, 2.0, 4.0])
    expected = (w[y] * -F.log_softmax(logits, 1)[torch.arange(5), y]).mean()
    assert torch.allclose(SingleLabelLoss(weight=w)(logits, y), expected)
    assert torch.allclose(SingleLabelLoss(weight=w)(logits, F.one_hot(y, 3).float()), expected)


def test_multi_label_loss_is_bce_with_smoothing_toward_one_half():
    logits = torch.randn(4, 3)
    assert torch.allclose(MultiLabelLoss()(logits, MULTI_HOT),
                          F.binary_cross_entropy_with_logits(logits, MULTI_HOT))
    smoothed = MULTI_HOT * 0.8 + 0.1
    assert torch.allclose(MultiLabelLoss(label_smoothing=0.2)(logits, MULTI_HOT),
                          F.binary_cross_entropy_with_logits(logits, smoothed))
    pw = torch.tensor([1.0, 3.0, 0.5])
    assert torch.allclose(MultiLabelLoss(pos_weight=pw)(logits, MULTI_HOT),
                          F.binary_cross_entropy_with_logits(logits, MULTI_HOT, pos_weight=pw))
    assert isinstance(task_loss("single_label"), SingleLabelLoss)


# ------------------------------------------------------------------ class weights
def test_balanced_weights_are_inverse_frequency():
    w = balanced_weights(torch.tensor([60.0, 30.0, 10.0]), 100, task="single_label")
    assert torch.allclose(w, torch.tensor([100 / 180, 100 / 90, 100 / 30], dtype=torch.float64))
    pos = balanced_weights(torch.tensor([25.0, 50.0]), 100, task="multi_label")
    assert pos.tolist() == [3.0, 1.0]  # negatives per positive
    with pytest.raises(DataError, match=r"cannot weigh class\(es\) \['dog'\].*no sample"):
        balanced_weights(torch.tensor([3.0, 0.0]), 3, task="single_label", names=["cat", "dog"])
    with pytest.raises(DataError, match="no positive"):
        balanced_weights(torch.tensor([3.0, 0.0]), 3, task="multi_label")


class NoIteration(TensorLoader):
    def __iter__(self):
        raise AssertionError("the labels are stored: no need to read the images")


def test_label_counts_read_stored_labels_or_iterate_once_without_shifting_rng():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    loader = NoIteration(torch.zeros(6, 1, 2, 2), labels, batch_size=2)
    assert label_counts(loader, num_classes=3, task="single_label")[0].tolist() == [3, 1, 2]
    dl = DataLoader(TensorDataset(torch.zeros(6, 1), labels), batch_size=4)
    assert label_counts(dl, num_classes=3, task="single_label") == (
        pytest.approx(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)), 6)

    class Shuffled:  # iterated: draws from the global RNG, which must be given back
        def __iter__(self):
            for i in torch.randperm(2).tolist():
                yield torch.zeros(2, 1), MULTI_HOT[2 * i : 2 * i + 2]

    state = torch.get_rng_state()
    counts, n = label_counts(Shuffled(), num_classes=3, task="multi_label")
    assert torch.equal(torch.get_rng_state(), state)
    assert (counts.tolist(), n) == ([2.0, 1.0, 2.0], 4)
    soft = label_counts([(None, torch.tensor([[0.75, 0.25], [0.5, 0.5]]))], num_classes=2,
                        task="single_label")
    assert soft[0].tolist() == [1.25, 0.75]
    with pytest.raises(ConfigError, match="2 weights but the model has 3 classes"):
        class_weights_for([1.0, 2.0], loader, num_classes=3, task="single_label")


# ------------------------------------------------------------------ the Trainer
def test_a_multi_label_run_reports_map_and_f1_and_predicts_sigmoids(tmp_path):
    data = multilabel_batches()
    t = trainer(tiny(), monitor="val_map", out_dir=tmp_path)
    history = t.fit(data, data[:2])
    assert t.task == "multi_label" and isinstance(t.loss_fn, MultiLabelLoss)
    assert [k for k in history[0] if k not in ("epoch", "lr", "time")] == [
        "train_loss", "train_f1", "val_loss", "val_map", "val_f1"]
    assert t.best["epoch"] == max(history, key=lambda r: r["val_map"])["epoch"]  # maximised
    probs = t.predict(data)
    assert probs.shape == (24, 3) and bool(((probs > 0) & (probs < 1)).all())
    assert not torch.allclose(probs.sum(1), torch.ones(24))  # independent sigmoids
    result = t.evaluate(data[:2])
    assert set(result) == {"loss", "map", "f1", "count"} and result["count"] == 16
    # The model holds the best epoch's weights: the same mAP as its validation record.
    assert result["map"] == pytest.approx(history[t.restored_epoch - 1]["val_map"])


def test_an_unfit_trainer_reads_the_task_from_the_data():
    t = trainer(tiny())
    result = t.evaluate(multilabel_batches(1))
    assert t.task == "multi_label" and set(result) == {"loss", "map", "f1", "count"}


def test_soft_targets_train_and_count_their_most_probable_class():
    g = torch.Generator().manual_seed(0)
    soft = [(torch.randn(8, 1, 6, 6, generator=g), torch.softmax(torch.randn(8, 3, generator=g), 1))
            for _ in range(2)]
    t = trainer(tiny())
    history = t.fit(soft)
    assert t.task == "single_label" and "train_acc" in history[0]
    model = t.model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y.argmax(1)).sum()) for x, y in soft)
    assert t.evaluate(soft)["acc"] == hits / 16


def test_an_ambiguous_first_batch_fails_before_training(tmp_path):
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(DataError, match="ambiguous"):
        trainer(model, out_dir=tmp_path).fit([(torch.randn(4, 1, 6, 6), ONE_HOT)])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert os.listdir(tmp_path) == []
    history = trainer(model, task="multi_label").fit([(torch.randn(4, 1, 6, 6), ONE_HOT)])
    assert "train_f1" in history[0]


def test_monitor_must_be_a_key_of_the_task():
    single = [(torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0]))]
    with pytest.raises(ConfigError, match="not a history key of a single-label run.*val_acc"):
        trainer(tiny(), monitor="val_map").fit(single, single)
    with pytest.raises(ConfigError, match="not a history key of a multi-label run"):
        trainer(tiny(), monitor="val_acc").fit(multilabel_batches(1), multilabel_batches(1))


def test_balanced_class_weights_are_counted_logged_and_used(caplog):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 12 + [1] * 6 + [2] * 2)
    loader = TensorLoader(torch.rand(20, 1, 6, 6, generator=g), labels, batch_size=8, seed=0)
    t = trainer(tiny(), epochs=1, class_weights="balanced", label_smoothing=0.1)
    with caplog.at_level(logging.INFO, logger="transferkit.train.targets"):
        t.fit(loader)
    expected = torch.tensor([20 / 36, 20 / 18, 20 / 6])
    assert torch.allclose(t.class_weights, expected)
    assert torch.allclose(t.loss_fn.weight, expected) and t.loss_fn.label_smoothing == 0.1
    assert "class_weights='balanced' (cross-entropy weight, inverse frequency over 20 train " \
           "labels): 0.556, 1.11, 3.33" in caplog.text
    with pytest.raises(ConfigError, match="call fit first"):
        trainer(tiny(), class_weights="balanced").evaluate(loader)
