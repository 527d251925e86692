"""Tests of transferkit.train.tta and of Trainer.evaluate/predict(tta=...)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import ConfigError, DataError
from transferkit.train import TTA_MODES, Trainer, tta_probs, tta_views


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 32 * 32, 3)).eval()


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_the_views_are_the_image_its_mirror_and_its_diagonal_shifts():
    x = images(2)
    assert [len(tta_views(x, m)) for m in TTA_MODES] == [1, 2, 5, 10]
    assert tta_views(x, "none")[0] is x
    flip = tta_views(x, "flip")
    assert torch.equal(flip[0], x) and torch.equal(flip[1], x.flip(-1))
    crops = tta_views(x, "crops")  # 32 px: shifted by 2 px, the edge repeated
    up_left = crops[1]  # moved by (-2, -2): pixel (i, j) shows (i + 2, j + 2)
    assert torch.equal(up_left[..., :30, :30], x[..., 2:, 2:])
    assert torch.equal(up_left[..., 30:, :30], x[..., 31:, 2:].expand(-1, -1, 2, -1))
    down_right = crops[4]
    assert torch.equal(down_right[..., 2:, 2:], x[..., :30, :30])
    both = tta_views(x, "flip+crops")
    for a, b in zip(both[5:], crops, strict=True):
        assert torch.equal(a, b.flip(-1))


def test_probabilities_are_averaged_over_the_views():
    model, x = net(), images()
    assert torch.equal(tta_probs(model, x, "none"), model(x).float().softmax(-1))
    for mode in ("flip", "flip+crops"):
        want = torch.stack([model(v).softmax(-1) for v in tta_views(x, mode)]).mean(0)
        torch.testing.assert_close(tta_probs(model, x, mode), want, rtol=0, atol=1e-6)


def test_a_mirror_symmetric_model_is_unchanged_by_flips():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 3))
    x = images()
    torch.testing.assert_close(tta_probs(model, x, "flip"), tta_probs(model, x, "none"),
                               rtol=0, atol=1e-6)


def test_bad_modes_and_inputs_fail_clearly():
    with pytest.raises(ConfigError, match=r"tta.*'flips'.*flip"):
        tta_views(images(), "flips")
    with pytest.raises(DataError, match=r"tta='flip' needs image batches \(N, C, H, W\), got "
                                        r"shape \(4, 16\); cached features cannot be flipped"):
        tta_views(torch.randn(4, 16), "flip")
    model = net()
    with pytest.raises(ConfigError, match="flips"):
        Trainer(model, device="cpu").predict([images()], tta="flips")


def test_trainer_evaluate_and_predict_average_the_views():
    model = net()
    trainer = Trainer(model, device="cpu", topk=(1,), progress=False)
    x, y = images(8), torch.arange(8) % 3
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    probs = tta_probs(model, x, "flip+crops")
    got = trainer.predict(data, tta="flip+crops")
    torch.testing.assert_close(got, probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(trainer.predict(data, probs=False, tta="flip"),
                               tta_probs(model, x, "flip").log(), rtol=0, atol=1e-5)
    metrics = trainer.evaluate(data, tta="flip+crops")
    assert metrics["count"] == 8
    assert metrics["acc"] == (probs.argmax(-1) == y).float().mean().item()
    assert metrics["loss"] == pytest.approx(F.nll_loss(probs.log(), y).item(), abs=1e-5)
    assert trainer.evaluate(data) != metrics  # tta="none": the model as it is
    assert torch.equal(trainer.predict(data), model(x).softmax(-1))
