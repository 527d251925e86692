"""Training the stages after a cached, frozen prefix equals running the whole model."""

from __future__ import annotations

import pytest
import torch

import transferkit as tk
from transferkit.errors import ConfigError, DataError, StageIndexError
from transferkit.recipes import cache_inputs, split_at_stage


@pytest.mark.parametrize("name,k", [("resnet18", 3), ("efficientnet_lite0", 3), ("resnet18", 1)])
def test_tail_on_prefix_equals_model(name: str, k: int) -> None:
    torch.manual_seed(0)
    model = tk.create(name, 5, in_chans=1, pretrained=False).eval()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    modules = [(n, type(m)) for n, m in model.named_modules()]
    x = torch.randn(3, 1, 32, 32)
    tail = split_at_stage(model, k, x[:2])
    feats, _ = cache_inputs(model, tail.cut, [(x, torch.zeros(3, dtype=torch.long))],
                            channels_last=False)
    with torch.no_grad():
        torch.testing.assert_close(tail(feats), model(x), atol=1e-5, rtol=1e-5)
    # The model is unchanged and whole again after the split and the tail's forward.
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert tail.input_channels == feats.shape[1]
    assert tk.get_info(tail) is tk.get_info(model)  # a view: questions go to the model
    # The tail shares the model's parameters: a step on the tail trains the model.
    assert {id(p) for p in tail.parameters()} == {id(p) for p in model.parameters()}


def test_gradients_match_the_whole_model_for_trained_stages() -> None:
    torch.manual_seed(0)
    model = tk.create("resnet18", 4, in_chans=1, pretrained=False)
    tk.freeze(model, "stages:1")  # stem + layer1 frozen: stage 2 (layer2) is trained first
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    model.eval()  # BN with running stats: both paths compute the same function
    tail = split_at_stage(model, 2, x[:2])
    loss_fn = torch.nn.CrossEntropyLoss()
    loss_fn(model(x), y).backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    feats, _ = cache_inputs(model, tail.cut, [(x, y)], channels_last=False)
    loss_fn(tail(feats), y).backward()
    split = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert full.keys() == split.keys() and "layer2.0.conv1.weight" in split
    assert not any(n.startswith(("conv1", "layer1")) for n in split)
    for n in full:
        torch.testing.assert_close(split[n], full[n], atol=1e-5, rtol=1e-4)


def test_caching_a_stage_input_restores_training_mode() -> None:
    model = tk.create("resnet18", 3, in_chans=1, pretrained=False)
    x = torch.randn(6, 1, 32, 32)
    tail = split_at_stage(model, 2, x[:2])
    model.train()
    data = [(x[:4], torch.tensor([0, 1, 2, 0])), (x[4:], torch.tensor([1, 2]))]
    feats, labels = cache_inputs(model, tail.cut, data)
    assert model.training and model.layer1[0].bn1.training
    assert feats.shape == (6, 64, 8, 8) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(DataError, match="no batches"):
        cache_inputs(model, tail.cut, [])


def test_bad_stage_and_unsplittable_models() -> None:
    model = tk.create("resnet18", 3, pretrained=False)
    x = torch.randn(2, 3, 32, 32)
    n = len(tk.get_info(model).stages)
    for bad in (0, n, -1, 1.5):
        with pytest.raises(StageIndexError, match=r"must be an int in 1\.\."):
            split_at_stage(model, bad, x)
    vit = tk.create("vit_b_16", 3, pretrained=False)
    with pytest.raises(ConfigError, match="cannot split VisionTransformer at stage 2"):
        split_at_stage(vit, 2, torch.randn(1, 3, 224, 224))
    assert not any(isinstance(m, torch.nn.Identity) for m in vit.encoder.layers)
