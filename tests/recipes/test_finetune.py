"""fine_tune() and its recipes, on a tiny model and a FashionMNIST subset (CPU)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

import transferkit as tk
from transferkit.data.pipeline import TensorLoader
from transferkit.errors import ConfigError, DataNotFoundError, UnknownPolicyError
from transferkit.recipes import (
    L2SP_ALPHA,
    LAYER_DECAY,
    RECIPES,
    UNFREEZE_UNTIL,
    fine_tune,
    list_recipes,
)
from transferkit.recipes.l2sp import L2SP

SIZE = 16
STATS = {"mean": (0.286,), "std": (0.353,)}


@pytest.fixture(scope="module")
def fmnist():
    from transferkit.data.fashion import fashion_mnist

    try:
        return fashion_mnist(offline=True)
    except DataNotFoundError:
        pytest.skip("FashionMNIST is not installed here")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tk.create("resnet18", 10, in_chans=1, pretrained=False)


def _data(fmnist, n: int, n_val: int):
    train = TensorLoader(fmnist.train_images[:n], fmnist.train_labels[:n], batch_size=16,
                         shuffle=True, image_size=SIZE, seed=1, **STATS)
    val = TensorLoader(fmnist.test_images[:n_val], fmnist.test_labels[:n_val], batch_size=32,
                       image_size=SIZE, **STATS)
    return train, val


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_recipes_are_named_and_documented():
    assert list_recipes() == ["full", "linear_probe", "lp_ft", "gradual", "llrd", "bitfit",
                              "l2sp"]
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.summary and recipe.reference
    with pytest.raises(dataclasses.FrozenInstanceError):
        RECIPES["full"].lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"recipe": "lp-ft"}, ConfigError, r"unknown recipe 'lp-ft'.*Did you mean 'lp_ft'"),
        ({"recipe": "linearprobe"}, UnknownPolicyError, r"Did you mean 'linear_probe'"),
        ({"epochs": 0}, ConfigError, r"epochs must be a positive integer, got 0"),
        ({"l2sp": -0.1}, ConfigError, r"l2sp must be a finite number >= 0, got -0.1"),
        ({"lr": 0.0}, ConfigError, r"lr must be a finite number > 0"),
        ({"recipe": "lp_ft", "epochs": 1}, ConfigError, r"needs epochs >= 2"),
        ({"recipe": "lp_ft", "probe_epochs": 3, "epochs": 3}, ConfigError, r"probe_epochs"),
        ({"recipe": "full", "probe_epochs": 1}, ConfigError, r"lp_ft' only"),
        ({"optimizer": None}, ConfigError, r"builds its optimizer"),
        ({"weight_decai": 0.1}, ConfigError, r"Did you mean 'weight_decay'"),
        ({"precision": "fp8"}, ConfigError, r"precision='fp8'"),
        ({"monitor": "val_accuracy"}, ConfigError, r"Did you mean 'val_acc'"),
        ({"bn": "eval"}, ConfigError, r"bn='eval' is not valid; use one of 'auto', 'train'"),
    ],
)
def test_bad_arguments_fail_before_anything_changes(kwargs, error, match):
    model = _model()
    before = _params(model)
    grads = [p.requires_grad for p in model.parameters()]
    data = [(torch.randn(4, 1, SIZE, SIZE), torch.tensor([0, 1, 2, 3]))]
    with pytest.raises(error, match=match):
        fine_tune(model, data, data, device="cpu", **kwargs)
    assert not _changed(before, model)
    assert [p.requires_grad for p in model.parameters()] == grads


def test_linear_probe_trains_the_head_only_and_matches_the_model(fmnist):
    model = _model()
    train, val = _data(fmnist, 64, 64)
    before = _params(model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    result = fine_tune(model, train, val, recipe="linear_probe", epochs=2, device="cpu")
    assert result.model is model and result.recipe == "linear_probe"
    assert _changed(before, model) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(buffers[n], b) for n, b in model.named_buffers())  # eval mode
    assert [(r["epoch"], r["phase"]) for r in result.history] == [(1, "probe"), (2, "probe")]
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    # The probe's val metrics (on cached features) are the full model's on the images.
    scores = result.trainer.evaluate(val)
    assert scores["acc"] == pytest.approx(result.history[-1]["val_acc"], abs=1e-9)
    assert scores["loss"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-4)


def test_cached_probe_equals_the_slow_probe(fmnist):
    train, val = _data(fmnist, 480, 160)
    fast, slow = _model(), _model()
    slow.load_state_dict(fast.state_dict())
    a = fine_tune(fast, train, val, recipe="linear_probe", epochs=2, device="cpu")
    b = fine_tune(slow, train, val, recipe="linear_probe", epochs=2, device="cpu",
                  cache_features=False)
    for ra, rb in zip(a.history, b.history, strict=True):
        assert abs(ra["val_acc"] - rb["val_acc"]) <= 0.005
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-3)
    assert a.history[-1]["val_acc"] > 0.3  # it learned something: 10 classes
    # Same order, same optimizer: the same head up to float rounding.
    assert torch.allclose(fast.fc.weight, slow.fc.weight, atol=1e-4)


def test_lp_ft_probes_then_trains_everything(fmnist, tmp_path):
    model = _model()
    train, val = _data(fmnist, 32, 32)
    before = _params(model)
    result = fine_tune(model, train, val, recipe="lp_ft", epochs=2, device="cpu",
                       out_dir=tmp_path)
    assert [(r["epoch"], r["phase"]) for r in result.history] == [(1, "probe"),
                                                                  (2, "finetune")]
    assert _changed(before, model) == set(before)
    assert all(p.requires_grad for p in model.parameters())
    assert result.trainer.model is model
    saved = json.loads((tmp_path / "history.json").read_text())
    assert [r["phase"] for r in saved] == ["probe", "finetune"]
    assert (tmp_path / "probe" / "last.pt").is_file()
    assert (tmp_path / "finetune" / "last.pt").is_file()


def test_lp_ft_keeps_the_probe_when_it_validated_better(fmnist):
    # A body LR of 0.1 wrecks the random-init body (val loss ~1e6): the probe's epoch stays
    # the best of the run, and the model ends with its weights, said in a note.
    train, val = _data(fmnist, 64, 64)
    model = _model()
    before = _params(model)
    result = fine_tune(model, train, val, recipe="lp_ft", epochs=3, lr=0.1, body_lr=0.1,
                       device="cpu")
    probe, *tuned = result.history
    assert probe["phase"] == "probe" and all(r["val_loss"] > probe["val_loss"] for r in tuned)
    head = {n for n in before if n.startswith("fc.")}
    assert _changed(before, model) == head  # the body as pretrained, the probe's head
    assert result.trainer.evaluate(val)["loss"] == pytest.approx(probe["val_loss"],
                                                                     rel=1e-5)
    assert result.notes == [f"lp_ft: the probe's best val_loss {probe['val_loss']:.4g} (epoch 1) "
                            f"beat the fine-tuning phase's best "
                            f"{min(r['val_loss'] for r in tuned):.4g}: the model keeps the "
                            "probe's weights (the body as pretrained, the probe's head)"]
    # With a body LR that trains, fine-tuning validates better and its weights stay.
    model = _model()
    result = fine_tune(model, train, val, recipe="lp_ft", epochs=3, device="cpu")
    assert min(r["val_loss"] for r in result.history[1:]) < result.history[0]["val_loss"]
    assert _changed(before, model) == set(before) and result.notes == []


def _bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


@pytest.mark.parametrize(("bn", "kept"), [(None, True), ("frozen", True), ("train", False)])
def test_lp_ft_keeps_the_pretrained_batchnorm_statistics_by_default(fmnist, bn, kept):
    # The probe is fit on eval-mode features; batch statistics in the fine-tuning phase
    # would shift them (measured: 0.59 instead of 0.82 test accuracy, docs/recipes.md).
    model = _model()
    train, val = _data(fmnist, 32, 32)
    stats, before = _bn_stats(model), _params(model)
    fine_tune(model, train, val, recipe="lp_ft", epochs=2, device="cpu", bn=bn)
    same = [torch.equal(stats[n], b) for n, b in _bn_stats(model).items()]
    assert all(same) if kept else not any(same)
    assert _changed(before, model) == set(before)  # BN's own weights still train
    assert tk.freeze_state(model)["bn"] == ("frozen" if kept else "train")


def test_full_recipe_can_keep_batchnorm_frozen(fmnist):
    model = _model()
    train, _ = _data(fmnist, 32, 32)
    stats = _bn_stats(model)
    fine_tune(model, train, recipe="full", epochs=1, device="cpu", bn="frozen")
    assert all(torch.equal(stats[n], b) for n, b in _bn_stats(model).items())
    tk.unfreeze(model)
    assert tk.freeze_state(model)["bn"] == "auto"  # the default; nothing frozen: all update


def test_bitfit_trains_biases_and_head_only(fmnist):
    model = _model()
    train, _ = _data(fmnist, 32, 32)
    before = _params(model)
    fine_tune(model, train, recipe="bitfit", epochs=1, device="cpu")
    changed = _changed(before, model)
    assert {"fc.weight", "fc.bias", "bn1.bias"} <= changed
    assert all(n.endswith("bias") or n.startswith("fc.") for n in changed)


class Openings(tk.Callback):
    """After every optimizer step: the step, the open stages, the head's LR multiplier."""

    def __init__(self, model):
        self.stages = tk.get_info(model).stages
        self.rows: list[tuple[int, list[str], float]] = []

    def on_epoch_start(self, trainer):
        if trainer.step == 0:  # what the first step trains
            self.on_batch_end(trainer)

    def on_batch_end(self, trainer):
        params = dict(tk.adaptation.unwrap(trainer.model).named_parameters())
        open_ = [s.name for s in self.stages if all(params[n].requires_grad for n in s.params)]
        head = next(g for g in trainer.optimizer.param_groups if g["name"] == "head")
        self.rows.append((trainer.step, open_, head["lr"] / head["initial_lr"]))


