"""L2-SP: regularise fine-tuning toward the pretrained weights (Li, Grandvalet, Davoine 2018).

Plain weight decay pulls every weight toward zero, which forgets what pretraining
learned. L2-SP pulls the pretrained body toward its starting point instead::

    penalty = alpha / 2 * ||w_body - w0_body||^2 + beta / 2 * ||w_head||^2

``w0`` is a detached copy of the body taken when :class:`L2SP` is created (so create it
right after loading the pretrained weights, before any training). The head is new, so
it has no starting point to keep: it gets plain L2 with ``beta`` (0 disables it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from transferkit import _validate
from transferkit.adaptation.core import get_info, unwrap

__all__ = ["L2SP", "L2SPLoss"]


class L2SP(nn.Module):
    """The L2-SP penalty of ``model``: a module with no input that returns a scalar.

    Parameters that do not require a gradient when it is called are skipped (frozen
    weights never left their starting point, so their term is zero anyway).

    Args:
        model: An adapted model (its head is ``get_info(model).head_modules``).
        alpha: Strength of the pull of the body toward its weights at creation.
        beta: Strength of plain L2 on the head's weights.

    Raises:
        ConfigError: ``alpha`` or ``beta`` is negative or not finite.

    Example:
        >>> import transferkit
        >>> model = transferkit.create("resnet18", 3, pretrained=False)
        >>> penalty = L2SP(model, alpha=0.01)
        >>> penalty().item()  # nothing moved yet
        0.0
    """

    def __init__(self, model: nn.Module, *, alpha: float = 0.01, beta: float = 0.0) -> None:
        super().__init__()
        self.alpha = _validate.rate("alpha", alpha)
        self.beta = _validate.rate("beta", beta)
        inner = unwrap(model)
        heads = tuple(h + "." for h in get_info(inner).head_modules)
        named = list(inner.named_parameters())
        # Plain lists, not registered: the model is the user's, this is only a reference.
        self._body = [(n, p) for n, p in named if not n.startswith(heads)]
        self._head = [(n, p) for n, p in named if n.startswith(heads)]
        self._anchor = {n: p.detach().clone() for n, p in self._body}

    @property
    def anchor(self) -> dict[str, torch.Tensor]:
        """The body's weights at creation, by parameter name (detached copies)."""
        return self._anchor

    def forward(self) -> torch.Tensor:
        """Return ``alpha/2 * ||w - w0||^2`` over the body plus ``beta/2 * ||head||^2``."""
        device = self._body[0][1].device if self._body else self._head[0][1].device
        total = torch.zeros((), device=device)
        if self.alpha:
            for name, param in self._body:
                if not param.requires_grad:
                    continue
                w0 = self._anchor[name]
                if w0.device != param.device:  # the Trainer moved the model: follow it once
                    w0 = self._anchor[name] = w0.to(param.device)
                total = total + (param - w0).pow(2).sum() * (self.alpha / 2)
        if self.beta:
            for _name, param in self._head:
                if param.requires_grad and param.dim() > 1:  # weights only, as weight decay
                    total = total + param.pow(2).sum() * (self.beta / 2)
        return total


class L2SPLoss:
    """A ``loss_fn`` for the Trainer: ``base(logits, targets) + L2SP(model)()``.

    Args:
        model: The model being trained (create this before training starts).
        base: The data loss; default cross-entropy.
        alpha: See :class:`L2SP`.
        beta: See :class:`L2SP`.

    Example:
        >>> import transferkit
        >>> model = transferkit.create("resnet18", 3, pretrained=False)
        >>> trainer = transferkit.Trainer(model, loss_fn=L2SPLoss(model, alpha=0.01))
    """

    def __init__(
        self,
        model: nn.Module,
        base: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        *,
        alpha: float = 0.01,
        beta: float = 0.0,
    ) -> None:
        self.penalty = L2SP(model, alpha=alpha, beta=beta)
        self.base = base if base is not None else nn.CrossEntropyLoss()

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the data loss plus the penalty."""
        loss = self.base(logits, targets)
        if not torch.is_grad_enabled():  # evaluation reports the data loss alone
            return loss
        return loss + self.penalty().to(loss.dtype)
