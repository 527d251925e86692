"""``transferkit predict``: classify image files and folders with a model file.

- **Inputs.** A file is read as given; a folder is searched recursively by the
  image-folder rules (:func:`transferkit.data.list_images`: the extensions of
  ``IMG_EXTENSIONS``, hidden entries skipped, sorted).
- **Unreadable files** (missing, not readable, not an image) are skipped: the first
  :data:`NAMED` are named on stderr, one warning line each, then one line counts the rest.
  The exit code is 0 when at least one image was classified, like ``train``, which skips
  undecodable images too; 1 when none could be. ``--strict`` stops (exit 1) at the first
  unreadable file instead, before anything is written.
- **Output**: ``text`` (``path<TAB>class<TAB>probability``), ``csv`` or ``json``, on
  stdout or in ``--output FILE``, written atomically once every image is classified.
  The probabilities are the softmax of the logits, or for a multi-label model (``train
  --labels``: ``task`` in the model file) each class's sigmoid, independent of the others.
- **Test-time augmentation** (``--tta flip``...): the probabilities are averaged over fixed
  views of each image (:data:`transferkit.train.tta.TTA_MODES`).
- **Model**: a model file (``model.safetensors``). A training checkpoint (``best.pt``,
  ``last.pt``) lacks the backbone, class names and preprocessing needed to rebuild the
  model: it is recognised (read with ``weights_only=True``) and the error names the model
  file to use instead.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from transferkit._io import atomic_write_text, check_writable
from transferkit.backbones import ModelMeta, load_model
from transferkit.data import IMG_EXTENSIONS, decode_image, list_images
from transferkit.errors import CheckpointError, ConfigError, DataError
from transferkit.train.checkpoint import load_checkpoint
from transferkit.train.state import CHECKPOINT_FORMAT
from transferkit.train.tta import tta_probs

__all__ = ["FORMATS", "NAMED", "cmd_predict"]

log = logging.getLogger("transferkit.cli")

#: The output formats of ``--format``.
FORMATS = ("text", "csv", "json")
#: Unreadable files named one warning line each; a last line counts the others.
NAMED = 5
_BATCH = 64
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip format: a checkpoint or a state dict


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify the images of ``args.images`` and write their top-k classes."""
    fmt = args.format
    if args.json:
        # FutureWarning, not DeprecationWarning: Python hides the latter from end users.
        warnings.warn("--json is deprecated: use --format json (the same output)",
                      FutureWarning, stacklevel=2)
        fmt = "json"
    output = _check_output(args.output) if args.output is not None else None
    model, meta = _load(Path(args.model_file), args.device)
    if meta.in_chans not in (1, 3):
        raise ConfigError(f"predict reads 1- or 3-channel images; the model has "
                          f"in_chans={meta.in_chans}.")
    results = _classify(model, meta, _inputs(args.images), topk=args.topk,
                        device=args.device, strict=args.strict, tta=args.tta)
    text = _render(results, fmt)
    if output is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(output, text)
        log.info("wrote the predictions of %d image(s) to %s", len(results), output)
    return 0


def _check_output(text: str) -> Path:
    """Check ``--output`` before anything is loaded: a file in an existing, writable folder."""
    path = Path(text)
    if path.is_dir():
        raise ConfigError(f"--output {text!r} is a folder; pass a file path, e.g. "
                          f"{str(path / 'predictions.csv')!r}.")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {text!r}: folder {str(path.parent)!r} does not exist; "
                          "create it first or pick another path.")
    check_writable(path.parent, what="the folder of --output")
    return path


def _load(path: Path, device: str) -> tuple[nn.Module, ModelMeta]:
    """Load a model file; say what to use instead when given a torch.save file."""
    if path.is_file():
        with path.open("rb") as f:
            magic = f.read(len(_ZIP_MAGIC))
        if magic == _ZIP_MAGIC:
            raise _not_a_model_file(path)
    return load_model(path, device=device)


