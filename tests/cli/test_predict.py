"""``transferkit predict``: files and folders, unreadable files, formats, --output, checkpoints.

Run in-process through ``main([...])`` with a tiny registered backbone (a model file of a
few kB); images are drawn with PIL in each test's temporary folder.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from transferkit.backbones.model_file import save_model
from transferkit.backbones.registry import create, register_backbone, unregister_backbone
from transferkit.cli import main
from transferkit.train import Trainer

TINY = "tktest:predicttiny"


def _build_tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 1000))


@pytest.fixture(scope="module", autouse=True)
def tiny() -> Iterator[str]:
    register_backbone(TINY, replace=True)(_build_tiny)
    yield TINY
    unregister_backbone(TINY)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create(TINY, 3, pretrained=False).eval()
    path = tmp_path_factory.mktemp("run") / "model.safetensors"
    return save_model(model, path, backbone=TINY, class_names=["cat", "dog", "owl"],
                      image_size=12)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), colour).save(path)
    return path


def broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image")
    return path


def paths_in(text_output: str) -> list[str]:
    return [line.split("\t")[0] for line in text_output.splitlines()]


# ------------------------------------------------------------------- files and folders
def test_folders_are_searched_recursively_by_the_image_folder_rules(
    capsys, model_file: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("photos/dog/2.png", "photos/cat/1.JPG", "photos/cat/deep/3.jpeg",
                 "photos/.thumbs/4.png", "photos/cat/.5.png", "loose.png"):
        image(Path(name))
    Path("photos/cat/notes.txt").write_text("not an image, not an image extension")
    code, out, err = run(capsys, "predict", model_file, "photos", "loose.png")
    assert (code, err) == (0, "")
    assert paths_in(out) == ["photos/cat/1.JPG", "photos/cat/deep/3.jpeg", "photos/dog/2.png",
                             "loose.png"]
    for line in out.splitlines():
        _, cls, prob = line.split("\t")
        assert cls in ("cat", "dog", "owl") and 0.0 < float(prob) <= 1.0


def test_unreadable_files_are_named_and_the_rest_is_classified(
    capsys, model_file: Path, tmp_path: Path
) -> None:
    good = image(tmp_path / "good.png")
    bad = broken(tmp_path / "folder" / "bad.jpg")
    image(tmp_path / "folder" / "ok.png")
    missing = tmp_path / "missing.png"
    code, out, err = run(capsys, "predict", model_file, good, tmp_path / "folder", missing)
    assert code == 0
    assert paths_in(out) == [str(good), str(tmp_path / "folder" / "ok.png")]
    assert err.splitlines() == [
        f"transferkit: warning: skipped {str(bad)!r}: not an image that PIL can decode, or "
        "truncated",
        f"transferkit: warning: skipped {str(missing)!r}: no such file or folder",
    ]


def test_many_unreadable_files_are_counted_after_the_first_five(
    capsys, model_file: Path, tmp_path: Path
) -> None:
    bad = [broken(tmp_path / "in" / f"bad{i}.png") for i in range(8)]
    image(tmp_path / "in" / "good.png")
    code, out, err = run(capsys, "predict", model_file, tmp_path / "in")
    assert code == 0 and paths_in(out) == [str(tmp_path / "in" / "good.png")]
    lines = err.splitlines()
    assert lines[:5] == [f"transferkit: warning: skipped {str(p)!r}: not an image that PIL "
                         "can decode, or truncated" for p in bad[:5]]
    assert lines[5:] == ["transferkit: warning: skipped 3 more unreadable file(s), 8 in all"]


def test_no_readable_image_fails(capsys, model_file: Path, tmp_path: Path) -> None:
    bad = broken(tmp_path / "a.png")
    code, out, err = run(capsys, "predict", model_file, bad, tmp_path / "gone.jpg")
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (
        f"transferkit: error: None of the 2 file(s) could be read as an image (first: "
        f"{str(bad)!r}); nothing to classify.")
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "predict", model_file, tmp_path / "empty")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"transferkit: warning: no image files under {str(tmp_path / 'empty')!r} (extensions: "
        ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp; hidden files are skipped)",
        "transferkit: error: No image files to classify. Pass image files or folders that "
        "hold some (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp).",
    ]


def test_strict_stops_at_the_first_unreadable_file(capsys, model_file, tmp_path) -> None:
    good, bad = image(tmp_path / "a.png"), broken(tmp_path / "b.png")
    output = tmp_path / "predictions.csv"
    code, out, err = run(capsys, "predict", model_file, good, bad, "--strict",
                         "--output", output, "--format", "csv")
    assert (code, out) == (1, "") and not output.exists()
    assert err.splitlines() == [
        f"transferkit: error: Cannot read image {str(bad)!r}: not an image that PIL can "
        "decode, or truncated. Fix or remove it, or drop --strict to skip unreadable files."]


# ------------------------------------------------------------------- formats and --output
def test_csv_and_json_hold_the_same_predictions(capsys, model_file, tmp_path) -> None:
    paths = [image(tmp_path / "a,b.png"), image(tmp_path / "c.png", (30, 30, 200))]
    code, out, err = run(capsys, "predict", model_file, *paths, "--topk", "2",
                         "--format", "json")
    assert (code, err) == (0, "")
    as_json = json.loads(out)
    code, out, err = run(capsys, "predict", model_file, *paths, "--topk", "2",
                         "--format", "csv")
    assert (code, err) == (0, "")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "rank", "class", "probability"]
    assert len(rows) == 1 + 2 * 2
    for i, record in enumerate(as_json):
        assert record["path"] == str(paths[i])  # a comma in a path is quoted, not split
        for rank, pred in enumerate(record["predictions"], 1):
            path, got_rank, cls, prob = rows[1 + 2 * i + rank - 1]
            assert (path, got_rank, cls) == (str(paths[i]), str(rank), pred["class"])
            assert float(prob) == pytest.approx(pred["prob"], abs=1e-6)
    code, out, _ = run(capsys, "predict", model_file, *paths, "--topk", "2")
    assert out == "".join(f"{r['path']}\t{p['class']}\t{p['prob']:.4f}\n"
                          for r in as_json for p in r["predictions"])


def test_output_file_is_written_atomically(capsys, model_file, tmp_path) -> None:
    paths = [image(tmp_path / "a.png"), image(tmp_path / "b.png", (30, 30, 200))]
    _, expected, _ = run(capsys, "predict", model_file, *paths, "--format", "csv")
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    output.write_text("an older file\n")
    code, out, err = run(capsys, "predict", model_file, *paths, "--format", "csv",
                         "--output", output)
    assert (code, out) == (0, "")
    assert err.splitlines() == [
        f"INFO transferkit.cli: wrote the predictions of 2 image(s) to {output}"]
    assert output.read_text() == expected
    assert sorted(p.name for p in output.parent.iterdir()) == ["predictions.csv"]  # no temp


def test_bad_output_fails_before_anything_is_read(capsys, tmp_path: Path) -> None:
    img = image(tmp_path / "a.png")
    missing_model = tmp_path / "no-model.safetensors"  # --output is checked before it
    code, out, err = run(capsys, "predict", missing_model, img, "--output",
                         tmp_path / "nope" / "p.csv")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"transferkit: error: --output {str(tmp_path / 'nope' / 'p.csv')!r}: folder "
        f"{str(tmp_path / 'nope')!r} does not exist; create it first or pick another path."]
    code, _, err = run(capsys, "predict", missing_model, img, "--output", tmp_path)
    assert code == 1 and err.startswith(f"transferkit: error: --output {str(tmp_path)!r} is "
                                        "a folder; pass a file path")


def test_json_flag_still_works_and_says_it_is_deprecated(capsys, model_file, tmp_path) -> None:
    img = image(tmp_path / "a.png")
    _, expected, _ = run(capsys, "predict", model_file, img, "--format", "json")
    code, out, err = run(capsys, "predict", model_file, img, "--json")
    assert (code, out) == (0, expected)
    assert err.splitlines() == [
        "transferkit: warning: --json is deprecated: use --format json (the same output)"]
    code, out, err = run(capsys, "predict", model_file, img, "--json", "--format", "csv")
    assert (code, out) == (2, "")
    assert "argument --format: not allowed with argument --json" in err


# ------------------------------------------------------------------- not a model file
@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Trainer's best.pt, in <run>/finetune/ as `transferkit train` lays it out."""
    run_dir = tmp_path_factory.mktemp("trained")
    model = create(TINY, 3, pretrained=False)
    batch = (torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 0]))
    Trainer(model, epochs=1, out_dir=run_dir / "finetune", device="cpu").fit([batch], [batch])
    return run_dir / "finetune" / "best.pt"


