"""Tests for transferkit.report and transferkit.plots (Markdown report, confusion matrix, PNGs)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

import transferkit.report.plots as plots
from transferkit.data.fashion import FASHION_MNIST_CLASSES
from transferkit.errors import ConfigError, DataError
from transferkit.report import (
    confusion_matrix,
    plot_confusion,
    plot_history,
    plot_lr_find,
    plot_misclassified,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORY = [
    {"epoch": 1, "lr": 1e-3, "train_loss": 1.25, "train_acc": 0.5, "val_loss": 1.5,
     "val_acc": 0.4375, "time": 2.04},
    {"epoch": 2, "lr": 5e-4, "train_loss": 0.75, "train_acc": 0.625, "val_loss": 0.875,
     "val_acc": 0.5625, "time": 1.96},
]


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        return image.size


# ----------------------------------------------------------------- confusion_matrix
def test_confusion_matrix_hand_example() -> None:
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(preds, targets, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]  # rows = true class
    assert int(cm.sum()) == len(targets)


def test_confusion_matrix_takes_scores_and_unused_classes() -> None:
    targets = torch.tensor([0, 1, 1])
    scores = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.2, 0.8, 0.0, 0.0], [0.6, 0.3, 0.1, 0.0]])
    cm = confusion_matrix(scores, targets, 4)
    assert cm.shape == (4, 4)
    assert cm[0, 0] == 1 and cm[1, 1] == 1 and cm[1, 0] == 1
    assert int(cm.sum()) == 3 and int(cm[2:].sum()) == 0


def test_confusion_matrix_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 7, (500,), generator=g)
    preds = torch.randint(0, 7, (500,), generator=g)
    expected = torch.zeros(7, 7, dtype=torch.int64)
    for t, p in zip(targets.tolist(), preds.tolist()):
        expected[t, p] += 1
    assert torch.equal(confusion_matrix(preds, targets, 7), expected)


@pytest.mark.parametrize(
    ("preds", "targets", "num_classes", "error", "match"),
    [
        ([0, 1], [0, 1, 1], 2, DataError, "differ in length: 2 vs 3"),
        ([0, 1], [0, 1], 0, ConfigError, "num_classes must be a positive integer, got 0"),
        ([0, 1], [0, 1], 2.0, ConfigError, "got 2.0"),
        ([0, 5], [0, 1], 3, DataError, "preds holds label 5, outside \\[0, 3\\)"),
        ([0, 1], [-1, 1], 3, DataError, "targets holds label -1"),
        ([0.0, 1.0], [0, 1], 2, DataError, "integer labels"),
        ([[0.1, 0.9]], [1], 3, DataError, "scores for 2 classes but num_classes=3"),
    ],
)
def test_confusion_matrix_errors(preds, targets, num_classes, error, match) -> None:
    with pytest.raises(error, match=match):
        confusion_matrix(torch.tensor(preds), torch.tensor(targets), num_classes)


# ----------------------------------------------------------------- write_report
def _report(tmp_path: Path, **overrides) -> str:
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    kwargs = dict(
        title="FashionMNIST fine-tuning",
        facts={"backbone": "efficientnet_lite0", "weights": "ImageNet (pip package)",
               "recipe": "linear-probe", "lr": 0.003, "batch_size": 64,
               "wall time": "12.3 s", "topk": (1, 5)},
        history=HISTORY,
        test={"loss": 0.4321, "acc": 0.8765, "count": 1000},
        notes=["ResNet18 ImageNet weights not available offline; switched to "
               "efficientnet_lite0"],
        confusion=cm,
        class_names=["T-shirt/top", "Trouser", "Bag|Case"],
        images={"Training curves": tmp_path / "curves.png",
                "Confusion matrix": str(tmp_path / "plots" / "confusion.png")},
    )
    kwargs.update(overrides)
    path = write_report(tmp_path / "report.md", **kwargs)
    assert path == tmp_path / "report.md"
    return path.read_text()


def test_report_contents(tmp_path: Path) -> None:
    text = _report(tmp_path)
    lines = text.splitlines()
    assert lines[0] == "# FashionMNIST fine-tuning"
    for fact in ("| **backbone** | efficientnet_lite0 |", "| **lr** | 0.003 |",
                 "| **batch_size** | 64 |", "| **wall time** | 12.3 s |", "| **topk** | 1, 5 |"):
        assert fact in lines
    assert "- ResNet18 ImageNet weights not available offline; switched to " \
           "efficientnet_lite0" in lines
    header = "| epoch | train_loss | train_acc | val_loss | val_acc | lr | time |"
    assert header in lines
    start = lines.index(header)
    assert lines[start + 2] == "| 1 | 1.2500 | 0.5000 | 1.5000 | 0.4375 | 0.001 | 2.0 |"
    assert lines[start + 3] == "| 2 | 0.7500 | 0.6250 | 0.8750 | 0.5625 | 0.0005 | 2.0 |"
    assert not lines[start + 4].startswith("|")  # one row per epoch, no more
    assert "Test accuracy: **0.8765**" in lines
    assert "| count | 1000 |" in lines
    # confusion matrix with class names (a '|' in a name is escaped) and recall
    assert "| true \\\\ predicted | T-shirt/top | Trouser | Bag\\|Case | recall |" in lines
    assert "| **Bag\\|Case** | 0 | 1 | 1 | 0.5000 |" in lines
    assert "![Training curves](curves.png)" in lines
    assert "![Confusion matrix](plots/confusion.png)" in lines  # made relative
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_report_history_columns_union_in_order(tmp_path: Path) -> None:
    history = [{"epoch": 1, "time": 1.0, "train_loss": 2.0},
               {"epoch": 2, "time": 1.0, "train_loss": 1.0, "train_top5": 0.9, "val_acc": 0.5,
                "grad_norm": 3.25}]
    text = _report(tmp_path, history=history, test=None, confusion=None, class_names=None,
                   images=None)
    lines = text.splitlines()
    assert "| epoch | train_loss | train_top5 | val_acc | grad_norm | time |" in lines
    assert "| 1 | 2.0000 |  |  |  | 1.0 |" in lines
    assert "## Test" not in text and "## Confusion" not in text and "## Plots" not in text


def test_report_links_relative_plot_paths_from_its_own_folder(tmp_path, monkeypatch) -> None:
    # A relative path is relative to the current folder, where the plot was written; the
    # link must work from the report's folder (runs/a/report.md -> curves.png).
    monkeypatch.chdir(tmp_path)
    curves = plot_history(HISTORY, Path("runs") / "a" / "curves.png")
    report = write_report(Path("runs/a/report.md"), title="t", facts={}, history=HISTORY,
                          images={"Training curves": curves,
                                  "Elsewhere": "shared/cm.png"})
    lines = report.read_text().splitlines()
    assert "![Training curves](curves.png)" in lines
    assert "![Elsewhere](../../shared/cm.png)" in lines
    assert (report.parent / "curves.png").is_file()  # the link points at the plot


def test_report_notes_skipped_plots(tmp_path: Path) -> None:
    text = _report(tmp_path, images={"Training curves": None})
    assert "- Training curves: not drawn (plots skipped: matplotlib is not installed " \
           "(pip install transferkit[plots]))." in text.splitlines()


def test_report_default_class_names_and_empty_history(tmp_path: Path) -> None:
    cm = torch.tensor([[2, 0], [1, 1]])
    text = _report(tmp_path, history=[], confusion=cm, class_names=None)
    assert "No epoch was run." in text
    assert "| **0** | 2 | 0 | 1.0000 |" in text.splitlines()


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"class_names": ["a", "b"]}, ConfigError, "has 2 names but there are 3 classes"),
        ({"confusion": torch.zeros(2, 3)}, DataError, "square"),
        ({"confusion": torch.tensor([[1, -1], [0, 1]]), "class_names": ["a", "b"]},
         DataError, "negative"),
        ({"history": {"epoch": 1}}, DataError, "list of dicts"),
        ({"history": [1, 2]}, DataError, "history\\[0\\] is a int"),
        ({"title": ""}, ConfigError, "title"),
        ({"notes": "one note"}, ConfigError, "notes=\\[note\\]"),
        ({"facts": ["backbone"]}, ConfigError, "facts must be a dict"),
        ({"test": 0.9}, ConfigError, "test must be a dict"),
        ({"images": {"Curves": 3}}, ConfigError, "images\\['Curves'\\] must be a path or None"),
    ],
)
def test_report_errors_write_nothing(tmp_path: Path, overrides, error, match) -> None:
    target = tmp_path / "report.md"
    target.write_text("previous report\n")
    with pytest.raises(error, match=match):
        _report(tmp_path, **overrides)
    assert target.read_text() == "previous report\n"  # the user's file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


# ----------------------------------------------------------------- plots
def test_plot_history_png(tmp_path: Path) -> None:
    path = plot_history(HISTORY, tmp_path / "out" / "curves.png")
    assert path == tmp_path / "out" / "curves.png"
    assert _png_size(path) == plots.HISTORY_SIZE


def test_plot_history_train_only(tmp_path: Path) -> None:
    history = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]
    assert _png_size(plot_history(history, tmp_path / "c.png")) == plots.HISTORY_SIZE


def test_plot_confusion_png(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    cm = confusion_matrix(torch.randint(0, 10, (300,), generator=g),
                          torch.randint(0, 10, (300,), generator=g), 10)
    path = plot_confusion(cm, FASHION_MNIST_CLASSES, tmp_path / "cm.png")
    assert _png_size(path) == (550 + 245, 550 + 160)  # 55 px per class + fixed margins


def test_plot_confusion_empty_rows(tmp_path: Path) -> None:
    cm = torch.tensor([[3, 1], [0, 0]])  # class 1 never occurs: no division by zero
    assert _png_size(plot_confusion(cm, ["a", "b"], tmp_path / "cm.png")) == (485, 400)


@pytest.mark.parametrize("layout", ["nhw_uint8", "nchw_gray_float", "nchw_rgb_normalised"])
def test_plot_misclassified_png(tmp_path: Path, layout: str) -> None:
    g = torch.Generator().manual_seed(0)
    images = {
        "nhw_uint8": torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8, generator=g),
        "nchw_gray_float": torch.rand(30, 1, 28, 28, generator=g),
        "nchw_rgb_normalised": torch.randn(30, 3, 16, 16, generator=g),
    }[layout]
    targets = torch.arange(30) % 10
    preds = targets.clone()
    preds[:7] = (preds[:7] + 1) % 10  # 7 mistakes: a 3 x 3 grid
    probs = torch.softmax(torch.randn(30, 10, generator=g), dim=1)
    path = plot_misclassified(images, targets, preds, FASHION_MNIST_CLASSES,
                              tmp_path / "wrong.png", probs=probs)
    assert _png_size(path) == (3 * 160, 3 * 180)


def test_plot_misclassified_max_images_and_none_wrong(tmp_path: Path) -> None:
    images = torch.zeros(40, 8, 8, dtype=torch.uint8)
    targets = torch.zeros(40, dtype=torch.long)
    preds = torch.ones(40, dtype=torch.long)
    path = plot_misclassified(images, targets, preds, ["a", "b"], tmp_path / "w.png",
                              max_images=4)
    assert _png_size(path) == (2 * 160, 2 * 180)
    path = plot_misclassified(images, targets, targets, ["a", "b"], tmp_path / "none.png")
    assert _png_size(path) == (300, 200)  # says "no misclassified images"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"targets": torch.zeros(3, dtype=torch.long)}, DataError, "must hold 4 integer labels"),
        ({"preds": torch.tensor([0, 1, 2, 12])}, DataError, "preds holds label 12, outside"),
        ({"images": torch.zeros(4, 8)}, DataError, "\\[N, H, W\\] or \\[N, C, H, W\\]"),
        ({"max_images": 0}, ConfigError, "max_images must be a positive integer, got 0"),
        ({"probs": torch.zeros(3, 10)}, DataError, "probs must be"),
        ({"class_names": "abc"}, ConfigError, "class_names must be a list"),
    ],
)
def test_plot_misclassified_errors(tmp_path: Path, kwargs, error, match) -> None:
    args = {"images": torch.zeros(4, 8, 8), "targets": torch.tensor([0, 1, 2, 3]),
            "preds": torch.tensor([1, 1, 2, 3]), "class_names": [str(i) for i in range(10)],
            "path": tmp_path / "w.png"}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        plot_misclassified(**args)
    assert not (tmp_path / "w.png").exists()


def test_plot_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="history is empty"):
        plot_history([], tmp_path / "c.png")
    with pytest.raises(DataError, match="no train_/val_ loss or accuracy"):
        plot_history([{"epoch": 1, "lr": 0.1}], tmp_path / "c.png")
    with pytest.raises(ConfigError, match="has 2 names but there are 3 classes"):
        plot_confusion(torch.eye(3, dtype=torch.long), ["a", "b"], tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []


LRS = [10.0 ** (i / 4 - 6) for i in range(25)]
SMOOTHED = [2.0 - 0.05 * i for i in range(20)] + [1.2, 1.5, 3.0, 9.0, float("inf")]


def test_plot_lr_find(tmp_path: Path) -> None:
    path = plot_lr_find(LRS, SMOOTHED, tmp_path / "sweep" / "lr.png", losses=SMOOTHED,
                        suggestion=1e-4, rule="valley")
    assert path == tmp_path / "sweep" / "lr.png" and _png_size(path) == plots.LR_FIND_SIZE
    assert plot_lr_find(LRS[:2], SMOOTHED[:2], tmp_path / "two.png") is not None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lrs": [1e-3]}, "at least 2 points and one loss per LR; got 1 LRs, 25 smoothed"),
    ({"losses": [1.0]}, "got 25 LRs, 25 smoothed losses, 1 losses"),
    ({"lrs": [0.0] + LRS[1:]}, "LRs must be positive and finite"),
    ({"suggestion": -1.0}, r"suggestion=-1.0"),
    ({"smoothed": ["a"] * 25}, "smoothed must be a sequence of numbers"),
])
def test_plot_lr_find_errors(tmp_path: Path, kwargs, match) -> None:
    args = {"lrs": LRS, "smoothed": SMOOTHED, "path": tmp_path / "lr.png", **kwargs}
    with pytest.raises(DataError, match=match):
        plot_lr_find(**args)
    assert list(tmp_path.iterdir()) == []


def test_plots_leave_pyplot_alone(tmp_path: Path) -> None:
    before = "matplotlib.pyplot" in sys.modules
    plot_history(HISTORY, tmp_path / "c.png")
    assert ("matplotlib.pyplot" in sys.modules) == before


# ----------------------------------------------------------------- without matplotlib
def test_missing_matplotlib_logs_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.setattr(plots, "_warned", False)
    cm = torch.eye(2, dtype=torch.long)
    with caplog.at_level(logging.WARNING, logger="transferkit.report.plots"):
        assert plot_history(HISTORY, tmp_path / "c.png") is None
        assert plot_confusion(cm, ["a", "b"], tmp_path / "cm.png") is None
        assert plot_misclassified(torch.zeros(2, 4, 4), torch.tensor([0, 1]),
                                  torch.tensor([1, 1]), ["a", "b"], tmp_path / "w.png") is None
        assert plot_lr_find(LRS, SMOOTHED, tmp_path / "lr.png") is None
    assert [r.getMessage() for r in caplog.records] == [plots.PLOTS_SKIPPED]
    assert plots.PLOTS_SKIPPED == (
        "plots skipped: matplotlib is not installed (pip install transferkit[plots])"
    )
    assert not plots.matplotlib_available()
    assert list(tmp_path.iterdir()) == []
    # bad input still fails loudly without matplotlib
    with pytest.raises(DataError, match="history is empty"):
        plot_history([], tmp_path / "c.png")


# ----------------------------------------------------------------- multi-label runs
def test_multilabel_run_report_has_metrics_per_class_rows_and_curves(tmp_path: Path) -> None:
    from transferkit.report import write_multilabel_run_report

    history = [{"epoch": 1, "lr": 1e-3, "val_f1": 0.5, "train_f1": 0.25, "val_map": 0.625,
                "train_loss": 0.75, "val_loss": 0.5, "time": 1.0}]
    path = write_multilabel_run_report(
        tmp_path, title="multi", facts={"backbone": "x"}, history=history,
        metrics={"test_map": 0.75, "test_f1": 0.5, "test_count": 4},
        per_class={"ap": [1.0, float("nan")], "f1": [0.5, 0.0], "support": [3, 0]},
        class_names=["cat", "dog"], notes=["a note"])
    text = path.read_text()
    assert "| epoch | train_loss | train_f1 | val_loss | val_map | val_f1 | lr | time |" in text
    assert "| test_map | 0.7500 |" in text and "| test_count | 4 |" in text
    per_class = text.index("## Per class")
    assert text.index("## Test") < per_class < text.index("## Plots")
    assert "| cat | 1.0000 | 0.5000 | 3 |" in text and "| dog | nan | 0.0000 | 0 |" in text
    assert "Confusion" not in text and "- a note" in text
    if plots.matplotlib_available():
        assert _png_size(tmp_path / "curves.png") == plots.HISTORY_SIZE
