"""Tests of transferkit.train.history: the history keys of each task and the monitor."""

from __future__ import annotations

import pytest

from transferkit.errors import ConfigError
from transferkit.train.history import higher_is_better, monitor_keys, resolve_monitor


def test_history_keys_follow_the_task():
    assert monitor_keys((1, 5), has_val=True, task="single_label") == [
        "train_loss", "train_acc", "train_top5", "val_loss", "val_acc", "val_top5"]
    assert monitor_keys((1, 5), has_val=True, task="multi_label") == [
        "train_loss", "train_f1", "val_loss", "val_f1", "val_map"]
    assert monitor_keys((1,), has_val=False, task="multi_label") == ["train_loss", "train_f1"]
    # Before the data is seen, the keys of either task are accepted (fit checks again).
    assert resolve_monitor("val_map", (1,), has_val=True) == "val_map"
    with pytest.raises(ConfigError, match="of a multi-label run.*Did you mean 'val_f1'"):
        resolve_monitor("val_f2", (1,), has_val=True, task="multi_label")


@pytest.mark.parametrize(("key", "higher"), [
    ("val_loss", False), ("val_acc", True), ("val_top5", True), ("val_map", True),
    ("train_f1", True)])
def test_scores_are_maximised_and_losses_minimised(key, higher):
    assert higher_is_better(key) is higher
