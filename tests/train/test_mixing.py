"""Tests of transferkit.train.mixing: mixup/CutMix batches, in the Trainer, and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from transferkit.data import Augment, TensorLoader
from transferkit.errors import ConfigError
from transferkit.train import Callback, Trainer
from transferkit.train.mixing import batch_mixer


def test_off_unless_an_alpha_is_given_and_alphas_are_checked():
    assert batch_mixer(mixup=0.0, cutmix=0.0, num_classes=3) is None
    with pytest.raises(ConfigError, match=r"mixup must be a finite number >= 0, got -0\.2"):
        batch_mixer(mixup=-0.2, cutmix=0.0, num_classes=3)
    with pytest.raises(ConfigError, match="cutmix must be a finite number >= 0, got nan"):
        Trainer(nn.Linear(2, 2), device="cpu", cutmix=float("nan"))


def test_mixup_mixes_each_sample_with_its_neighbour_by_one_ratio():
    torch.manual_seed(0)
    x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])  # odd batch size
    mixed, targets = batch_mixer(mixup=0.4, cutmix=0.0, num_classes=3)(x, y)
    lam = float(targets[0, 0])  # sample 0 (class 0) mixed with sample 4 (class 1)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0))
    one_hot = torch.eye(3)[y]
    assert torch.allclose(targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area():
    torch.manual_seed(1)
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    multi_hot = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mixed, targets = batch_mixer(mixup=0.0, cutmix=1.0, num_classes=3)(x, multi_hot)
    pasted = mixed != x
    share = float(pasted[0].float().mean())  # the box's area, the same in both samples
    assert torch.equal(pasted[0], pasted[1])
    assert torch.equal(mixed[pasted.expand_as(x)], x.roll(1, 0)[pasted.expand_as(x)])
    assert torch.allclose(targets, (1 - share) * multi_hot + share * multi_hot.roll(1, 0))


class Targets(Callback):
    """Record the targets the loss saw (the loss_fn is wrapped at fit start)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_fit_start(self, trainer):
        loss = trainer.loss_fn

        def spy(logits, targets):
            self.seen.append(targets.detach().clone())
            return loss(logits, targets)

        trainer.loss_fn = spy


def test_the_trainer_mixes_training_batches_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    data = [(torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]))]
    spy = Targets()
    Trainer(model, epochs=1, device="cpu", progress=False, mixup=0.2, cutmix=1.0,
            callbacks=[spy]).fit(data, data)
    train, val = spy.seen
    assert train.shape == (6, 3) and torch.allclose(train.sum(1), torch.ones(6))
    assert not torch.equal(train, torch.eye(3)[data[0][1]])  # mixed
    assert torch.equal(val, data[0][1])  # validation is not


def run(folder: Path, targets: str, callbacks=(), resume=None) -> Trainer:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (30, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    if targets == "multi_hot":
        labels = (torch.rand(30, 3, generator=g) < 0.5).float()
        labels[0] = torch.tensor([1.0, 1.0, 0.0])
    loader = TensorLoader(images, labels, batch_size=4, shuffle=True, seed=1, mean=(0.5,),
                          std=(0.25,), augment=Augment(crop_padding=1, hflip=0.5))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Dropout(0.3), nn.Linear(16, 3))
    trainer = Trainer(model, epochs=3, lr=1e-2, device="cpu", progress=False, out_dir=folder,
                      mixup=0.4, cutmix=1.0, label_smoothing=0.1, callbacks=callbacks,
                      task="multi_label" if targets == "multi_hot" else None)
    trainer.fit(loader, resume=resume)
    return trainer


@pytest.mark.parametrize("targets", ["indices", "multi_hot"])
def test_a_mixed_run_resumed_mid_epoch_is_bitwise_the_uninterrupted_one(tmp_path, targets,
                                                                      interrupt_at):
    straight = run(tmp_path / "a", targets)
    assert straight.step == 24  # 8 batches (the last one odd: 2 images) x 3 epochs
    stopped = run(tmp_path / "b", targets, callbacks=[interrupt_at(13)])
    assert stopped.interrupted and stopped.batch_in_epoch == 5
    resumed = run(tmp_path / "b", targets, resume=True)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in resumed.history]
