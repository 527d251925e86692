"""The Trainer's default optimizer: the same weight-decay rule as param_groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import transferkit as tk
from transferkit.train import Trainer


def decay_of(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}


def test_default_optimizer_exempts_what_timm_exempts():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32)
    model = tk.adapt(vit, 3, input_size=32)
    trainer = Trainer(model, lr=1e-3, weight_decay=0.05, device="cpu", progress=False)
    decay = decay_of(model, trainer.optimizer)
    assert len(decay) == len(list(model.parameters()))
    zero = {n for n, wd in decay.items() if wd == 0}
    one_dim = {n for n, p in model.named_parameters() if p.ndim < 2}
    assert zero == one_dim | {"pos_embed", "cls_token"}
    assert {wd for wd in decay.values() if wd} == {0.05}
    groups = tk.param_groups(model, 1e-3, 1e-4, weight_decay=0.05, include_frozen=True)
    assert zero == {n for n, p in model.named_parameters()
                    if any(p is q for g in groups if g["weight_decay"] == 0 for q in g["params"])}


class NoHead(nn.Module):
    """No nn.Linear or convolution writes the output (a bare Parameter does): no head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.ones(3, 3))
        self.pos = nn.Parameter(torch.zeros(1, 3))
        self.norm = nn.LayerNorm(3)

    def no_weight_decay(self):
        return {"pos"}

    def forward(self, x):
        return self.norm(x.mean((2, 3)) @ self.proj + self.pos)


def test_without_a_head_biases_and_exempt_parameters_still_get_no_decay():
    model = NoHead()
    info = tk.get_info(model)  # its pooled features end in a bare Parameter: no head
    assert (info.heads, info.num_classes) == ((), 0)
    trainer = Trainer(model, lr=1e-3, weight_decay=0.05, device="cpu", progress=False)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["all", "all/no_decay"]
    assert decay_of(model, trainer.optimizer) == {
        "proj": 0.05, "pos": 0.0, "norm.weight": 0.0, "norm.bias": 0.0
    }
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {1e-3}


def test_layer_decay_without_a_head_says_it_needs_one():
    model = NoHead()
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(tk.HeadNotFoundError, match=r"layer_decay=0.7 counts stages back from "
                                                   r"the head, but the model has no recognis"):
        Trainer(model, lr=1e-3, layer_decay=0.7, device="cpu", progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
