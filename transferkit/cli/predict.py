"""``transferkit predict``: classify image files with a model file."""

from __future__ import annotations

import argparse
import json

import torch

from transferkit.backbones import load_model
from transferkit.data import decode_image
from transferkit.errors import ConfigError, DataError

__all__ = ["cmd_predict"]


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the top-k classes of each image (a bad image stops before any output)."""
    model, meta = load_model(args.model_file, device=args.device)
    if meta.in_chans not in (1, 3):
        raise ConfigError(f"predict reads 1- or 3-channel images; the model has "
                          f"in_chans={meta.in_chans}.")
    images = []
    for name in args.images:  # decode everything first: a bad file stops before any output
        tensor = decode_image(name, meta.in_chans, meta.image_size)
        if tensor is None:
            raise DataError(f"Cannot decode image {name!r} (missing, unreadable or not an "
                            "image). Fix the path or leave the file out.")
        images.append(tensor)
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    k = min(args.topk, meta.num_classes)
    results = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            x = torch.stack(images[start : start + 64]).float().div_(255)
            probs = model(((x - mean) / std).to(args.device)).float().softmax(-1).cpu()
            top = probs.topk(k, dim=-1)
            for i in range(len(x)):
                results.append([(meta.class_names[int(c)], float(p))
                                for p, c in zip(top.values[i], top.indices[i])])
    if args.json:
        print(json.dumps([{"path": p, "predictions": [{"class": c, "prob": q} for c, q in r]}
                          for p, r in zip(args.images, results)], indent=1))
    else:
        for path, preds in zip(args.images, results):
            for cls, prob in preds:
                print(f"{path}\t{cls}\t{prob:.4f}")
    return 0