def test_gradual_opens_every_stage_by_step_while_the_lr_is_high(fmnist):
    # Before: one stage per epoch (unfreeze_every = max(1, (epochs - 1) // 5) = 1), against a
    # cosine stepped per optimizer step: in 5 epochs layer1 opened at 0.11x of the peak LR
    # and the stem never opened.
    model = _model()
    train, _ = _data(fmnist, 64, 32)  # 4 batches: 20 optimizer steps in 5 epochs
    before = _params(model)
    log = Openings(model)
    result = fine_tune(model, train, recipe="gradual", epochs=5, device="cpu", callbacks=[log])
    assert result.trainer.unfreeze_until == UNFREEZE_UNTIL == 0.25
    assert result.trainer.unfreeze_every is None
    stages = [s.name for s in tk.get_info(model).stages]  # 0:stem, 1:layer1 .. 4:layer4
    opened = {}  # stage -> (step after which it opened, the LR multiplier it opened at)
    for step, open_, scale in log.rows:
        for name in open_:
            opened.setdefault(name, (step, scale))
    # round(j * 0.25 * 20 / 5) steps for stage j counted back from the head
    assert {n: s for n, (s, _) in opened.items()} == {
        "4:layer4": 1, "3:layer3": 2, "2:layer2": 3, "1:layer1": 4, "0:stem": 5}
    assert [round(opened[n][1], 4) for n in reversed(stages)] == [
        1.0, 0.9932, 0.9729, 0.9397, 0.8946]  # warm-up 1 step, then cosine to step 20
    assert [open_ for step, open_, _ in log.rows if step in (0, 3, 5, 20)] == [
        [], stages[2:], stages, stages]  # step 0: the head alone
    assert _changed(before, model) == set(before)  # every stage trained
    assert tk.freeze_state(model) == {"policy": "none", "bn": "train", "frozen": []}


