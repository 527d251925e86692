"""Tests of transferkit.train.state: resuming is all or nothing, and compiled runs resume.

A failed resume must leave the model, the optimizer, the scheduler and the freezing state
exactly as they were: every test compares every tensor bitwise before and after.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from transferkit.adaptation import freeze_state
from transferkit.errors import CheckpointError
from transferkit.train import Trainer
from transferkit.train.checkpoint import load_checkpoint, save_checkpoint
from transferkit.train.state import load_into


def net(num_classes: int = 5, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes),
    )


def data(num_classes: int = 5, n: int = 3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, num_classes, (4,),
                                                                  generator=g))
            for _ in range(n)]


def trainer(model: nn.Module, out_dir: Path | None = None, **kwargs) -> Trainer:
    kwargs.setdefault("optimizer", torch.optim.AdamW(model.parameters(), lr=1e-2))
    kwargs.setdefault("epochs", 1)
    return Trainer(model, device="cpu", progress=False, out_dir=out_dir, topk=(1,), **kwargs)


def snapshot(t: Trainer) -> dict:
    """Everything a resume may change, deep-copied."""
    return {
        "model": {k: v.clone() for k, v in t.model.state_dict().items()},
        "optimizer": copy.deepcopy(t.optimizer.state_dict()),
        "scheduler": copy.deepcopy(t.scheduler.state_dict()) if t.scheduler else None,
        "freeze": freeze_state(t.model),
        "requires_grad": [p.requires_grad for p in t.model.parameters()],
        "counters": (t.epoch, t.step, t.batch_in_epoch, list(t.history)),
    }


def same(a: object, b: object) -> bool:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (isinstance(b, type(a)) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b, strict=True)))
    return a == b


def trained(num_classes: int, folder: Path, seed: int = 0, **kwargs) -> Trainer:
    """A Trainer that has trained one epoch (so it has optimizer and scheduler state)."""
    t = trainer(net(num_classes, seed=seed), folder, **kwargs)
    t.fit(data(num_classes))
    return t


# ------------------------------------------------------------------ all or nothing
def test_resume_with_another_head_changes_nothing(tmp_path):
    # The case: 5 classes saved, 7 classes resumed. load_state_dict would copy the
    # 7 tensors that fit (and the freezing state) before raising about the head.
    five = trained(5, tmp_path / "five", freeze="body")
    seven = trained(7, tmp_path / "seven", seed=1, optimizer=None)  # default AdamW + schedule
    before = snapshot(seven)
    assert before["optimizer"]["state"] and freeze_state(five.model)["policy"] == "body"
    with pytest.raises(CheckpointError) as err:
        seven.fit(data(7), epochs=2, resume=tmp_path / "five" / "last.pt")
    assert str(err.value) == (
        f"Checkpoint {str(tmp_path / 'five' / 'last.pt')!r} does not fit this model: tensor "
        "'5.weight' has shape (5, 16) in the file but (7, 16) in the model. Nothing was "
        "loaded: resume with the model it was saved from (same architecture, num_classes "
        "and in_chans)."
    )
    assert same(snapshot(seven), before)


def test_resume_with_another_optimizer_changes_nothing(tmp_path):
    # The model fits; the optimizer (2 groups of the default AdamW vs 1) does not.
    trained(5, tmp_path / "a")
    other = trained(5, tmp_path / "b", seed=1, optimizer=None)
    before = snapshot(other)
    with pytest.raises(CheckpointError, match=r"does not fit this AdamW \(ValueError: loaded "
                                              r"state dict has a different number of parameter"):
        other.fit(data(), epochs=2, resume=tmp_path / "a" / "last.pt")
    assert same(snapshot(other), before)


def test_scheduler_that_does_not_fit_puts_the_optimizer_back(tmp_path):
    # Model and optimizer fit; the scheduler (StepLR's state into a LambdaLR) fails after
    # the optimizer was loaded, which must then be put back.
    model = net(5, seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer(model, tmp_path / "a", optimizer=opt,
            scheduler=torch.optim.lr_scheduler.StepLR(opt, 1)).fit(data())
    model = net(5, seed=6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    other = trainer(model, tmp_path / "b", optimizer=opt,
                    scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5))
    other.fit(data())
    before = snapshot(other)
    with pytest.raises(CheckpointError, match=r"does not fit this LambdaLR \(KeyError: "
                                              r"'lr_lambdas'\)\. Nothing was loaded"):
        other.fit(data(), epochs=2, resume=tmp_path / "a" / "last.pt")
    assert same(snapshot(other), before)
    assert [g["lr"] for g in other.optimizer.param_groups] == [5e-4]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("best"), r"is incomplete: missing \['best'\]"),
        (lambda s: s.update(step="7"), r"entries \['step'\] have the wrong type"),
        (lambda s: s["rng"].update(torch="nope"), r"Cannot restore the random generators"),
        (lambda s: s["freeze"].update(frozen=["nope.weight"]),
         r"freezes 1 parameters the model does not have \(first: \['nope.weight'\]\)"),
    ],
    ids=["missing-entry", "wrong-type", "bad-rng", "bad-freeze"],
)
def test_a_bad_entry_fails_before_anything_changes(tmp_path, edit, message):
    trained(5, tmp_path / "a")
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    edit(state)
    bad = save_checkpoint(state, tmp_path / "bad.pt")
    other = trained(5, tmp_path / "b", seed=1)
    before, rng = snapshot(other), torch.get_rng_state()
    with pytest.raises(CheckpointError, match=message):
        other.fit(data(), epochs=2, resume=bad)
    assert same(snapshot(other), before)
    assert torch.equal(torch.get_rng_state(), rng)  # checking the RNG state put it back


def test_damaged_checkpoint_trains_nothing(tmp_path, damage):
    first = trained(5, tmp_path)
    entry = damage.zip_tensor(tmp_path / "last.pt", first.model[0].weight)
    other = trained(5, tmp_path / "b", seed=1)
    before = snapshot(other)
    with pytest.raises(CheckpointError, match=(
        rf"is corrupt: zip entry '{entry}' \(the data of tensor 'model/0.weight'\) fails its "
        r"CRC-32 check")):
        other.fit(data(), epochs=2, resume=tmp_path / "last.pt")
    assert same(snapshot(other), before)


# ------------------------------------------------------------------ torch.compile
def compiled(model: nn.Module) -> nn.Module:
    # The "eager" backend wraps the model exactly as the default one does (an
    # OptimizedModule holding it as _orig_mod) without the minute of code generation.
    return torch.compile(model, backend="eager")


def test_checkpoint_of_a_compiled_model_holds_the_plain_names(tmp_path):
    model = net()
    t = trainer(compiled(model), tmp_path)
    assert list(t.state_dict()["model"]) == list(model.state_dict())
    assert all(not k.startswith("_orig_mod.") for k in t.state_dict()["model"])


def test_compiled_run_resumes_uncompiled_exactly(tmp_path):
    straight = trainer(net(), epochs=2)
    straight.fit(data(), epochs=2)
    first = trainer(compiled(net()), tmp_path)
    first.fit(data())
    again = trainer(net(seed=9), tmp_path)  # other initial weights: all come from last.pt
    again.fit(data(), epochs=2, resume=True)
    assert same(again.model.state_dict(), straight.model.state_dict())
    assert [{k: v for k, v in r.items() if k != "time"} for r in again.history] == [
        {k: v for k, v in r.items() if k != "time"} for r in straight.history]


def test_plain_run_resumes_into_a_compiled_model(tmp_path):
    first = trainer(net(), tmp_path)
    first.fit(data())
    model = net(seed=9)
    again = trainer(compiled(model), tmp_path)
    again.fit(data(), epochs=1, resume=True)  # already done: loads, trains nothing
    assert same(model.state_dict(), first.model.state_dict())


def test_a_scaler_that_fails_half_way_is_put_back_with_the_optimizer_and_scheduler(tmp_path):
    # GradScaler.load_state_dict sets the scale, then raises KeyError on the next entry;
    # the optimizer and the scheduler were loaded before it. (A CPU GradScaler: the
    # Trainer makes one only for fp16 on CUDA, but load_into treats every part alike.)
    trained(5, tmp_path / "a", optimizer=None)
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    state["scaler"] = {"scale": 2.0}
    other = trained(5, tmp_path / "b", seed=1, optimizer=None)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before, scaler_before = snapshot(other), scaler.state_dict()
    with pytest.raises(CheckpointError, match=r"does not fit this GradScaler \(KeyError: "
                                              r"'growth_factor'\)\. Nothing was loaded"):
        load_into(state, model=other.model, optimizer=other.optimizer,
                  scheduler=other.scheduler, scaler=scaler, path="a/last.pt")
    assert same(snapshot(other), before)
    assert scaler.state_dict() == scaler_before


def test_a_compiled_models_parameters_are_named_as_its_own_in_warnings():
    model = net()
    opt = torch.optim.SGD(model[5].parameters(), lr=0.1)  # lacks the body's parameters
    with pytest.warns(UserWarning, match=r"lacks 4 parameters \(e\.g\. '0\.weight'\)"):
        trainer(compiled(model), optimizer=opt, freeze="body", unfreeze_every=1).fit(data(n=1))
