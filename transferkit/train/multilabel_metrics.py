"""Multi-label metrics: mean average precision and F1 at a threshold, exact under DDP.

A target counts as positive when it is ``>= 0.5`` (multi-hot targets are 0 or 1; mixed or
smoothed ones are rounded); a prediction is positive when ``sigmoid(logit) >= threshold``.

- **F1** (``*_f1``) is the macro F1 at the threshold: per class ``2TP / (2TP + FP + FN)``,
  averaged over the classes that occur in the targets or the predictions (a class that is
  neither has no F1 and is left out, not counted as 0). The per-class counts are sums, so
  they all-reduce across DDP ranks like the loss.
- **mAP** (``*_map``) is the mean over classes with at least one positive of the average
  precision, scikit-learn's ``average_precision_score`` (tied scores form one step). It
  ranks every sample, so it cannot be summed per rank: the evaluation keeps the logits
  and under DDP gathers every rank's rows (:func:`~transferkit.train.distributed.all_gather_rows`)
  before computing it, so it is the exact mAP of the whole split. Training epochs do not
  report it (it would keep every logit of the epoch): ``train_f1`` only.
"""

from __future__ import annotations

import math

import torch

from transferkit.train.distributed import DistInfo, all_gather_rows, all_reduce_sum

__all__ = ["MultiLabelSums", "average_precision", "per_class_scores"]


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Return each class's average precision; NaN for a class without positives.

    ``AP = sum over thresholds of (R_k - R_{k-1}) * P_k``, with tied scores forming one
    threshold (scikit-learn's ``average_precision_score``).

    Args:
        scores: ``(N, C)`` scores (logits or probabilities: only their order matters).
        positives: ``(N, C)`` booleans (or 0/1).

    Example:
        >>> scores = torch.tensor([[0.9], [0.8], [0.3], [0.1]])
        >>> average_precision(scores, torch.tensor([[1], [0], [1], [0]])).tolist()
        [0.8333333333333333]
    """
    if scores.shape[0] == 0:
        return torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    ordered, order = scores.double().sort(dim=0, descending=True, stable=True)
    hits = positives.gather(0, order).double()
    tp = hits.cumsum(0)
    ranks = torch.arange(1, scores.shape[0] + 1, dtype=torch.float64,
                         device=scores.device).unsqueeze(1)
    ends = torch.ones_like(ordered, dtype=torch.bool)
    ends[:-1] = ordered[:-1] != ordered[1:]  # the last row of each run of tied scores
    at_ends = torch.where(ends, tp, torch.zeros_like(tp))
    previous = torch.cat([torch.zeros_like(tp[:1]), at_ends.cummax(0).values[:-1]])
    steps = torch.where(ends, (tp - previous) * tp / ranks, torch.zeros_like(tp))
    total = tp[-1]
    ap = steps.sum(0) / total
    return torch.where(total > 0, ap, torch.full_like(ap, math.nan))


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Per-class F1, NaN where a class is neither a target nor a prediction."""
    denominator = (2 * tp + fp + fn).double()
    return torch.where(denominator > 0, 2 * tp.double() / denominator.clamp(min=1),
                       torch.full_like(denominator, math.nan))


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


def per_class_scores(logits: torch.Tensor, targets: torch.Tensor, *,
                     threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Return per-class ``ap``, ``f1`` and ``support`` (positives) of one split, on CPU.

    Example:
        >>> logits = torch.tensor([[2.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
        >>> scores = per_class_scores(logits, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
        >>> scores["ap"].tolist(), scores["f1"].tolist(), scores["support"].tolist()
        ([1.0, 0.5], [1.0, 0.6666666666666666], [2, 1])
    """
    logits, positives = logits.detach().float().cpu(), targets.detach().cpu() >= 0.5
    predicted = logits.sigmoid() >= threshold
    tp = (predicted & positives).sum(0)
    fp = (predicted & ~positives).sum(0)
    fn = (~predicted & positives).sum(0)
    return {"ap": average_precision(logits, positives), "f1": _f1(tp, fp, fn),
            "support": positives.sum(0)}


class MultiLabelSums:
    """Running loss, per-class TP/FP/FN and (for evaluation) logits of one split.

    The same interface as :class:`~transferkit.train.metrics.MetricSums`: ``update``,
    ``packed``/``load`` (sums to all-reduce or checkpoint), ``reduce`` and ``result``.

    Args:
        num_classes: The number of outputs.
        threshold: The probability at or above which a class is predicted.
        device: Where the sums live.
        keep_scores: Keep every logit and target for mAP (evaluation).

    Example:
        >>> sums = MultiLabelSums(2, threshold=0.5, device="cpu", keep_scores=True)
        >>> sums.update(torch.tensor(0.5), torch.tensor([[3.0, -3.0], [-3.0, 3.0]]),
        ...             torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        >>> {k: round(v, 4) for k, v in sums.result("val").items()}
        {'val_loss': 0.5, 'val_map': 0.75, 'val_f1': 0.5}
    """

    def __init__(self, num_classes: int, *, threshold: float, device: torch.device | str,
                 keep_scores: bool = False) -> None:
        self.threshold, self.keep_scores = threshold, keep_scores
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.counts = torch.zeros(3, num_classes, dtype=torch.int64, device=device)  # tp/fp/fn
        self.count = 0
        self._logits: list[torch.Tensor] = []
        self._positives: list[torch.Tensor] = []

    def update(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch (``loss`` is the batch mean); no host sync."""
        n = targets.shape[0]
        logits = logits.detach().float()
        positives = targets.detach() >= 0.5
        predicted = logits.sigmoid() >= self.threshold
        self.loss_sum.add_(loss.detach(), alpha=n)
        self.counts[0].add_((predicted & positives).sum(0))
        self.counts[1].add_((predicted & ~positives).sum(0))
        self.counts[2].add_((~predicted & positives).sum(0))
        self.count += n
        if self.keep_scores:
            self._logits.append(logits)
            self._positives.append(positives.to(torch.uint8))

    def packed(self) -> torch.Tensor:
        """Return ``[loss_sum, count, tp..., fp..., fn...]`` as one float64 tensor."""
        count = torch.tensor([self.count], dtype=torch.float64, device=self.counts.device)
        return torch.cat([self.loss_sum.view(1), count, self.counts.double().flatten()])

    def load(self, packed: torch.Tensor) -> None:
        """Replace the sums with a tensor returned by :meth:`packed`."""
        packed = packed.to(self.counts.device, torch.float64)
        self.loss_sum.copy_(packed[0])
        self.count = int(packed[1].item())
        self.counts.copy_(packed[2:].round().long().view_as(self.counts))

    def reduce(self, info: DistInfo) -> None:
        """Sum the counts over the DDP ranks and gather their logits (no-op alone)."""
        if not info.enabled:
            return
        self.load(all_reduce_sum(self.packed(), info))
        if self.keep_scores:
            logits, positives = self._scores()
            self._logits = [all_gather_rows(logits, info)]
            self._positives = [all_gather_rows(positives, info)]

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.counts.shape[1]
        logits = torch.cat(self._logits) if self._logits else self.counts.new_zeros(
            (0, c), dtype=torch.float32)
        positives = torch.cat(self._positives) if self._positives else self.counts.new_zeros(
            (0, c), dtype=torch.uint8)
        return logits, positives

    def result(self, prefix: str) -> dict[str, float]:
        """Return ``{prefix_loss, prefix_map (evaluation), prefix_f1}`` (NaN if empty)."""
        pre = f"{prefix}_" if prefix else ""
        count = self.count
        out = {f"{pre}loss": self.loss_sum.item() / count if count else math.nan}
        if self.keep_scores:
            logits, positives = self._scores()
            out[f"{pre}map"] = _nanmean(average_precision(logits, positives.bool()).cpu())
        out[f"{pre}f1"] = _nanmean(_f1(*self.counts.cpu()))
        return out