def _not_a_model_file(path: Path) -> CheckpointError:
    state = load_checkpoint(path)  # weights_only=True: nothing in the file runs
    if state.get("format") != CHECKPOINT_FORMAT:
        return CheckpointError(
            f"{str(path)!r} is a PyTorch file (torch.save), not a model file: it lacks the "
            "backbone, class names and preprocessing needed to rebuild the model. Write a "
            "model file with transferkit.save_model(model, 'model.safetensors', "
            "backbone=..., class_names=..., image_size=...) and predict with it."
        )
    near = [folder / "model.safetensors" for folder in (path.parent, path.parent.parent)]
    found = next((p for p in near if p.is_file()), None)
    fix = (f"Predict with the model file next to it: transferkit predict {found} IMAGE..."
           if found is not None else
           "Predict with the model.safetensors that `transferkit train` writes to its "
           "--out folder, or write one with transferkit.save_model(model, "
           "'model.safetensors', backbone=..., class_names=..., image_size=...).")
    return CheckpointError(
        f"{str(path)!r} is a training checkpoint ({CHECKPOINT_FORMAT}), not a model file: "
        "it holds the weights but not the backbone, class names and preprocessing needed "
        f"to rebuild the model. {fix}"
    )


def _inputs(arguments: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """Yield ``(path, None)`` for each image to read, ``(path, why)`` for one that cannot be."""
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files = list_images(path)
            if not files:
                warnings.warn(f"no image files under {argument!r} (extensions: "
                              f"{', '.join(IMG_EXTENSIONS)}; hidden files are skipped)",
                              stacklevel=2)
            yield from ((str(file), None) for file in files)
        elif path.exists():
            yield argument, None
        else:
            yield argument, "no such file or folder"


def _classify(model: nn.Module, meta: ModelMeta, inputs: Iterator[tuple[str, str | None]],
              *, topk: int, device: str, strict: bool,
              tta: str = "none") -> list[tuple[str, list[tuple[str, float]]]]:
    """Decode and classify the images in batches; skip (or, strict, stop at) unreadable ones."""
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    k = min(topk, meta.num_classes)
    multi_label = meta.extra.get("task") == "multi_label"
    results: list[tuple[str, list[tuple[str, float]]]] = []
    skipped: list[str] = []
    batch: list[tuple[str, torch.Tensor]] = []

    def run_batch() -> None:
        x = torch.stack([t for _, t in batch]).float().div_(255)
        with torch.no_grad():
            probs = tta_probs(model, ((x - mean) / std).to(device), tta,
                              multi_label=multi_label).cpu()
        top = probs.topk(k, dim=-1)
        for i, (path, _) in enumerate(batch):
            results.append((path, [(meta.class_names[int(c)], float(p))
                                   for p, c in zip(top.values[i], top.indices[i])]))
        batch.clear()

    for path, why in inputs:
        tensor = decode_image(path, meta.in_chans, meta.image_size) if why is None else None
        if tensor is None:
            why = why or ("permission denied" if not os.access(path, os.R_OK)
                          else "not an image that PIL can decode, or truncated")
            if strict:
                raise DataError(f"Cannot read image {path!r}: {why}. Fix or remove it, or "
                                "drop --strict to skip unreadable files.")
            skipped.append(path)
            if len(skipped) <= NAMED:
                warnings.warn(f"skipped {path!r}: {why}", stacklevel=2)
            continue
        batch.append((path, tensor))
        if len(batch) == _BATCH:
            run_batch()
    if batch:
        run_batch()
    if len(skipped) > NAMED:
        warnings.warn(f"skipped {len(skipped) - NAMED} more unreadable file(s), "
                      f"{len(skipped)} in all", stacklevel=2)
    if not results:
        if not skipped:
            raise DataError("No image files to classify. Pass image files or folders that "
                            f"hold some ({', '.join(IMG_EXTENSIONS)}).")
        raise DataError(f"None of the {len(skipped)} file(s) could be read as an image "
                        f"(first: {skipped[0]!r}); nothing to classify.")
    return results


def _render(results: list[tuple[str, list[tuple[str, float]]]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{"path": path, "predictions": [{"class": c, "prob": p}
                                                          for c, p in preds]}
                           for path, preds in results], indent=1) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "probability"])
        writer.writerows([path, rank, c, f"{p:.6f}"]
                         for path, preds in results for rank, (c, p) in enumerate(preds, 1))
        return buffer.getvalue()
    return "".join(f"{path}\t{c}\t{p:.4f}\n" for path, preds in results for c, p in preds)