def test_training_checkpoint_names_the_model_file_next_to_it(
    capsys, model_file, trainer_checkpoint: Path, tmp_path: Path
) -> None:
    img = image(tmp_path / "a.png")
    next_to_it = trainer_checkpoint.parent.parent / "model.safetensors"
    next_to_it.write_bytes(model_file.read_bytes())
    try:
        code, out, err = run(capsys, "predict", trainer_checkpoint, img)
    finally:
        next_to_it.unlink()
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"transferkit: error: {str(trainer_checkpoint)!r} is a training checkpoint "
        "(transferkit.trainer/1), not a model file: it holds the weights but not the "
        "backbone, class names and preprocessing needed to rebuild the model. Predict with "
        f"the model file next to it: transferkit predict {next_to_it} IMAGE..."]
    code, out, err = run(capsys, "predict", trainer_checkpoint, img)  # no model file near
    assert (code, out) == (1, "")
    assert err.splitlines()[-1].endswith(
        "Predict with the model.safetensors that `transferkit train` writes to its --out "
        "folder, or write one with transferkit.save_model(model, 'model.safetensors', "
        "backbone=..., class_names=..., image_size=...).")


def test_plain_torch_file_is_not_a_model_file(capsys, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(create(TINY, 3, pretrained=False).state_dict(), path)
    code, out, err = run(capsys, "predict", path, image(tmp_path / "a.png"))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"transferkit: error: {str(path)!r} is a PyTorch file (torch.save), not a model file: "
        "it lacks the backbone, class names and preprocessing needed to rebuild the model. "
        "Write a model file with transferkit.save_model(model, 'model.safetensors', "
        "backbone=..., class_names=..., image_size=...) and predict with it."]


