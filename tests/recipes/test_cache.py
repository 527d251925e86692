"""Cached features: extraction, the feature loader and the head on features (recipes.cache)."""

from __future__ import annotations

import pytest
import torch

import transferkit as tk
from transferkit.data.pipeline import Augment, TensorLoader
from transferkit.errors import DataError
from transferkit.recipes import (
    EvalMode,
    FeatureLoader,
    HeadOnFeatures,
    extract_features,
    loader_like,
    plain_loader,
)


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tk.create("resnet18", 3, in_chans=1, pretrained=False)


def _loader(**kw) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(20) % 3
    return TensorLoader(images, labels, batch_size=8, mean=(0.5,), std=(0.25,), **kw)


def test_features_are_the_heads_input(model):
    x = torch.randn(6, 1, 16, 16)
    feats, labels = extract_features(model, [(x, torch.tensor([0, 1, 2, 0, 1, 2]))])
    assert feats.shape == (6, 512) and feats.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.fc(feats), model(x), atol=1e-5)


def test_extraction_restores_mode_and_leaves_no_hook(model):
    model.train()
    extract_features(model, [(torch.randn(2, 1, 16, 16), torch.tensor([0, 1]))])
    assert model.training and model.layer1[0].bn1.training
    assert not model.fc._forward_pre_hooks


def test_tensor_loader_read_without_augment_or_shuffle_and_left_unchanged(model):
    loader = _loader(shuffle=True, augment=Augment(crop_padding=2, hflip=0.5, erase=0.5), seed=3)
    loader.set_epoch(4)
    first, labels = extract_features(model, loader)
    second, _ = extract_features(model, loader)
    assert torch.equal(first, second)  # no random augmentation
    assert labels.tolist() == (torch.arange(20) % 3).tolist()  # stored order
    assert loader.shuffle and loader.augment is not None and loader.epoch == 4
    plain = plain_loader(loader)
    assert plain is not loader and plain.augment is None and not plain.shuffle
    assert loader.augment is not None


def test_other_iterables_are_read_as_given(model):
    data = [(torch.randn(3, 1, 16, 16), torch.tensor([2, 1, 0]))]
    assert plain_loader(data) is data
    _, labels = extract_features(model, data)
    assert labels.tolist() == [2, 1, 0]


def test_bad_data_raises(model):
    with pytest.raises(DataError, match="no batches"):
        extract_features(model, [])
    with pytest.raises(DataError, match="inputs, targets"):
        extract_features(model, [torch.randn(2, 1, 16, 16)])


def test_feature_loader_order_is_a_function_of_seed_and_epoch():
    feats, labels = torch.arange(20.0).view(10, 2), torch.arange(10)
    a = FeatureLoader(feats, labels, batch_size=4, seed=1)
    b = FeatureLoader(feats, labels, batch_size=4, seed=1)
    epoch0 = [y for _, y in a]
    epoch1 = [y for _, y in a]  # iterating advances the epoch
    assert [len(y) for y in epoch0] == [4, 4, 2] and len(a) == 3
    assert sorted(torch.cat(epoch0).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))
    b.set_epoch(1, start_batch=1)  # exact mid-epoch resume
    assert [y.tolist() for _, y in b] == [y.tolist() for y in epoch1[1:]]
    x, y = next(iter(FeatureLoader(feats, labels, batch_size=4, shuffle=False)))
    assert x.shape == (4, 2, 1, 1) and torch.equal(x.view(4, 2), feats[:4])
    assert y.tolist() == [0, 1, 2, 3]


def test_feature_loader_rejects_bad_input():
    with pytest.raises(tk.ConfigError, match="batch_size"):
        FeatureLoader(torch.zeros(2, 3), torch.zeros(2), batch_size=0)
    with pytest.raises(DataError, match=r"\[N, D\]"):
        FeatureLoader(torch.zeros(2, 3, 4), torch.zeros(2))
    with pytest.raises(DataError, match="labels"):
        FeatureLoader(torch.zeros(2, 3), torch.zeros(3))


def test_head_on_features_trains_the_models_own_head(model):
    probe = HeadOnFeatures(model, (512,))
    assert probe.head is model.fc
    assert probe.input_channels == 512
    assert tk.get_info(probe) is tk.get_info(model)  # a view: questions go to the model
    assert [n for n, _ in probe.named_parameters()] == ["head.weight", "head.bias"]
    out = probe(torch.randn(5, 512, 1, 1))
    assert out.shape == (5, 3)
    out.sum().backward()
    assert model.fc.weight.grad is not None


def test_loader_like_follows_the_tensor_loaders_order():
    loader = _loader(shuffle=True, seed=5)
    feats, labels = torch.arange(20.0).view(20, 1), torch.arange(20)
    like = loader_like(loader, feats, labels)
    assert like.batch_size == 8 and len(like) == len(loader)
    for epoch in (0, 3):
        like.set_epoch(epoch)
        visited = torch.cat([y for _, y in like])
        assert torch.equal(visited, loader.indices(epoch))
    assert not loader_like(_loader(shuffle=False), feats, labels).indices(2).diff().lt(0).any()


