"""Classification metrics accumulated on the training device.

Sums stay as tensors on the device during an epoch (no host sync per batch); they are
read once at the end of the epoch, after an optional all-reduce across processes, so
every sample counts exactly once. Single-label runs report the loss and top-k accuracies
(:class:`MetricSums`; soft targets count their most probable class as the label);
multi-label runs report the loss, mAP and F1
(:class:`~transferkit.train.multilabel_metrics.MultiLabelSums`); :func:`metric_sums`
returns the one of the task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from transferkit.train.distributed import DistInfo, all_reduce_sum
from transferkit.train.multilabel_metrics import MultiLabelSums

__all__ = ["MetricSums", "metric_sums", "topk_correct"]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int]) -> torch.Tensor:
    """Count the samples whose target is among the ``k`` highest logits, for each ``k``.

    ``k`` larger than the number of classes counts every sample (the target is always
    among all classes).

    Args:
        logits: ``(N, C)`` scores.
        targets: ``(N,)`` class indices.
        topk: The values of ``k``.

    Returns:
        A float tensor of ``len(topk)`` counts, on the logits' device.
    """
    maxk = min(max(topk), logits.shape[-1])
    pred = logits.topk(maxk, dim=-1).indices  # (N, maxk), distinct classes per row
    # Column j counts the targets found at rank j; the running sum counts those in the top j+1.
    found = pred.eq(targets.view(-1, 1)).sum(dim=0).cumsum(dim=0)
    index = torch.tensor([min(k, maxk) - 1 for k in topk], device=found.device)
    return found.index_select(0, index).float()


class MetricSums:
    """Running sums of loss, top-k hits and sample count for one split of one epoch.

    Args:
        topk: The values of ``k`` for top-k accuracy.
        device: Where the sums live.
    """

    def __init__(self, topk: Sequence[int], device: torch.device | str) -> None:
        self.topk = tuple(topk)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.hits = torch.zeros(len(self.topk), dtype=torch.int64, device=device)
        self.count = 0  # a host int: counting needs no device op

    def update(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch (``loss`` is the batch mean). Two device ops, no host sync.

        ``(N, C)`` soft targets (mixed, smoothed, a teacher's) count their most probable
        class as the label.
        """
        n = targets.shape[0]
        if targets.dim() == 2:
            targets = targets.argmax(1)
        self.loss_sum.add_(loss.detach(), alpha=n)
        self.hits.add_(topk_correct(logits.detach(), targets, self.topk).long())
        self.count += n

    def packed(self) -> torch.Tensor:
        """Return ``[loss_sum, count, hits...]`` as one float64 tensor (to all-reduce or save)."""
        count = torch.tensor([self.count], dtype=torch.float64, device=self.hits.device)
        return torch.cat([self.loss_sum.view(1), count, self.hits.double()])

    def load(self, packed: torch.Tensor) -> None:
        """Replace the sums with a tensor returned by :meth:`packed`."""
        packed = packed.to(self.hits.device, torch.float64)
        self.loss_sum.copy_(packed[0])
        self.count = int(packed[1].item())
        self.hits.copy_(packed[2:].round().long())

    def reduce(self, info: DistInfo) -> None:
        """Sum the sums over the DDP ranks in place (no-op in a single process)."""
        if info.enabled:
            self.load(all_reduce_sum(self.packed(), info))

    def result(self, prefix: str) -> dict[str, float]:
        """Return ``{prefix_loss, prefix_acc, prefix_top<k>...}`` as floats (NaN if empty).

        ``k == 1`` is reported as ``<prefix>_acc``; other ``k`` as ``<prefix>_top<k>``; an
        empty ``prefix`` gives ``loss``, ``acc``, ``top<k>``.
        """
        count = self.count
        pre = f"{prefix}_" if prefix else ""
        out = {f"{pre}loss": self.loss_sum.item() / count if count else float("nan")}
        for k, hits in zip(self.topk, self.hits.tolist(), strict=True):
            name = f"{pre}acc" if k == 1 else f"{pre}top{k}"
            out[name] = hits / count if count else float("nan")
        return out


def metric_sums(task: str | None, *, topk: Sequence[int], num_classes: int, threshold: float,
                device: torch.device | str,
                evaluation: bool = False) -> MetricSums | MultiLabelSums:
    """Return empty sums for one split of one epoch of ``task`` (``None``: single-label).

    Args:
        task: ``"single_label"`` or ``"multi_label"``.
        topk: The ``k`` of the top-k accuracies (single-label).
        num_classes: The model's outputs (multi-label).
        threshold: The probability at which a class is predicted (multi-label F1).
        device: Where the sums live.
        evaluation: Keep what mAP needs (multi-label evaluation only).

    Example:
        >>> type(metric_sums("multi_label", topk=(1,), num_classes=3, threshold=0.5,
        ...                  device="cpu")).__name__
        'MultiLabelSums'
    """
    if task == "multi_label":
        return MultiLabelSums(num_classes, threshold=threshold, device=device,
                              keep_scores=evaluation)
    return MetricSums(topk, device)
