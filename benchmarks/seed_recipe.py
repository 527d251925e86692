"""Reproduce the seed notebook's recipe: time one epoch and measure the test accuracy.

The seed notebook (``/work/shared/seed-notebook.txt``) fine-tunes torchvision's ResNet-18 on
FashionMNIST: a per-sample PIL loader (``Resize`` + ``ToTensor``, ``DataLoader(batch_size=64,
shuffle=True)``), the gray channel copied three times (``torch.cat((X, X, X), 1)``),
cross-entropy, ``SGD(lr=0.1)``, one epoch. This script runs that loop unchanged, except:

- the ImageNet weights are not reachable offline, so the network starts from random
  weights (``--weights PATH`` loads a local torchvision ``resnet18`` state dict instead);
- the evaluation is done right: eval mode, ``no_grad``, and the channel tripling that the
  notebook's ``evaluate_accuracy`` forgot (it would fail on a 3-channel ResNet).

The timed ``seconds`` are the training epoch(s) alone, loader included; the evaluation is
reported separately (``eval_seconds``). The last line is ``RESULT {json}``.

Usage::

    python benchmarks/seed_recipe.py                    # 28 px, 1 epoch
    python benchmarks/seed_recipe.py --image-size 7     # the notebook's own setting
    python benchmarks/seed_recipe.py --quick            # seconds: 256 samples (tests)
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import load_data, machine, print_result, seed_loader, subset
from torch import nn


def build_net(weights: str | None) -> nn.Module:
    """Return the seed's ``SurfaceDefectResNet``: torchvision ResNet-18 with a 10-way fc."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    if weights:
        # weights_only: a checkpoint is data, never code.
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.fc = nn.Linear(net.fc.in_features, 10)
    return net


def train_epoch(net: nn.Module, loader, loss: nn.Module, optimizer) -> tuple[float, float, int]:
    """Run the seed's ``train_ch`` body for one epoch; return loss sum, correct count, n."""
    net.train()
    train_l_sum, train_acc_sum, n = 0.0, 0.0, 0
    for X, y in loader:
        X = torch.cat((X, X, X), 1)
        y_hat = net(X)
        l = loss(y_hat, y).sum()  # noqa: E741 - the notebook's names
        optimizer.zero_grad()
        l.backward()
        optimizer.step()
        train_l_sum += l.item()
        train_acc_sum += (y_hat.argmax(dim=1) == y).sum().item()
        n += y.shape[0]
    return train_l_sum, train_acc_sum, n


@torch.no_grad()
def evaluate_accuracy(loader, net: nn.Module) -> float:
    """Return the test accuracy: eval mode, no grad, channels tripled as in training."""
    net.eval()
    acc_sum, n = 0.0, 0
    for X, y in loader:
        X = torch.cat((X, X, X), 1)
        acc_sum += (net(X).argmax(dim=1) == y).float().sum().item()
        n += y.shape[0]
    return acc_sum / n


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=28, help="the seed used 7")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--train-samples", type=int, default=None, help="a subset (default all)")
    parser.add_argument("--test-samples", type=int, default=None, help="a subset (default all)")
    parser.add_argument("--data-root", default=None, help="folder with the idx files")
    parser.add_argument("--weights", default=None, help="local torchvision resnet18 .pth")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="256 train/test samples, 1 thread")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_samples = args.train_samples or 256
        args.test_samples = args.test_samples or 256
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = load_data(args.data_root, synthetic_ok=args.quick)
    train = subset(data.train_images, data.train_labels, args.train_samples, seed=args.seed)
    test = subset(data.test_images, data.test_labels, args.test_samples, seed=args.seed)
    train_iter = seed_loader(*train, image_size=args.image_size, batch_size=args.batch_size)
    test_iter = seed_loader(
        *test, image_size=args.image_size, batch_size=args.batch_size, shuffle=False
    )
    net = build_net(args.weights)
    init = args.weights or "random init (ImageNet ResNet-18 weights not reachable offline)"
    print(f"seed recipe: resnet18 from {init}; data {data.source}; "
          f"{len(train[0])} train / {len(test[0])} test at {args.image_size} px", flush=True)
    loss = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr)

    seconds = 0.0
    for epoch in range(args.epochs):
        start = time.perf_counter()
        l_sum, acc_sum, n = train_epoch(net, train_iter, loss, optimizer)
        seconds += time.perf_counter() - start
        start = time.perf_counter()
        test_acc = evaluate_accuracy(test_iter, net)
        eval_seconds = time.perf_counter() - start
        print(f"epoch {epoch + 1}, loss {l_sum / n:.4f}, train acc {acc_sum / n:.3f}, "
              f"test acc {test_acc:.3f}, {seconds:.1f} s training", flush=True)
    result = {
        "benchmark": "seed_recipe",
        "seconds": seconds,
        "eval_seconds": eval_seconds,
        "test_acc": test_acc,
        # The notebook prints l_sum / n, a batch-mean loss divided by the batch size.
        "train_loss": l_sum / -(-n // args.batch_size),
        "train_acc": acc_sum / n,
        "images_per_s": n * args.epochs / seconds,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_samples": len(train[0]),
        "test_samples": len(test[0]),
        "weights": args.weights or "none: from scratch",
        "data": data.source,
        **machine(),
    }
    print_result(result)
    return result


if __name__ == "__main__":
    main()
