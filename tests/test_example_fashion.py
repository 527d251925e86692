"""The reference example runs end to end in --subset mode, and fails cleanly on bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import transferkit.backbones.weights as W
import transferkit.recipes.budget as budget
from transferkit.recipes import DEFAULT_AUGMENT
from transferkit.recipes.inputs import AUGMENT_MIN_EPOCHS
from transferkit.train import Trainer, select_device

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fashion_resnet18.py"
HAS_DATA = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="dataset-fashion-mnist not installed")
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection fails


def _run(*args: str, cache: Path | None = None, offline: bool = True
         ) -> subprocess.CompletedProcess:
    # Empty caches: whatever other tests seeded must not be found.
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1")
    if not offline:  # a download is tried, and fails at once: the proxy's port is closed
        del env["TRANSFERKIT_OFFLINE"]
        env.pop("HF_HUB_OFFLINE", None)
        for var in ("no_proxy", "NO_PROXY"):
            env.pop(var, None)
        env.update({var: DEAD_PROXY for var in ("http_proxy", "https_proxy", "HTTP_PROXY",
                                                  "HTTPS_PROXY")})
    if cache is not None:
        env.update(TORCH_HOME=str(cache / "torch"), HF_HUB_CACHE=str(cache / "hf"),
                   TRANSFERKIT_CACHE=str(cache / "tk"))
    full_env = env
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True,
                          text=True, timeout=600, env=full_env, cwd=ROOT)


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fashion_resnet18", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# 32 px (the images' own size rounded up) keeps the runs short: with one epoch of a few
# hundred images fine_tune would choose the backbone's 224 px.
SUBSET_RUN = ("--subset", "600", "--threads", "1", "--image-size", "32")


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One --epochs 1 run, shared by the tests that read it (copy it before changing it)."""
    if not HAS_DATA:
        pytest.skip("dataset-fashion-mnist not installed")
    root = tmp_path_factory.mktemp("subset")
    out = root / "run"
    # Not offline: ResNet18's download is tried (and fails), as on a user's machine.
    proc = _run(*SUBSET_RUN, "--epochs", "1", "--out", str(out), cache=root / "cache",
                offline=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, root / "cache", proc


@needs_data
def test_subset_run_falls_back_and_writes_everything(subset_run) -> None:
    out, _, proc = subset_run
    # ResNet18's weights are not reachable: one clear line, and the fallback is recorded.
    assert ("resnet18 ImageNet weights are not available: they are in no local cache and "
            "the download failed (--backbone resnet18 shows why); using efficientnet_lite0"
            ) in proc.stderr
    # stdout holds the results only: torch hub's "Downloading: ..." line went to the log.
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    assert lines[0].startswith("test accuracy ") and lines[1].startswith("RESULT ")
    assert 'Downloading: "https://download.pytorch.org/models/resnet18' in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["backbone"] == "efficientnet_lite0" and result["weights"] == "ImageNet"
    assert 0.0 <= result["test_acc"] <= 1.0
    for name in ("model.safetensors", "history.json", "history.csv", "report.md",
                 "finetune/last.pt",
                 "curves.png", "confusion.png", "misclassified.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "using efficientnet_lite0" in report and "Ankle boot" in report
    assert f"{result['test_acc']:.4f}" in report
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and "val_acc" in history[0]
    import transferkit as tk

    model, meta = tk.load_model(out / "model.safetensors")
    assert meta.backbone == "efficientnet_lite0" and meta.class_names[9] == "Ankle boot"


@needs_data
def test_pinned_backbone_without_weights_stops_with_the_fixes(tmp_path: Path) -> None:
    proc = _run("--backbone", "resnet18", "--subset", "100", "--out", str(tmp_path / "o"),
                cache=tmp_path / "cache")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "No pretrained weights found for 'resnet18'" in proc.stderr
    assert "--weights none" in proc.stderr


@pytest.mark.parametrize("offline", [True, False])
def test_fallback_line_says_what_happened(env, monkeypatch, offline: bool) -> None:
    example = _example()
    if offline:
        monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
        why = "offline mode is set (TRANSFERKIT_OFFLINE/HF_HUB_OFFLINE)"
    else:
        def no_network(source, *, progress):
            raise OSError("network unreachable")

        monkeypatch.setattr(W, "_download", no_network)
        why = "the download failed (--backbone resnet18 shows why)"
    notes: list[str] = []
    _, backbone, weights = example.build_model(example.parse_args([]), notes)
    assert (backbone, weights) == ("efficientnet_lite0", "ImageNet")
    assert notes == [
        f"resnet18 ImageNet weights are not available: they are in no local cache and {why}; "
        "using efficientnet_lite0 with its ImageNet weights from the pip package instead."
    ]


@needs_data
def test_report_names_the_plots_it_could_not_draw(env, monkeypatch, tmp_path: Path) -> None:
    # Without matplotlib the plot functions return None; the report must say so, by name.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert _example().main(["--subset", "200", "--epochs", "1", "--image-size", "32",
                            "--out", "run"]) == 0
    lines = (tmp_path / "run" / "report.md").read_text().splitlines()
    skipped = "plots skipped: matplotlib is not installed (pip install transferkit[plots])"
    for caption in ("training curves", "confusion matrix", "misclassified test images"):
        assert f"- {caption}: not drawn ({skipped})." in lines
    assert not list((tmp_path / "run").glob("*.png"))


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = _run("--recipe", "ful", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "did you mean 'full'" in proc.stderr.lower()
    proc = _run("--epochs", "0", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--epochs must be positive" in proc.stderr
    assert not (tmp_path / "o").exists()
    proc = _run("--eval-every", "0", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--eval-every must be positive, got 0" in proc.stderr


def test_unwritable_out_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _run("--subset", "100", "--out", str(blocker / "sub"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "is not writable" in proc.stderr


@needs_data
def test_from_scratch_resnet18_trains_on_cached_stage_inputs(tmp_path: Path) -> None:
    # ResNet18's stage-3 input at 32 px is 128x4x4: cached inputs of any shape must work.
    out = tmp_path / "scratch"
    proc = _run("--backbone", "resnet18", "--weights", "none", "--subset", "300",
                "--epochs", "1", "--freeze-stages", "3", "--image-size", "32",
                "--out", str(out), "--threads", "1", cache=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cached the input of stage 3:layer3 of 240 train images (128x4x4)" in proc.stderr
    # A cache is computed once from the images as they are: fine_tune chose no augmentation.
    assert "chose augment none: freeze_stages caches" in proc.stderr
    assert "| **frozen and cached** | stem + 2 stages (input of stage 3: 3:layer3) |" in (
        out / "report.md").read_text()
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["backbone"] == "resnet18" and result["weights"] == "none (from scratch)"
    assert "not available" not in proc.stderr


@needs_data
def test_resume_continues_the_first_run(subset_run, tmp_path: Path) -> None:
    first, cache, _ = subset_run
    out = tmp_path / "run"
    shutil.copytree(first, out)
    proc = _run(*SUBSET_RUN, "--epochs", "2", "--resume", "--out", str(out), cache=cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stderr and "at epoch 2" in proc.stderr
    # The first run's schedule had ended at LR 0: stretched to the new end, said once.
    assert proc.stderr.count("the cosine now decays from step") == 1
    before = json.loads((first / "history.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[0] == before[0]  # restored from the checkpoint, equal values
    assert 0.0 <= history[1]["val_acc"] <= 1.0
    import transferkit as tk

    trained, _ = tk.load_model(first / "model.safetensors")
    resumed, _ = tk.load_model(out / "model.safetensors")
    head = tk.get_info(trained).heads[0]
    a, b = (m.get_submodule(head).weight for m in (trained, resumed))
    assert not torch.equal(a, b)  # epoch 2 trained the head (a zero LR would not)


def test_resume_without_a_checkpoint_is_one_line(tmp_path: Path) -> None:
    proc = _run("--resume", "--subset", "100", "--out", str(tmp_path / "empty"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "--resume: there is no checkpoint" in proc.stderr and "last.pt" in proc.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--compare", "--resume"], "--compare cannot --resume"),
    (["--compare", "--recipe", "full"], "drop --recipe"),
    (["--compare", "--epochs", "1"], "--compare needs --epochs >= 2"),
    (["--compare", "--weights", "none"], "drop --weights none"),
    (["--resume", "--recipe", "lp_ft"], "--resume continues recipe 'full' only"),
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--body-lr=-1e-3"], "--body-lr must be positive, got -0.001"),
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--freeze-stages", "-1"], "--freeze-stages must be >= 0, got -1"),
    (["--tta", "mirror"], "argument --tta: invalid choice: 'mirror'"),
    (["--augment", "heavy"], "argument --augment: invalid choice: 'heavy'"),
])
def test_option_usage_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        _example().parse_args(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the error is one line
    assert "error: " in last and message in last


ARMS = ["scratch", "linear_probe", "full", "lp_ft"]


@needs_data
def test_compare_trains_four_arms_with_one_budget(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = _run("--compare", "--subset", "200", "--epochs", "2", "--image-size", "32",
                "--out", str(out), "--threads", "1", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The fallback is resolved once, and every arm uses it.
    assert proc.stderr.count("resnet18 ImageNet weights are not available") == 1
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("COMPARE ")
    table = json.loads(last.removeprefix("COMPARE "))
    assert table == json.loads((out / "compare.json").read_text())
    budget_ = table["budget"]
    assert budget_["epochs"] == 2 and budget_["images"] == "160/40/40"
    # What was not given, fine_tune chose, the same for every arm (the same 160 images).
    assert budget_["image_size"] == 32 and budget_["augment"] == DEFAULT_AUGMENT
    assert budget_["batch_size"] == budget.default_batch_size(160)
    assert (budget_["head_lr"], budget_["body_lr"]) == (1e-2, 1e-3)  # recipe full's
    rows = table["arms"]
    assert [r["arm"] for r in rows] == ARMS
    assert [r["recipe"] for r in rows] == ["full", "linear_probe", "full", "lp_ft"]
    assert [r["weights"] for r in rows] == ["none (from scratch)"] + ["ImageNet"] * 3
    assert {r["backbone"] for r in rows} == {"efficientnet_lite0"}
    assert {r["epochs"] for r in rows} == {2}
    # Scratch and full train every stage (no stage is frozen by default).
    assert rows[0]["trains"] == "everything" and rows[2]["trains"] == "everything"
    markdown = (out / "compare.md").read_text()
    assert "Shared budget: 2 epochs per arm" in markdown and "using efficientnet_lite0" in markdown
    assert f"32 px, batch {budget_['batch_size']}, augmentation light" in markdown
    for row in rows:
        assert 0.0 <= row["val_acc"] <= 1.0 and 0.0 <= row["test_acc"] <= 1.0
        assert row["wall_s"] > 0
        assert f"| {row['arm']} | efficientnet_lite0 | {row['weights']} |" in markdown
        assert f"| {row['val_acc']:.4f} | {row['test_acc']:.4f} |" in markdown
        assert f"| {row['arm']} |" in proc.stdout  # the table is printed too
        arm = out / "compare" / row["arm"]
        assert (arm / "report.md").is_file() and (arm / "model.safetensors").is_file()
        report = (arm / "report.md").read_text()
        assert f"- chose batch_size {budget_['batch_size']}: default for 160 " in report
        assert f"- chose augment {DEFAULT_AUGMENT}: default" in report
        history = json.loads((arm / "history.json").read_text())
        assert len(history) == 2 and history[-1]["val_acc"] == pytest.approx(row["val_acc"],
                                                                             abs=5e-5)
    phases = json.loads((out / "compare" / "lp_ft" / "history.json").read_text())
    assert [r["phase"] for r in phases] == ["probe", "finetune"]


def _spy_predict(monkeypatch) -> list[dict]:
    """Record every ``Trainer.predict`` call: its ``tta``, its result and the plain one."""
    calls: list[dict] = []
    predict = Trainer.predict

    def spy(self, data, *, probs=True, tta="none"):
        out = predict(self, data, probs=probs, tta=tta)
        calls.append({"tta": tta, "probs": out, "plain": predict(self, data, probs=probs)})
        return out

    monkeypatch.setattr(Trainer, "predict", spy)
    return calls


@needs_data
def test_default_run_takes_what_fine_tune_chooses(env, monkeypatch, tmp_path: Path) -> None:
    # No --epochs, --batch-size, --image-size, --augment: fine_tune chooses them from the
    # data. Its rules are scaled down here (at most 3 epochs, a small pixel budget) so the
    # run takes seconds; the example must train with, and report, whatever they give.
    monkeypatch.setattr(budget, "MAX_EPOCHS", 3)
    device = select_device("auto").type
    monkeypatch.setitem(budget.PIXEL_BUDGET, device, 2e5)
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert _example().main(["--subset", "20", "--threads", "1", "--out", "run"]) == 0
    import transferkit as tk

    model, meta = tk.load_model(tmp_path / "run" / "model.safetensors")
    n = 16  # --subset 20: 4 images held out for validation
    batch = budget.default_batch_size(n)
    epochs = budget.default_epochs(n)
    size = budget.default_image_size((28, 28), tk.get_info(model).input_size, device=device,
                                     passes=budget.default_passes(n))
    assert size not in (32, max(tk.get_info(model).input_size))  # the budget decided it
    # A default run this short (3 epochs here) is not augmented: fine_tune's rule.
    assert epochs < AUGMENT_MIN_EPOCHS
    report = (tmp_path / "run" / "report.md").read_text()
    for line in (f"- chose batch_size {batch}: default for {n} training images",
                 f"- chose epochs {epochs}: default for {n} training images",
                 f"- chose image_size {size}: the images are 28x28; {n * epochs} image passes",
                 f"- chose augment none: {n} training images: a default run of {epochs} epochs",
                 "- chose lr 0.01: recipe full", "- chose body_lr 0.001: head LR x 0.1"):
        assert line in report, line
    for fact, value in (("epochs", epochs), ("batch size", batch), ("image size", size),
                        ("augmentation", "none"), ("recipe", "full")):
        assert f"| **{fact}** | {value} |" in report, fact
    # ... and trained with them: the epochs run, the size the model file records.
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == epochs
    assert tuple(meta.image_size) == (size, size)
    assert any(s.startswith(f"image_size {size}: ") for s in meta.extra["settings"])


@needs_data
def test_tta_flip_averages_the_test_predictions(env, monkeypatch, capsys,
                                                tmp_path: Path) -> None:
    calls = _spy_predict(monkeypatch)
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert _example().main(["--subset", "100", "--epochs", "1", "--image-size", "32",
                            "--threads", "1", "--tta", "flip", "--out", "run"]) == 0
    test = calls[-1]  # the test split's predictions
    assert test["tta"] == "flip" and test["probs"].shape == (20, 10)
    # The mirrored views change the probabilities; the reported accuracy is the averaged one.
    assert not torch.allclose(test["probs"], test["plain"], atol=1e-4)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["tta"] == "flip"
    import transferkit as tk

    labels = tk.data.fashion_mnist(offline=True).test_labels[:20]
    assert result["test_acc"] == round((test["probs"].argmax(1) == labels).float().mean().item(),
                                       4)
    assert "| **test-time augmentation** | flip |" in (tmp_path / "run" / "report.md").read_text()