def test_gradual_without_a_length_opens_one_stage_per_epoch_and_says_so(fmnist):
    class NoLen:
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            return iter(self.loader)

    model = _model()
    train, _ = _data(fmnist, 32, 32)
    result = fine_tune(model, NoLen(train), recipe="gradual", epochs=2, device="cpu")
    assert result.trainer.unfreeze_every == 1 and result.trainer.unfreeze_until is None
    assert any("no len()" in note and "every 1 epoch(s)" in note for note in result.notes)


def test_full_and_l2sp_train_everything(fmnist):
    train, _ = _data(fmnist, 32, 32)
    for recipe in ("full", "l2sp"):
        model = _model()
        before = _params(model)
        result = fine_tune(model, train, recipe=recipe, epochs=2, device="cpu")
        assert _changed(before, model) == set(before)
        assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
        groups = {g["name"]: g["initial_lr"] for g in result.trainer.optimizer.param_groups}
        assert groups["head"] == pytest.approx(RECIPES[recipe].lr)
        assert groups["body/no_decay"] == pytest.approx(RECIPES[recipe].body_lr)
    # L2-SP is a penalty beside the task's loss, so it composes with any loss.
    assert isinstance(result.trainer.penalty, L2SP)
    assert result.trainer.penalty.alpha == L2SP_ALPHA