def test_loader_like_a_dataloader_and_a_list():
    from torch.utils.data import DataLoader, TensorDataset

    feats, labels = torch.randn(10, 4), torch.arange(10)
    data = DataLoader(TensorDataset(torch.randn(10, 1, 4, 4), labels), batch_size=3,
                      shuffle=True, drop_last=True)
    like = loader_like(data, feats, labels, seed=2)
    assert (like.batch_size, like.shuffle, like.drop_last, len(like)) == (3, True, True, 3)
    plain = DataLoader(TensorDataset(torch.randn(10, 1, 4, 4), labels), batch_size=4)
    assert not loader_like(plain, feats, labels).shuffle
    batches = [(torch.randn(5, 1, 4, 4), torch.arange(5))] * 2
    assert loader_like(batches, feats, labels).batch_size == 5


def test_eval_mode_keeps_the_model_in_eval(model):
    wrapped = EvalMode(model)
    wrapped.train()
    assert wrapped.training and not model.training and not model.bn1.training
    assert tk.get_info(wrapped).in_chans == 1
    x = torch.randn(2, 1, 16, 16)
    model.eval()
    assert torch.equal(wrapped(x), model(x))


# Speed options of the extraction (channels-last, batch size): same features, model untouched.

def _state(model: torch.nn.Module) -> dict:
    """Everything extraction must leave as it was: tensors (storage, strides), flags, modes."""
    tensors = {name: (t.data_ptr(), t.stride(), t.dtype, t.requires_grad, type(t))
               for name, t in [*model.named_parameters(), *model.named_buffers()]}
    values = {name: t.detach().clone() for name, t in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    return {"tensors": tensors, "values": values, "modes": modes}


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_fast_extraction_gives_the_plain_features(name):
    torch.manual_seed(0)
    model = tk.create(name, 3, in_chans=1, pretrained=False)
    loader = _loader()
    # The plain way: channels-first, the loader's batches.
    plain, plain_labels = extract_features(model, loader, channels_last=False, batch_size=8)
    fast, labels = extract_features(model, loader)  # CPU default: channels-last, auto batch
    assert torch.equal(labels, plain_labels) and fast.shape == plain.shape
    # Float rounding only: oneDNN sums in another order in the channels-last layout.
    assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-5)
    model.eval()
    with torch.no_grad():  # and they are still the head's inputs
        x = torch.cat([xb for xb, _ in plain_loader(loader)])
        ref = model(x)
    head = dict(model.named_modules())[tk.get_info(model).heads[0]]
    with torch.no_grad():
        assert torch.allclose(head(fast), ref, rtol=1e-4, atol=1e-5)


def test_fast_extraction_leaves_the_model_exactly_as_it_was(model):
    model.train()
    model.bn1.eval()  # a mixed state: extraction must not reset it to model.training
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    before = _state(model)
    assert not model.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    extract_features(model, _loader(), channels_last=True)
    after = _state(model)
    assert after["tensors"] == before["tensors"]  # same storages, strides, requires_grad
    assert after["modes"] == before["modes"]
    assert all(torch.equal(after["values"][k], v) for k, v in before["values"].items())
    assert not model.fc._forward_pre_hooks and not model.conv1._forward_hooks


def _conv_layouts(model, **kwargs) -> list[bool]:
    seen: list[bool] = []
    handle = model.layer1[0].conv1.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        extract_features(model, _loader(), **kwargs)
    finally:
        handle.remove()
    return seen


def test_channels_last_is_the_cpu_default_for_conv_models(model):
    assert set(_conv_layouts(model)) == {True}
    assert set(_conv_layouts(model, channels_last=False)) == {False}
    assert set(_conv_layouts(model, channels_last=True)) == {True}


def _batch_sizes(model, data, **kwargs) -> list[int]:
    sizes: list[int] = []
    handle = model.fc.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    try:
        _, labels = extract_features(model, data, **kwargs)
    finally:
        handle.remove()
    assert sum(sizes) == len(labels)
    return sizes


def test_extraction_batch_size(model):
    loader = _loader()  # 20 samples of 16 x 16, batches of 8
    assert _batch_sizes(model, loader) == [20]  # auto: 256 at 16 px, clamped by N
    assert _batch_sizes(model, loader, batch_size=6) == [6, 6, 6, 2]
    assert loader.batch_size == 8  # the caller's loader is not changed
    batches = [(torch.randn(10, 1, 16, 16), torch.arange(10) % 3),
               (torch.randn(3, 1, 16, 16), torch.arange(3))]
    assert _batch_sizes(model, batches, batch_size=4) == [4, 4, 2, 3]  # split, never merged
    assert _batch_sizes(model, batches) == [10, 3]
    feats, labels = extract_features(model, batches, batch_size=4)
    whole, whole_labels = extract_features(model, batches, batch_size=16)
    assert torch.equal(labels, whole_labels)
    assert torch.allclose(feats, whole, rtol=1e-4, atol=1e-5)


def test_extraction_batch_size_rule():
    from transferkit.recipes.cache import EXTRACT_BATCH, EXTRACT_PIXELS, extraction_batch_size

    assert extraction_batch_size(32, 32) == 256 == EXTRACT_BATCH[1]
    assert extraction_batch_size(64, 64) == EXTRACT_PIXELS // 4096 == 64
    assert extraction_batch_size(224, 224) == 8 == EXTRACT_BATCH[0]
    with pytest.raises(DataError, match="no pixels"):
        extraction_batch_size(0, 32)


def test_extraction_options_are_checked(model):
    data = [(torch.randn(2, 1, 16, 16), torch.tensor([0, 1]))]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(tk.ConfigError, match="batch_size"):
            extract_features(model, data, batch_size=bad)
    with pytest.raises(tk.ConfigError, match="channels_last"):
        extract_features(model, data, channels_last="yes")
