"""``transferkit export``: a model file to TorchScript or ONNX, checked before writing."""

from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from transferkit._io import atomic_write_bytes
from transferkit.backbones import load_model
from transferkit.errors import ConfigError, TransferKitError

__all__ = ["cmd_export"]


def _export_torchscript(model: Any, example: Any) -> tuple[bytes, Any]:
    # Tracer and deprecation warnings are moot: the caller checks the outputs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        data = buffer.getvalue()
        reloaded = torch.jit.load(io.BytesIO(data), map_location="cpu")  # the bytes we wrote
    return data, lambda x: reloaded(x)


def _export_onnx(model: Any, example: Any) -> tuple[bytes, Any]:
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError("ONNX export needs the onnx package: pip install onnx") from exc
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    data = buffer.getvalue()
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        run = session.run
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        run = ReferenceEvaluator(proto).run
    return data, lambda x: torch.from_numpy(run(None, {"input": x.numpy()})[0])


def cmd_export(args: argparse.Namespace) -> int:
    """Export ``args.model_file``; write it only if it reproduces the model's output."""
    suffix = {"torchscript": ".pt", "onnx": ".onnx"}[args.format]
    out = Path(args.out) if args.out else Path(args.model_file).with_suffix(suffix)
    if not out.parent.is_dir():
        raise OSError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist; "
                      "create it or pick another path.")
    model, meta = load_model(args.model_file)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, meta.in_chans, *meta.image_size, generator=generator)
    exporter = _export_torchscript if args.format == "torchscript" else _export_onnx
    with torch.no_grad():
        data, run = exporter(model, example)
        check = torch.randn(3, meta.in_chans, *meta.image_size, generator=generator)
        expected, got = model(check), run(check)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else "shape"
        raise TransferKitError(f"The {args.format} export of {args.model_file!r} does not "
                               f"reproduce the model (max difference {diff}); nothing written.")
    atomic_write_bytes(out, data)
    print(out)
    return 0