def test_l2sp_argument_adds_the_penalty_to_any_recipe():
    model = _model()
    data = [(torch.randn(4, 1, SIZE, SIZE), torch.tensor([0, 1, 2, 3]))]
    result = fine_tune(model, data, recipe="bitfit", epochs=1, device="cpu", l2sp=0.5)
    assert result.trainer.penalty.alpha == 0.5


def test_llrd_decays_the_lr_stage_by_stage():
    model = _model()
    data = [(torch.randn(4, 1, SIZE, SIZE), torch.tensor([0, 1, 2, 3]))]
    before = _params(model)
    result = fine_tune(model, data, recipe="llrd", epochs=1, device="cpu", lr=1e-2,
                       body_lr=1e-3, weight_decay=0.0)
    lrs = {g["name"]: g["initial_lr"] for g in result.trainer.optimizer.param_groups}
    assert lrs["head"] == pytest.approx(1e-2)
    assert lrs["stage4:layer4"] == pytest.approx(1e-3)
    assert lrs["stage3:layer3"] == pytest.approx(1e-3 * LAYER_DECAY)
    assert lrs["stage0:stem"] == pytest.approx(1e-3 * LAYER_DECAY**4)
    assert result.trainer.scheduler is not None
    assert _changed(before, model) == set(before)


def test_lr_overrides_and_a_plain_list_of_batches():
    model = _model()
    data = [(torch.randn(4, 1, SIZE, SIZE), torch.tensor([0, 1, 2, 3]))] * 2
    head = copy.deepcopy(model.fc)
    result = fine_tune(model, data, recipe="linear_probe", epochs=1, device="cpu", lr=0.05)
    assert result.trainer.lr == 0.05
    assert not torch.equal(head.weight, model.fc.weight)


def test_linear_probe_from_a_shuffling_dataloader():
    from torch.utils.data import DataLoader, TensorDataset

    model = _model()
    before = _params(model)
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(24, 1, SIZE, SIZE, generator=g),
                                    torch.arange(24) % 10), batch_size=8, shuffle=True)
    result = fine_tune(model, data, data, recipe="linear_probe", epochs=2, device="cpu")
    assert _changed(before, model) == {"fc.weight", "fc.bias"}
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.trainer.evaluate(data)["acc"] == pytest.approx(result.history[-1]["val_acc"])


def test_l2sp_on_a_linear_probe_warns():
    model = _model()
    data = [(torch.randn(4, 1, SIZE, SIZE), torch.tensor([0, 1, 2, 3]))]
    with pytest.warns(UserWarning, match="no effect with recipe 'linear_probe'"):
        fine_tune(model, data, recipe="linear_probe", epochs=1, device="cpu", l2sp=0.1)


# ----------------------------------------------------------- one schedule for every recipe
def _tiny_batches():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 16, 16)
    y = torch.arange(16) % 10
    return [(x[:8], y[:8]), (x[8:], y[8:])]


@pytest.mark.parametrize("recipe", ["linear_probe", "llrd", "full"])
def test_per_epoch_schedule_is_the_trainers_for_every_recipe(recipe):
    # Before one builder served both, linear_probe and llrd sized their own schedule in
    # batches while it stepped per epoch: it hardly decayed (0.01, 0.01, 0.0095, 0.0081).
    data = _tiny_batches()
    result = fine_tune(_model(), data, data, recipe=recipe, epochs=4, device="cpu",
                       scheduler_interval="epoch", progress=False)
    lrs = [r["lr"] for r in result.history]
    expected = [tk.warmup_cosine(s, warmup_steps=1, total_steps=4) for s in range(4)]
    assert lrs == pytest.approx([lrs[0] * m for m in expected])
    assert expected == pytest.approx([1.0, 1.0, 0.75, 0.25])


