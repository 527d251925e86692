"""One rule, one message: every public entry point checks arguments with transferkit._validate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit import _validate
from transferkit.data import Augment, TensorLoader
from transferkit.report import confusion_matrix

POSITIVE = "must be a positive integer, got 0"


def _tiny_data():
    return [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))]


def test_numpy_integers_are_integers_everywhere():
    # Before: adapt() took np.int64 while create() refused it.
    model = tk.create("resnet18", num_classes=np.int64(4), in_chans=np.int64(1), pretrained=False)
    assert tk.get_info(model).num_classes == 4 and tk.get_info(model).in_chans == 1
    assert isinstance(tk.get_info(model).num_classes, int)
    loader = TensorLoader(torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                          batch_size=np.int64(2), num_classes=np.int32(3))
    assert loader.batch_size == 2 and type(loader.batch_size) is int
    trainer = tk.Trainer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)),
                         epochs=np.int64(1), device="cpu", progress=False)
    assert trainer.epochs == 1 and type(trainer.epochs) is int


@pytest.mark.parametrize("call", [
    lambda: tk.create("resnet18", num_classes=0, pretrained=False),
    lambda: tk.adapt(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), 0),
    lambda: tk.Trainer(torch.nn.Linear(1, 1), epochs=0, device="cpu"),
    lambda: tk.fine_tune(tk.create("resnet18", 2, in_chans=1, pretrained=False), _tiny_data(),
                         epochs=0, device="cpu"),
    lambda: TensorLoader(torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(2), batch_size=0),
    lambda: tk.FeatureLoader(torch.zeros(2, 3), torch.zeros(2), batch_size=0),
    lambda: confusion_matrix(torch.tensor([0]), torch.tensor([0]), num_classes=0),
])
def test_zero_counts_fail_with_one_message(call):
    # Before: num_classes=0 and epochs=0 failed with four different messages.
    with pytest.raises(tk.ConfigError, match=POSITIVE):
        call()


@pytest.mark.parametrize(("value", "ok"), [
    (1, True), (np.int64(3), True), (True, False), (2.0, False), ("3", False), (0, False),
    (None, False),
])
def test_positive_int(value, ok):
    if ok:
        assert _validate.positive_int("n", value) == int(value)
    else:
        message = r"n must be a positive integer, got .*; e\.g\. n=1"
        with pytest.raises(tk.ConfigError, match=message):
            _validate.positive_int("n", value)


def test_rate_and_probability_and_image_size():
    assert _validate.rate("lr", np.float32(0.5)) == 0.5
    for bad in (-1.0, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(tk.ConfigError, match="lr must be a finite number >= 0"):
            _validate.rate("lr", bad)
    with pytest.raises(tk.ConfigError, match="lr must be a finite number > 0, got 0"):
        _validate.rate("lr", 0, allow_zero=False)
    with pytest.raises(tk.ConfigError, match=r"hflip must be a finite number >= 0 and <= 1"):
        Augment(hflip=1.5)
    assert _validate.image_size(np.int64(32)) == (32, 32)
    assert _validate.image_size((24, 32)) == (24, 32)
    for bad in (0, (32,), (32, 0), "32", 3.5, (True, 3)):
        with pytest.raises(tk.ConfigError, match="must be a positive int or \\(height, width\\)"):
            _validate.image_size(bad)


def test_choice_names_the_closest_value():
    with pytest.raises(tk.ConfigError, match=r"precision='bf15' is not valid; use one of "
                                             r"'fp32', 'bf16', 'fp16'\. Did you mean 'bf16'"):
        tk.Trainer(torch.nn.Linear(1, 1), precision="bf15", device="cpu")


def test_trainer_arguments_are_checked_without_a_trainer():
    tk.train.check_trainer_args(epochs=2, monitor="val_acc", has_val=True)
    with pytest.raises(tk.ConfigError, match="Did you mean 'weight_decay'"):
        tk.train.check_trainer_args(weight_decai=0.1)
    with pytest.raises(tk.ConfigError, match="monitor='val_acc' is not a history key"):
        tk.train.check_trainer_args(monitor="val_acc", has_val=False)
    with pytest.raises(tk.ConfigError, match="grad_clip must be a finite number > 0"):
        tk.train.check_trainer_args(grad_clip=0.0)
