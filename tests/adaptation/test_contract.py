"""Contract tests: adapt/param_groups/freeze on every torchvision classifier and 44 timm models.

Random weights, small inputs. Skipped by size (too slow to build three times on a 2-core
CI machine, same code paths as their smaller siblings): vit_h_14, regnet_y_128gf.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

import transferkit as tk

TV_MODELS = torchvision.models.list_models(module=torchvision.models)
TOO_BIG = {"vit_h_14", "regnet_y_128gf"}
TIMM_MODELS = [
    "resnet18", "resnet50d", "efficientnet_lite0", "efficientnet_b0", "mobilenetv3_small_100",
    "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "levit_128s",
    "vit_tiny_patch16_224",
    "convnext_atto", "regnetx_002", "densenet121", "tresnet_m", "inception_v3", "mixer_s16_224",
    "resmlp_12_224", "crossvit_tiny_240", "cait_xxs24_224", "coat_lite_tiny", "convit_tiny",
    "pit_ti_224", "swin_tiny_patch4_window7_224", "poolformer_s12", "ghostnet_100", "dla34",
    "mobilevit_xxs", "edgenext_xx_small", "fastvit_t8", "repvgg_a0", "rexnet_100", "lcnet_050",
    "dpn68", "ese_vovnet19b_slim", "selecsls42b", "gernet_s", "twins_pcpvt_small",
    "efficientvit_b0", "xcit_nano_12_p16_224", "visformer_tiny", "mobileone_s0", "hgnetv2_b0",
    "tiny_vit_5m_224", "maxvit_nano_rw_256", "nfnet_l0",
]


def _build_tv(name: str) -> nn.Module:
    with_aux = name in {"googlenet", "inception_v3"}
    kwargs = {"init_weights": False, "aux_logits": True} if with_aux else {}
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _check(model: nn.Module, num_classes: int = 7) -> None:
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    size = tk.get_info(model).input_size[0]
    ref = copy.deepcopy(model)
    for in_chans in (1, 4, 3):
        m = model if in_chans == 3 else copy.deepcopy(ref)
        tk.adapt(m, num_classes, in_chans=in_chans)
        info = tk.get_info(m)
        assert info.num_classes == num_classes and info.in_chans == in_chans
        assert len(info.mean) == len(info.std) == in_chans
        m.eval()
        with torch.no_grad():
            out = m(torch.randn(2, in_chans, size, size))
        assert out.shape == (2, num_classes)
        after = m.state_dict()
        changed_heads = tuple(h + "." for h in info.head_modules)
        inputs = {f"{n}.weight" for n in info.input_layers}
        for key, value in before.items():
            if key.startswith(changed_heads):
                continue
            if key in inputs and in_chans != 3:
                assert torch.equal(after[key], tk.adapt_input_weight(value, in_chans)), key
                if in_chans == 1:
                    c = value.shape[1] // 3
                    want = value.reshape(value.shape[0], c, 3, *value.shape[2:]).sum(2)
                    assert torch.allclose(after[key], want), key
                continue
            assert torch.equal(after[key], value), key
    # param groups cover every trainable parameter exactly once, by identity
    groups = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    # Inception v3's auxiliary branch needs its full 299 px input in training mode
    train_size = 299 if tk.get_info(model).aux_heads else size
    # body frozen, default BN mode: every BatchNorm whose parameters are all frozen keeps
    # its running stats through a training-mode forward pass (a head's may move)
    tk.freeze(model, "body")
    bns = [(n, list(m.parameters())) for n, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = {n for n, ps in bns if ps and not any(p.requires_grad for p in ps)}
    stats = {k: v.clone() for k, v in model.state_dict().items() if k.rpartition(".")[0] in kept}
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, train_size, train_size))
    for k, v in model.state_dict().items():
        if k in stats:
            assert torch.equal(v, stats[k]), k
    # body frozen + frozen BN: no gradient, no change after a step, running stats fixed
    tk.freeze(model, "body", bn="frozen")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen, "body freezing froze nothing"
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    out = model(torch.randn(2, 3, train_size, train_size))
    out = out[0] if isinstance(out, tuple) else out
    out.float().sum().backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n]), n
    for k, v in model.state_dict().items():
        if k in stats:
            assert torch.equal(v, stats[k]), k


@pytest.mark.parametrize("name", TV_MODELS)
def test_torchvision_contract(name: str) -> None:
    if name in TOO_BIG:
        pytest.skip(f"{name}: too large to build three times on the 2-core CI machine")
    _check(_build_tv(name))


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_contract(name: str) -> None:
    _check(timm.create_model(name, pretrained=False))


def test_torchvision_has_all_80_builders() -> None:
    assert len(TV_MODELS) == 80