def test_llrd_gets_its_layer_decay_from_the_trainer():
    data = _tiny_batches()
    result = fine_tune(_model(), data, recipe="llrd", epochs=1, device="cpu", progress=False,
                       lr=1e-3, body_lr=1e-4)
    groups = {g["name"]: g["initial_lr"] for g in result.trainer.optimizer.param_groups}
    assert groups["head"] == pytest.approx(1e-3)
    stage_lrs = [lr for name, lr in groups.items() if name.startswith("stage")
                 and not name.endswith("no_decay")]
    assert max(stage_lrs) == pytest.approx(1e-4)
    assert min(stage_lrs) == pytest.approx(1e-4 * LAYER_DECAY ** (len(stage_lrs) - 1))
    with pytest.raises(ConfigError, match="use recipe='llrd'"):
        fine_tune(_model(), data, recipe="full", epochs=1, device="cpu", layer_decay=0.5)


# ----------------------------------------------------------- cached frozen stages
def test_freeze_stages_trains_the_later_stages_on_their_cached_input(tmp_path):
    data = _tiny_batches()
    model = _model()
    before = _params(model)
    result = fine_tune(model, data, data, recipe="full", epochs=2, freeze_stages=3,
                       device="cpu", progress=False, out_dir=tmp_path)
    changed = _changed(before, model)
    assert changed and not any(n.startswith(("conv1", "bn1", "layer1", "layer2")) for n in changed)
    assert {n.split(".")[0] for n in changed} == {"layer3", "layer4", "fc"}
    assert result.timings["cache_s"] > 0 and result.timings["train_s"] > 0
    assert any("stages 0..2 frozen and their output cached once" in n for n in result.notes)
    # The returned Trainer runs the whole model on images, with the combined history.
    assert result.trainer.model is model and len(result.trainer.history) == 2
    probs = result.trainer.predict(data)
    assert probs.shape == (16, 10)
    assert (tmp_path / "history.json").is_file() and (tmp_path / "history.csv").is_file()
    assert (tmp_path / "finetune" / "last.pt").is_file()


def test_freeze_stages_equals_training_through_the_frozen_stages():
    # Cached or not, the same updates: train both ways from the same start, compare. A
    # TensorLoader: the cache is served in exactly its order per epoch.
    g = torch.Generator().manual_seed(0)
    data = TensorLoader(torch.randint(0, 256, (24, 16, 16), generator=g, dtype=torch.uint8),
                        torch.arange(24) % 10, batch_size=8, shuffle=True, seed=3, **STATS)
    # At recipe full's own LR (1e-2) the two runs' float rounding grows past the tolerance.
    common = dict(recipe="full", epochs=2, device="cpu", progress=False, seed=3,
                  bn="frozen", channels_last=False, lr=1e-3, body_lr=1e-4)
    cached, plain = _model(), _model()
    tk.freeze(plain, "none", bn="frozen")
    fine_tune(cached, data, **common, freeze_stages=2)
    # The uncached run: the same stages frozen by hand, through the Trainer directly.
    tk.freeze(plain, "stages:1", bn="frozen")
    tk.Trainer(plain, epochs=2, lr=1e-3, body_lr=1e-4, device="cpu", progress=False,
               seed=3).fit(data)
    for (name, a), b in zip(cached.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"recipe": "gradual", "freeze_stages": 2}, "does not apply to recipe 'gradual'"),
    ({"recipe": "linear_probe", "freeze_stages": 1}, "does not apply to recipe 'linear_probe'"),
    ({"recipe": "full", "freeze_stages": 5}, "must be below the model's 5 stages"),
    ({"recipe": "full", "freeze_stages": -1}, "freeze_stages must be an integer >= 0"),
    ({"recipe": "lp_ft", "resume": True}, "resume=True needs out_dir"),
])
def test_freeze_stages_and_resume_errors_leave_the_model_unchanged(kwargs, match):
    data = _tiny_batches()
    model = _model()
    before = _params(model)
    with pytest.raises(ConfigError, match=match):
        fine_tune(model, data, epochs=2, device="cpu", **kwargs)
    assert not _changed(before, model)
    assert tk.freeze_state(model)["policy"] == "none"