class _Payload:
    def __reduce__(self):  # unpickling this would create a file
        return (Path.touch, (Path(_MARKER[0]),))


_MARKER: list[str] = []


def test_a_checkpoint_is_read_with_weights_only(capsys, tmp_path: Path) -> None:
    _MARKER[:] = [str(tmp_path / "code-ran")]
    path = tmp_path / "best.pt"
    torch.save({"format": "transferkit.trainer/1", "x": _Payload()}, path)
    assert zipfile.is_zipfile(path)
    code, out, err = run(capsys, "predict", path, image(tmp_path / "a.png"))
    assert (code, out) == (1, "")
    assert not (tmp_path / "code-ran").exists()  # refused, not executed
    assert err.startswith(f"transferkit: error: Checkpoint {str(path)!r} cannot be read")
    assert len(err.splitlines()) == 1


def test_tta_flip_averages_the_image_and_its_mirror(capsys, model_file, tmp_path) -> None:
    # 12 px, the model's size: no resize (a resized mirror is not exactly a mirrored resize)
    pixels = torch.randint(0, 256, (12, 12, 3), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:, ::-1].copy()).save(tmp_path / "mirror.png")

    def probs(*argv: object) -> list[dict[str, float]]:
        code, out, err = run(capsys, "predict", model_file, *argv, "--topk", "3",
                             "--format", "json")
        assert (code, err) == (0, "")
        return [{p["class"]: p["prob"] for p in r["predictions"]} for r in json.loads(out)]

    plain, mirrored = probs(tmp_path / "a.png", tmp_path / "mirror.png")
    (averaged,) = probs(tmp_path / "a.png", "--tta", "flip")
    assert plain != mirrored  # the model is not mirror-symmetric: the test can fail
    for name in ("cat", "dog", "owl"):
        assert averaged[name] == pytest.approx((plain[name] + mirrored[name]) / 2, abs=1e-6)
    code, _, err = run(capsys, "predict", model_file, tmp_path / "a.png", "--tta", "flips")
    assert code == 2 and "invalid choice: 'flips'" in err
