"""The ``transferkit`` command line: list, describe, fine-tune, predict and export.

Commands (``transferkit COMMAND --help`` for each one's options)::

    transferkit backbones [PATTERN]
    transferkit info NAME
    transferkit train --data DIR|fashion-mnist --backbone NAME --out DIR [--val DIR] ...
    transferkit predict MODEL_FILE PATH... [--topk K] [--format text|csv|json] [--output FILE]
    transferkit export MODEL_FILE --format torchscript|onnx [--out PATH]

Exit codes: 0 success, 1 failure (one ``transferkit: error: ...`` line on stderr; with
``--verbose`` also the traceback), 2 usage error (bad or missing arguments), 130
interrupted, 141 stdout closed by its reader (``transferkit backbones | head``: no message).
Progress is logged to stderr; results go to stdout. One module per command group:
:mod:`~transferkit.cli.catalog` (backbones, info), :mod:`~transferkit.cli.train`,
:mod:`~transferkit.cli.predict`, :mod:`~transferkit.cli.export`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from transferkit._version import __version__
from transferkit.cli import catalog, config, export, predict, train
from transferkit.data.augment import AUGMENT_PRESETS
from transferkit.errors import TransferKitError
from transferkit.recipes.budget import (
    LABEL_SMOOTHING,
    LP_FT_BELOW_PER_CLASS,
    LP_FT_FAST_FROM_PER_CLASS,
)
from transferkit.recipes.inputs import AUGMENT_NONE_FROM
from transferkit.train.ema import check_ema
from transferkit.train.tta import TTA_MODES

__all__ = ["EXIT_BROKEN_PIPE", "build_parser", "main"]

#: Exit code when stdout's reader went away (``| head``): 128 + SIGPIPE, as Unix tools
#: killed by the signal report it; nothing is printed.
EXIT_BROKEN_PIPE = 141


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def _lr(text: str) -> float | str:
    if text == "find":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'find', got {text!r}") from None
def _decay(text: str) -> float | None:
    try:
        return check_ema(float(text))
    except ValueError:  # not a number, or ConfigError: not in (0, 1)
        raise argparse.ArgumentTypeError(f"must be a decay in (0, 1), got {text!r}; e.g. "
                                         "0.999") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    """Return the ``transferkit`` argument parser (one sub-parser per command)."""
    parser = argparse.ArgumentParser(
        prog="transferkit", description="Fine-tune pretrained image backbones.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage error. See docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("backbones", parents=[common], help="list backbone names",
                       description="List backbones: name, source, weights.")
    p.add_argument("pattern", nargs="?", default="*",
                   help="shell-style pattern on the full name, e.g. 'resnet*', '*convnext*' "
                        "(every source), 'timm:resnet18*' (timm's tags) or 'hf_hub:*' "
                        "(timm models in the Hugging Face cache)")
    p.set_defaults(func=catalog.cmd_backbones)

    p = sub.add_parser("info", parents=[common], help="describe one backbone",
                       description="Describe a backbone: weights, preprocessing, layers, "
                       "stages, parameters.")
    p.add_argument("name", help="a backbone name, e.g. resnet18")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=catalog.cmd_info)

    p = sub.add_parser("train", parents=[common], help="fine-tune on an image folder",
                       description="Fine-tune a backbone on DIR/<class>/<image>, on split "
                       "folders DIR/train|val|test/<class>/<image>, or on FashionMNIST, and "
                       "write OUT/model.safetensors, the history and report.md. What is left "
                       "out is chosen from the data and said in the log and the report.")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="read options from a TOML file (command-line options win); each run "
                        "writes OUT/config.toml, which repeats it")
    p.add_argument("--data", default=None,
                   help=f"image folder (class or split folders), or '{train.FASHION_MNIST}' "
                        "(required, here or in --config)")
    p.add_argument("--val", default=None, metavar="DIR",
                   help="a separate validation folder, DIR/<class>/<image>")
    p.add_argument("--test", default=None, metavar="DIR",
                   help="a separate test folder, evaluated once at the end")
    p.add_argument("--backbone", default=None,
                   help="backbone name (transferkit backbones; required)")
    p.add_argument("--out", default=None, help="output folder (created if needed; required)")
    p.add_argument("--recipe", default=None,
                   help=f"fine-tuning recipe (default: from the data, full from "
                        f"{LP_FT_BELOW_PER_CLASS} to {LP_FT_FAST_FROM_PER_CLASS} training "
                        "images a class, lp_ft at full's LRs below and above)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, default=None,
                        help="epochs (default: from the number of images)")
    length.add_argument("--steps", type=_positive_int, default=None,
                        help="optimizer steps instead of epochs (rounded up to epochs)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="default: about N/16 images, 16..256; on the CPU at most 64 at 224 px")
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="stored and training size (default: stored at the images' median "
                        "size rounded up to a multiple of 32, at most the backbone's; trained "
                        "at the largest size the device's compute budget allows)")
    p.add_argument("--lr", type=_lr, default=None,
                   help="head LR (default: the recipe's), or 'find': swept by lr_find at the "
                        "start of its phase (OUT/lr_find.png); the body follows at the "
                        "recipe's ratio unless --body-lr is given")
    p.add_argument("--body-lr", type=float, default=None, help="body LR")
    p.add_argument("--freeze-stages", type=int, default=0, metavar="K",
                   help="keep the stem and K-1 stages frozen, cached once (default 0)")
    p.add_argument("--augment", choices=tuple(AUGMENT_PRESETS), default=None,
                   help="augmentation preset (default: light, shifts without flips; none "
                        f"past about {round(AUGMENT_NONE_FROM, -3):,} training images)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--patience", type=_positive_int, default=None, metavar="N",
                   help="stop early after N epochs without a better validation loss "
                        "(default: off; the best epoch's weights are kept either way)")
    p.add_argument("--ema", type=_decay, default=None, metavar="DECAY",
                   help="validate, select and keep an EMA of the weights, e.g. 0.999")
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--no-keep-memory", action="store_true",
                   help="on the CPU, let glibc hand freed memory back to the OS after every "
                        "step (default: kept for the next step, faster, 1-18%% higher peak)")
    p.add_argument("--tta", choices=tuple(TTA_MODES), default="none",
                   help="test-time augmentation of the final test (default: none)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (same options)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=_fraction, default=None,
                   help="share of each class held out for validation when there is no "
                        "validation folder (default 0.2; FashionMNIST: 1/12)")
    p.add_argument("--subset", type=_positive_int, default=None,
                   help="use at most N training and N validation images")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (pretrained), 'none' (random init) or a weights file")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=None,
                   help="1 (grayscale) or 3 (RGB); default: 1 when every image is grey")
    p.add_argument("--strict", action="store_true",
                   help="stop (exit 1) on an undecodable image instead of skipping it")
    p.add_argument("--balanced", action="store_true",
                   help="draw the training batches class-balanced, with replacement")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also log to TensorBoard in DIR (pip install tensorboard)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="multi-label: a .csv/.json labels file (image file -> labels) of the "
                        "images in --data; --val/--test then name labels files too")
    for flag, meta, what in (("--mixup", "ALPHA", "MixUp's alpha, e.g. 0.2 (default off)"),
                             ("--cutmix", "ALPHA", "CutMix's alpha, e.g. 1.0 (default off)"),
                             ("--label-smoothing", "EPS",
                              f"label smoothing, e.g. 0.1 (default: {LABEL_SMOOTHING} where "
                              "the recipe is chosen and is full, "
                              f"{LP_FT_BELOW_PER_CLASS}-{LP_FT_FAST_FROM_PER_CLASS} images a "
                              "class; else off)")):
        p.add_argument(flag, type=float, default=None, metavar=meta, help=what)
    p.add_argument("--class-weights", choices=("balanced",), default=None,
                   help="weigh the loss by inverse class frequency (default off)")
    p.set_defaults(func=train.cmd_train, parser=p)

    p = sub.add_parser("predict", parents=[common], help="classify images",
                       description="Classify image files and folders (searched recursively): "
                       "the top-k classes of each image, as text (PATH<TAB>CLASS<TAB>"
                       "PROBABILITY), CSV or JSON. Unreadable files are named on stderr and "
                       "skipped; exit 1 when no image could be read.")
    p.add_argument("model_file", help="a model.safetensors written by train")
    p.add_argument("images", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--topk", type=_positive_int, default=1)
    style = p.add_mutually_exclusive_group()
    style.add_argument("--format", choices=predict.FORMATS, default="text",
                       help="output format (default: text)")
    style.add_argument("--json", action="store_true",
                       help="deprecated: the same as --format json")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="write the predictions to FILE (atomically) instead of stdout")
    p.add_argument("--strict", action="store_true",
                   help="stop (exit 1) at the first unreadable file instead of skipping it")
    p.add_argument("--tta", choices=tuple(TTA_MODES), default="none",
                   help="test-time augmentation: average the softmax over views")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=predict.cmd_predict)

    p = sub.add_parser("export", parents=[common], help="export to TorchScript or ONNX",
                       description="Export a model file; the export is checked against the "
                       "model's output before it is written.")
    p.add_argument("model_file", help="a model.safetensors written by train")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--out", default=None, help="output file (default: MODEL_FILE.pt/.onnx)")
    p.set_defaults(func=export.cmd_export)
    return parser


def _with_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 argv: list[str]) -> argparse.Namespace:
    """Re-parse ``train`` with ``--config``'s options first; check the required ones."""
    train_parser = args.parser
    if args.config is not None:
        try:
            extra = config.config_argv(args.config, train_parser)
        except TransferKitError as exc:
            train_parser.error(_one_line(exc))
        i = argv.index("train")
        args = parser.parse_args(argv[: i + 1] + extra + argv[i + 1 :])
    missing = [f"--{name}" for name in ("data", "backbone", "out") if getattr(args, name) is None]
    if missing:
        train_parser.error(f"the following arguments are required: {', '.join(missing)} (on "
                           "the command line or in --config)")
    return args


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the final flush at exit cannot fail on the closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture stdout)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    print(f"transferkit: warning: {_one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``transferkit`` command line and return its exit code.

    Args:
        argv: The arguments after the program name; default ``sys.argv[1:]``.

    Returns:
        0 on success, 1 on failure, 2 on a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "train":
            args = _with_config(parser, args, list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("transferkit: error: a command is required (see transferkit --help)",
              file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger("transferkit")
    old_level = package_log.level
    package_log.addHandler(handler)
    package_log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = int(args.func(args))
            sys.stdout.flush()  # a closed pipe must fail here, not at interpreter exit
            return code
    except BrokenPipeError:  # `transferkit backbones | head`: the reader has all it wants
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (TransferKitError, OSError) as exc:
        error, message = exc, _one_line(exc)
    except KeyboardInterrupt:
        print("transferkit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  # a bug: say so on one line, details with -v
        error = exc
        message = (f"unexpected {type(exc).__name__}: {_one_line(exc)} (rerun with "
                   "--verbose for the traceback and report it)")
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(old_level)
    if args.verbose:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    print(f"transferkit: error: {message}", file=sys.stderr)
    return 1