def test_freeze_stages_refuses_an_augmenting_loader():
    train = TensorLoader(torch.randint(0, 256, (8, 16, 16), dtype=torch.uint8),
                         torch.arange(8) % 10, batch_size=4, augment=tk.data.Augment(hflip=0.5),
                         **STATS)
    with pytest.raises(ConfigError, match="augmentation could not apply"):
        fine_tune(_model(), train, recipe="full", epochs=1, freeze_stages=2, device="cpu")


def test_resume_continues_the_cached_run(tmp_path):
    data = _tiny_batches()
    first = fine_tune(_model(), data, data, recipe="full", epochs=1, freeze_stages=2,
                      device="cpu", progress=False, out_dir=tmp_path)
    again = fine_tune(_model(seed=5), data, data, recipe="full", epochs=2, freeze_stages=2,
                      device="cpu", progress=False, out_dir=tmp_path, resume=True)
    assert [r["epoch"] for r in again.history] == [1, 2]
    assert again.history[0] == first.history[0]


# ----------------------------------------------------------- balanced batches from tensors
def test_balanced_tensors_are_drawn_class_balanced():
    from transferkit.recipes.inputs import build_inputs

    images = torch.zeros(100, 1, SIZE, SIZE, dtype=torch.uint8)
    labels = torch.tensor([0] * 90 + [1] * 10)
    inputs = build_inputs(_model(), (images, labels), None, batch_size=None, image_size=None,
                          augment=None, seed=0, balanced=True)
    drawn = torch.cat([inputs.train.indices(e) for e in range(10)])
    assert float((labels[drawn] == 1).float().mean()) == pytest.approx(0.5, abs=0.06)
    plain = build_inputs(_model(), (images, labels), None, batch_size=None, image_size=None,
                         augment=None, seed=0)
    assert sorted(plain.train.indices(0).tolist()) == list(range(100))  # off by default


def test_balanced_with_a_loader_says_where_to_set_it():
    data = _tiny_batches()
    with pytest.raises(ConfigError, match=r"balanced=True apply when train is \(images, labels"
                                          r"\).*BalancedSampler\(labels\)"):
        fine_tune(_model(), data, epochs=1, device="cpu", balanced=True)
@pytest.mark.parametrize(("recipe", "extra", "phase", "prefix"), [
    ("linear_probe", {}, "probe", {"fc.": "head."}),  # the head on cached features
    ("full", {"freeze_stages": 3}, "finetune", {"": "model."}),  # stages on a cache
], ids=["probe-on-features", "stages-on-a-cache"])
def test_ema_on_the_cached_paths_ends_with_the_best_average(tmp_path, recipe, extra, phase,
                                                            prefix):
    data = _tiny_batches()
    model = _model()
    result = fine_tune(model, data, data, recipe=recipe, epochs=3, device="cpu",
                       progress=False, out_dir=tmp_path, ema=0.9, **extra)
    # 2 steps an epoch: epoch e's last update is the (2e)-th
    assert [r["ema_decay"] for r in result.history] == [
        tk.train.ema_decay(2 * e - 1, decay=0.9) for e in (1, 2, 3)]
    best = tk.load_checkpoint(tmp_path / phase / "best.pt")
    (mine, theirs), = prefix.items()
    averaged = {k.replace(theirs, mine, 1): v for k, v in best["ema"]["model"].items()}
    state = model.state_dict()
    assert averaged.keys() <= state.keys() and {"fc.weight", "fc.bias"} <= averaged.keys()
    for k, v in averaged.items():
        assert torch.equal(state[k], v), k  # the model holds the best epoch's average
    val_loss = result.history[best["epoch"] - 1]["val_loss"]
    assert result.trainer.evaluate(data)["loss"] == pytest.approx(val_loss, rel=1e-4)
    assert result.trainer.ema is None  # the Trainer over the whole model trained nothing
