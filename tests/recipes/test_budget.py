"""Budget-aware defaults (recipes/budget.py) and fine_tune on (images, labels) tensors."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch

import transferkit as tk
from transferkit.data import TensorLoader
from transferkit.errors import ConfigError, DataError
from transferkit.recipes import (
    DEFAULT_RECIPE,
    RECIPES,
    Choice,
    batch_size_choice,
    default_batch_size,
    default_epochs,
    default_image_size,
    default_recipe,
    fine_tune,
)
from transferkit.recipes.budget import (
    BATCH_PIXELS,
    LABEL_SMOOTHING,
    LP_FT_BELOW_PER_CLASS,
    LP_FT_FAST_FROM_PER_CLASS,
    PIXEL_BUDGET,
    default_label_smoothing,
    default_passes,
    default_recipe_lr,
)
from transferkit.recipes.inputs import (
    AUGMENT_MIN_EPOCHS,
    AUGMENT_NONE_FROM,
    build_inputs,
    num_samples,
)


@pytest.mark.parametrize("n, batch", [(1, 16), (100, 16), (300, 16), (500, 32), (1000, 64),
                                      (3000, 256), (55000, 256)])
def test_batch_size_is_about_n_over_16_within_16_and_256(n, batch):
    assert default_batch_size(n) == batch


@pytest.mark.parametrize("size, device, batch", [
    (32, "cpu", 256), (96, "cpu", 256), (128, "cpu", 128), (160, "cpu", 64), (224, "cpu", 64),
    (448, "cpu", 16), (2000, "cpu", 16), (224, "cuda", 256), (224, "mps", 256)])
def test_a_default_cpu_batch_holds_at_most_batch_pixels(size, device, batch):
    # 64 images at 224 px on the CPU (a power of two, at least 16); no cap elsewhere.
    assert BATCH_PIXELS == {"cpu": 64 * 224 * 224}
    assert default_batch_size(55000, size, device) == batch
    assert default_batch_size(300, size, device) == 16  # N/16 is below the cap: unchanged


def test_the_batch_choice_says_when_the_cap_binds():
    free = batch_size_choice(55000, 96)
    assert (free.value, free.why) == (256, "default for 55000 training images (about N/16, "
                                           "16..256)")
    capped = batch_size_choice(55000, 224)
    assert capped.value == 64 and capped.why.endswith(
        "at most 3.2e+06 pixels a batch on the cpu (BATCH_PIXELS): 64 at 224 px")
    assert batch_size_choice(10, 224).value == 10  # never more than the images
    with pytest.raises(ConfigError, match="image_size must be a positive integer, got 0"):
        batch_size_choice(100, 0)


@pytest.mark.parametrize("n, epochs", [(1, 60), (100, 60), (300, 58), (1000, 32),
                                       (10000, 10), (55000, 4), (10**7, 3)])
def test_epochs_shrink_with_the_square_root_of_n_within_3_and_60(n, epochs):
    assert default_epochs(n) == epochs


@pytest.mark.parametrize("native, pretrained, size", [
    ((28, 28), (224, 224), 32), ((8, 8), (224, 224), 32), ((70, 90), (224, 224), 96),
    ((500, 375), (224, 224), 224), ((300, 300), (384, 384), 320), ((100, 100), None, 128)])
def test_image_size_is_the_native_size_rounded_up_to_32_at_most_pretrained(
        native, pretrained, size):
    assert default_image_size(native, pretrained) == size


@pytest.mark.parametrize("native, n, size", [
    ((28, 28), 100, 160),   # 6,000 image passes: 160^2 x 6,000 = 1.5e8 fits 2e8, 192 does not
    ((32, 32), 240, 96),    # 14,400 passes
    ((8, 8), 300, 96),      # 17,400 passes
    ((28, 28), 1000, 64),   # 32,000 passes
    ((28, 28), 10_000, 32),  # 100,000 passes
    ((28, 28), 55_000, 32),  # 220,000 passes: past the budget already, the stored size
    ((500, 375), 2000, 224),  # never below the images' own size (capped by the backbone's)
])
def test_image_size_grows_while_the_run_fits_the_pixel_budget(native, n, size):
    passes = default_passes(n)
    assert passes == n * default_epochs(n)
    assert default_image_size(native, (224, 224), passes=passes) == size
    stored = default_image_size(native, (224, 224))
    if size > stored:  # grown: the largest size within the budget
        assert passes * size**2 <= PIXEL_BUDGET["cpu"] < passes * (size + 32) ** 2


def test_the_budget_is_the_devices():
    assert default_image_size((28, 28), 224, passes=55_000 * 4, device="cuda") == 224
    assert default_image_size((28, 28), 224, passes=55_000 * 4, device="cpu") == 32
    with pytest.raises(ConfigError, match="num_samples must be a positive integer, got 0"):
        default_passes(0)


def test_a_given_length_keeps_the_size_the_data_gets():
    images, labels = _tensors(40)
    sizes = set()
    for length in ({"epochs": 1}, {"epochs": 2}, {"steps": 3}):
        result = fine_tune(_model(), (images, labels), recipe="full", device="cpu", **length)
        sizes.add(result.image_size)
    (chosen,) = [s for s in result.settings if s.name == "image_size"]
    assert sizes == {chosen.value} == {default_image_size((20, 20), 64,
                                                          passes=default_passes(40))}
    assert f"{default_passes(40)} image passes" in chosen.why


def test_bad_budget_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="num_samples must be a positive integer, got 0"):
        default_epochs(0)
    with pytest.raises(ConfigError, match="native"):
        default_image_size((0, 28), 224)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: two stall badly on a busy 2-core machine (docs/benchmarks.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tensors(n=40, size=20, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return images, torch.arange(n) % classes


def _model(classes=4):
    torch.manual_seed(0)
    return tk.create("resnet18", classes, in_chans=1, pretrained=False)


def test_tensors_get_chosen_settings_each_with_a_reason(caplog):
    model = _model()
    with caplog.at_level(logging.INFO, logger="transferkit"):
        result = fine_tune(model, _tensors(), _tensors(12, seed=1), recipe="full", epochs=2,
                           device="cpu")
    chosen = {s.name: s for s in result.settings}
    assert chosen["batch_size"].value == 16 and "40 training images" in chosen["batch_size"].why
    # 40 images x 60 default epochs = 2,400 image passes: the budget allows the backbone's
    # own 64 px
    assert chosen["image_size"].value == 64 and "20x20; 2400 image passes" in chosen[
        "image_size"].why
    assert result.image_size == 64
    assert chosen["augment"].value == "light"
    assert chosen["lr"].value == RECIPES["full"].lr == 1e-2
    assert chosen["body_lr"].value == pytest.approx(1e-3)
    assert "epochs" not in chosen  # given
    for s in result.settings:
        assert f"chose {s}" in caplog.text
    assert result.trainer.lr == 1e-2 and len(result.history) == 2
    assert [r["body_lr"] / r["lr"] for r in result.history if r["lr"]] == [pytest.approx(0.1)]


def test_tensors_at_a_large_size_get_a_batch_capped_by_pixels():
    # 4,096 images would batch 256; given 224 px on the CPU, 64 (BATCH_PIXELS).
    images, labels = torch.zeros(4096, 1, 8, 8, dtype=torch.uint8), torch.arange(4096) % 4
    inputs = build_inputs(_model(), (images, labels), None, batch_size=None, image_size=224,
                          augment="none", seed=0)
    chosen = {c.name: c for c in inputs.choices}
    assert chosen["batch_size"].value == inputs.train.batch_size == 64
    assert "64 at 224 px" in chosen["batch_size"].why and "image_size" not in chosen
    given = build_inputs(_model(), (images, labels), None, batch_size=256, image_size=224,
                         augment="none", seed=0)
    assert given.train.batch_size == 256 and given.choices == []  # a given batch is kept
    # Chosen size (28 px images, 4,096 x 16 default epochs: 32 px): the batch is not capped.
    small = build_inputs(_model(), (torch.zeros(4096, 1, 28, 28, dtype=torch.uint8), labels),
                         None, batch_size=None, image_size=None, augment="none", seed=0)
    assert [(c.name, c.value) for c in small.choices][:2] == [("batch_size", 256),
                                                              ("image_size", 32)]


@pytest.mark.parametrize(("n", "augment"), [(11_000, "light"), (12_000, "none")])
def test_a_short_default_run_is_not_augmented(n, augment):
    # Up to ~11,000 images the default run has 10+ epochs and shifts; past it, none.
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    inputs = build_inputs(_model(), (images, torch.arange(n) % 4), None, batch_size=None,
                          image_size=None, augment=None, seed=0)
    (choice,) = [c for c in inputs.choices if c.name == "augment"]
    assert choice.value == augment
    assert (default_epochs(n) < AUGMENT_MIN_EPOCHS) == (augment == "none")
    assert (n >= AUGMENT_NONE_FROM) == (augment == "none")
    if augment == "none":
        assert choice.why == (f"{n} training images: a default run of {default_epochs(n)} "
                              f"epochs (under {AUGMENT_MIN_EPOCHS}) underfits, and "
                              "augmentation measured worse there")
    # Given, it is kept whatever the size.
    inputs = build_inputs(_model(), (images, torch.arange(n) % 4), None, batch_size=None,
                          image_size=None, augment="standard", seed=0)
    assert not [c for c in inputs.choices if c.name == "augment"]


def test_augment_none_from_is_where_the_default_run_gets_short():
    # The boundary the help texts quote ("about 11,000") is the rule's own.
    assert default_epochs(AUGMENT_NONE_FROM) < AUGMENT_MIN_EPOCHS
    assert default_epochs(AUGMENT_NONE_FROM - 1) >= AUGMENT_MIN_EPOCHS
    assert AUGMENT_NONE_FROM == 11_081


def test_the_shift_is_sized_from_the_stored_images_not_the_training_size():
    # 8 px images trained at the budget's larger size: the shift (applied at 8 px, before
    # resizing) is 1 px, an eighth of the image, not an eighth of the training size.
    images, labels = _tensors(40, size=8)
    inputs = build_inputs(_model(), (images, labels), None, batch_size=None, image_size=None,
                          augment=None, seed=0)
    assert inputs.image_size == 64 and inputs.train.augment.crop_padding == 1
    inputs = build_inputs(_model(), (images, labels), None, batch_size=None, image_size=96,
                          augment="standard", seed=0)
    assert inputs.train.augment.crop_padding == 1 and inputs.train.augment.hflip == 0.5


def test_the_length_defaults_from_the_data_or_from_steps():
    images, labels = _tensors(32)
    result = fine_tune(_model(), (images, labels), recipe="linear_probe", device="cpu",
                       batch_size=8)
    (epochs,) = [s for s in result.settings if s.name == "epochs"]
    assert epochs.value == default_epochs(32) == 60 and len(result.history) == 60
    assert "60 epochs" not in epochs.why and "240 optimizer steps of 4 per epoch" in epochs.why
    result = fine_tune(_model(), (images, labels), recipe="full", steps=6, device="cpu",
                       batch_size=8)
    assert len(result.history) == 2  # 4 steps an epoch: 6 steps -> 2 epochs


def test_lr_alone_moves_the_body_at_the_recipes_ratio():
    result = fine_tune(_model(), _tensors(), recipe="full", epochs=1, lr=0.05, device="cpu")
    assert result.trainer.lr == 0.05 and result.trainer.body_lr == pytest.approx(0.005)
    assert [s.name for s in result.settings if s.name.endswith("lr")] == ["body_lr"]


def test_the_default_recipe_follows_the_images_a_class():
    # lp_ft below LP_FT_BELOW_PER_CLASS (20) images a class, full from there, lp_ft again
    # from LP_FT_FAST_FROM_PER_CLASS (100); both lp_ft tiers at 1e-2/1e-3. A loader that
    # cannot say its size gets DEFAULT_RECIPE.
    assert (LP_FT_BELOW_PER_CLASS, LP_FT_FAST_FROM_PER_CLASS) == (20, 100)
    assert [default_recipe(n, 10).value for n in (10, 199, 200, 999, 1000, 5000)] == [
        "lp_ft", "lp_ft", "full", "full", "lp_ft", "lp_ft"]
    assert [default_recipe_lr(n, 10) for n in (None, 200, 999)] == [None] * 3
    assert [default_recipe_lr(n, 10).value for n in (10, 199, 1000, 5000)] == [1e-2] * 4
    assert default_recipe_lr(199, 10).why == ("19.9 a class (under 20): lp_ft's fine-tuning "
                                              "at full's head LR")
    assert default_recipe(199, 10).why == ("199 training images, 19.9 a class (under 20): a "
                                           "probe, then everything at full's LRs")
    assert default_recipe(200, 10).why == ("200 training images, 20 a class (20 to 100): "
                                           "everything trains")
    assert default_recipe(1000, 10).why == (
        "1000 training images, 100 a class (at least 100): a probe, then everything at "
        "full's LRs, in about half its time")
    assert default_recipe(None, 10) == Choice(
        "recipe", "full", "the default (the number of training images is not known)")
    with pytest.raises(ConfigError, match="num_classes"):
        default_recipe(10, 0)
    with pytest.raises(ConfigError, match="num_classes"):
        default_recipe_lr(10, 0)


def test_the_default_full_smooths_its_labels():
    # full's tier (20 to 100 a class) only: the lp_ft tiers and an unknown size get none.
    assert LABEL_SMOOTHING == 0.1
    assert [default_label_smoothing(n, 10) for n in (None, 10, 199, 1000, 5000)] == [None] * 5
    assert [default_label_smoothing(n, 10).value for n in (200, 999)] == [0.1, 0.1]
    assert str(default_label_smoothing(300, 10)) == (
        "label_smoothing 0.1: 30 a class (20 to 100): full's default, measured ahead of none "
        "on every small data set of that size")
    with pytest.raises(ConfigError, match="num_classes"):
        default_label_smoothing(300, 0)


@pytest.mark.parametrize(("kwargs", "smoothing"), [
    ({}, 0.1),  # chosen: full's tier, and a line says so
    ({"label_smoothing": 0.0}, 0.0),  # given: kept, even 0
    ({"label_smoothing": 0.2}, 0.2),
    ({"recipe": "full"}, 0.0),  # a recipe by name keeps the Trainer's default
])
def test_fine_tune_smooths_labels_only_where_it_chose_full(kwargs, smoothing, caplog):
    # 40 images of 2 classes: 20 a class, full's tier.
    model = _model(classes=2)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        result = fine_tune(model, _tensors(40, classes=2), _tensors(8, classes=2, seed=1),
                           epochs=1, device="cpu", **kwargs)
    assert result.trainer.label_smoothing == smoothing
    assert result.trainer.loss_fn.label_smoothing == smoothing  # what the loss applies
    chosen = [s for s in result.settings if s.name == "label_smoothing"]
    assert chosen == ([default_label_smoothing(40, 2)] if not kwargs else [])
    assert ("chose label_smoothing 0.1: 20 a class" in caplog.text) == (not kwargs)


def test_fine_tune_keeps_a_given_loss_without_smoothing():
    loss = torch.nn.CrossEntropyLoss()
    result = fine_tune(_model(classes=2), _tensors(40, classes=2), epochs=1, device="cpu",
                       loss_fn=loss)
    assert result.trainer.loss_fn is loss and result.trainer.label_smoothing == 0.0
    assert "label_smoothing" not in {s.name for s in result.settings}


@pytest.mark.parametrize(("n", "recipe", "phases", "lrs"), [
    (12, "lp_ft", {"probe", "finetune"}, (1e-2, 1e-3)),
    (40, "full", {"finetune"}, (1e-2, 1e-3)),
    (200, "lp_ft", {"probe", "finetune"}, (1e-2, 1e-3)),
])
def test_fine_tune_without_a_recipe_takes_the_data_s(n, recipe, phases, lrs, caplog):
    # 2 classes: 12 images are 6 a class, 40 are 20 a class (full), 200 are 100 a class;
    # lp_ft at full's LRs on both sides. The fine-tuning phase's first epoch logs its LRs.
    model = _model(classes=2)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        result = fine_tune(model, _tensors(n, classes=2), _tensors(8, classes=2, seed=1),
                           epochs=6, device="cpu", warmup=0.0)
    assert result.recipe == recipe and {r["phase"] for r in result.history} == phases
    assert result.settings[0] == default_recipe(n, 2)
    assert f"chose recipe {recipe}: {n} training images" in caplog.text
    chosen = {s.name: s for s in result.settings}
    assert (chosen["lr"].value, chosen["body_lr"].value) == pytest.approx(lrs)
    # what trained: the first epoch logs the head and body LR after its cosine decay
    first = next(r for r in result.history if r["phase"] == "finetune")
    assert lrs[0] / 2 < first["lr"] <= lrs[0]
    assert first["lr"] / first["body_lr"] == pytest.approx(10)
    lr_line = chosen["lr"]
    assert (lr_line == default_recipe_lr(n, 2)) == (recipe == "lp_ft")  # the tier's line
    assert inspect.signature(fine_tune).parameters["recipe"].default is None
    assert DEFAULT_RECIPE == "full"


def test_channels_last_is_chosen_for_a_conv_model_on_the_cpu():
    result = fine_tune(_model(), _tensors(), recipe="full", epochs=1, device="cpu")
    assert any(s.name == "channels_last" and s.value is True for s in result.settings)
    result = fine_tune(_model(), _tensors(), recipe="full", epochs=1, device="cpu",
                       channels_last=False)
    assert not any(s.name == "channels_last" for s in result.settings)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": 2, "steps": 5}, ConfigError, "pass epochs= or steps=, not both"),
    ({"steps": 0}, ConfigError, "steps must be a positive integer, got 0"),
    ({"augment": "flips"}, ConfigError, "augment='flips' is not valid; use one of 'none'"),
    ({"batch_size": 0}, ConfigError, "batch_size must be a positive integer, got 0"),
])
def test_bad_tensor_settings_fail_before_training(kwargs, error, match):
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(error, match=match):
        fine_tune(model, _tensors(), device="cpu", **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_loader_settings_and_mismatched_pairs_are_refused():
    images, labels = _tensors()
    loader = TensorLoader(images, labels, batch_size=8)
    with pytest.raises(ConfigError, match=r"batch_size=8, augment='none' apply when train is"):
        fine_tune(_model(), loader, device="cpu", epochs=1, batch_size=8, augment="none")
    with pytest.raises(ConfigError, match="val is \\(images, labels\\) but train is a loader"):
        fine_tune(_model(), loader, (images, labels), device="cpu", epochs=1)
    with pytest.raises(ConfigError, match="train is \\(images, labels\\) but val is not"):
        fine_tune(_model(), (images, labels), loader, device="cpu", epochs=1)
    with pytest.raises(DataError, match=r"needs images \[N, C, H, W\].*got \(40, 1, 20, 20\) "
                                        r"and \(39,\)"):
        fine_tune(_model(), (images, labels[:39]), device="cpu", epochs=1)


def test_grey_images_without_a_channel_axis_are_accepted():
    images, labels = _tensors()
    result = fine_tune(_model(), (images[:, 0], labels), recipe="full", epochs=1,
                       device="cpu", augment="none")
    assert len(result.history) == 1


def test_num_samples_of_loaders_and_batches():
    images, labels = _tensors(40)
    assert num_samples(TensorLoader(images, labels, batch_size=8)) == 40
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                         batch_size=8)
    assert num_samples(loader) == 40
    assert num_samples([(images[:8], labels[:8])] * 3) == 24
    assert num_samples([]) is None
    assert num_samples(iter([])) is None


def test_the_history_has_a_body_lr_only_where_the_body_trains():
    result = fine_tune(_model(), _tensors(), _tensors(12, seed=1), recipe="lp_ft", epochs=4,
                       device="cpu")
    probe = [r for r in result.history if r["phase"] == "probe"]
    tuned = [r for r in result.history if r["phase"] == "finetune"]
    assert probe and tuned
    assert all("body_lr" not in r for r in probe)  # the probe's body is frozen
    assert all(r["body_lr"] == pytest.approx(r["lr"] * 0.1) for r in tuned)


def test_resume_names_the_recipe_it_chose_when_that_cannot_resume(tmp_path):
    # 12 images of 2 classes: lp_ft is chosen, and a two-phase run cannot resume.
    with pytest.raises(ConfigError, match=r"not 'lp_ft' \(chose recipe lp_ft: 12 training "
                                          r"images, 6 a class \(under 20\)"):
        fine_tune(_model(classes=2), _tensors(12, classes=2), epochs=2, device="cpu",
                  resume=True, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
