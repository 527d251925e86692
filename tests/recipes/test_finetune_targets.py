"""fine_tune() with soft and multi-hot targets, mixing, label smoothing and class weights."""

from __future__ import annotations

import pytest
import torch

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.recipes import L2SP, fine_tune
from transferkit.train import Callback
from transferkit.train.targets import MultiLabelLoss, SingleLabelLoss


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tk.create("resnet18", 3, in_chans=1, pretrained=False)


def _tensors(n: int = 32, multi: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g)
    if not multi:
        return images, torch.arange(n) % 3
    labels = (torch.rand(n, 3, generator=g) < 0.4).float()
    labels[::4] = torch.tensor([1.0, 1.0, 0.0])  # every batch has a row with two labels
    return images, labels


class Phases(Callback):
    """Record each phase's Trainer options as it starts."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float, str | None]] = []

    def on_fit_start(self, trainer):
        self.seen.append((trainer.mixup, trainer.cutmix, trainer.task))


@pytest.mark.parametrize("recipe", ["linear_probe", "lp_ft"])
def test_multi_label_tensors_train_on_cached_features_and_images(recipe):
    model = _model()
    phases = Phases()
    result = fine_tune(model, _tensors(multi=True), _tensors(16, multi=True, seed=1),
                       recipe=recipe, epochs=2, device="cpu", batch_size=8, callbacks=[phases])
    assert [task for *_, task in phases.seen] == ["multi_label"] * len(phases.seen)
    assert {"train_f1", "val_map", "val_f1"} <= set(result.history[-1])
    trainer = result.trainer
    assert trainer.task == "multi_label" and isinstance(trainer.loss_fn, MultiLabelLoss)
    images, labels = _tensors(8, multi=True, seed=2)
    loader = tk.data.TensorLoader(images, labels, batch_size=8, image_size=16,
                                  mean=(0.5,), std=(0.5,))
    probs = trainer.predict(loader)
    assert probs.shape == (8, 3) and not torch.allclose(probs.sum(1), torch.ones(8))
    assert set(trainer.evaluate(loader)) == {"loss", "map", "f1", "count"}


def test_mixing_is_refused_where_a_phase_trains_on_a_cache():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ConfigError, match="'linear_probe' trains on features cached once.*"
                                          "cache_features=False"):
        fine_tune(model, _tensors(), recipe="linear_probe", epochs=1, device="cpu", mixup=0.2)
    with pytest.raises(ConfigError, match="cutmix=1.0 mixes images, but freeze_stages=2"):
        fine_tune(model, _tensors(), recipe="full", epochs=1, device="cpu", cutmix=1.0,
                  freeze_stages=2)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    phases = Phases()
    fine_tune(model, _tensors(), recipe="linear_probe", epochs=1, device="cpu", mixup=0.2,
              cache_features=False, callbacks=[phases])
    assert phases.seen == [(0.2, 0.0, "single_label")]


def test_lp_ft_mixes_its_fine_tuning_phase_only_and_says_so():
    phases = Phases()
    result = fine_tune(_model(), _tensors(), recipe="lp_ft", epochs=2, device="cpu", mixup=0.2,
                       cutmix=1.0, callbacks=[phases])
    assert phases.seen == [(0.0, 0.0, "single_label"), (0.2, 1.0, "single_label")]
    assert "lp_ft: mixing (mixup=0.2 and cutmix=1.0) in the fine-tuning phase only; the " \
           "probe fits the head on the unmixed images." in result.notes


def test_l2sp_composes_with_label_smoothing_and_balanced_weights():
    images, labels = _tensors(24)
    labels = torch.tensor([0] * 12 + [1] * 8 + [2] * 4)
    result = fine_tune(_model(), (images, labels), recipe="l2sp", epochs=1, device="cpu",
                       label_smoothing=0.1, class_weights="balanced")
    trainer = result.trainer
    assert isinstance(trainer.penalty, L2SP) and isinstance(trainer.loss_fn, SingleLabelLoss)
    assert trainer.loss_fn.label_smoothing == 0.1
    assert torch.allclose(trainer.class_weights, torch.tensor([24 / 36, 24 / 24, 24 / 12]))
    assert "class_weights='balanced' (inverse class frequency): 0.667, 1, 2" in result.notes
    with pytest.raises(ConfigError, match="l2sp=0.01 adds the L2-SP penalty, but penalty="):
        fine_tune(_model(), (images, labels), recipe="l2sp", epochs=1, device="cpu",
                  penalty=lambda: torch.zeros(()))
