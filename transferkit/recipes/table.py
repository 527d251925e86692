"""The recipe table: every recipe ``fine_tune`` runs, its defaults and where it comes from."""

from __future__ import annotations

from dataclasses import dataclass

from transferkit.errors import UnknownRecipeError, closest

__all__ = ["DEFAULT_RECIPE", "L2SP_ALPHA", "LAYER_DECAY", "PROBE_LR", "RECIPES", "UNFREEZE_UNTIL",
           "Recipe",
           "check_recipe", "list_recipes"]


@dataclass(frozen=True)
class Recipe:
    """A named fine-tuning recipe and its default learning rates.

    Attributes:
        name: The name ``fine_tune(recipe=...)`` takes.
        summary: What trains, in one line.
        reference: Where the recipe comes from.
        lr: Default LR of the head (of the fine-tuning phase for ``lp_ft``).
        body_lr: Default LR of the body (None: the body does not train).
        caches_stages: Whether ``fine_tune(freeze_stages=k)`` applies: the first ``k``
            stages stay frozen for the whole (fine-tuning) run, so their output is cached.
    """

    name: str
    summary: str
    reference: str
    lr: float = 1e-3
    body_lr: float | None = 1e-4
    caches_stages: bool = True


DEFAULT_RECIPE = "full"  # where the data cannot say its size (else budget.default_recipe)
PROBE_LR = 1e-2  # head LR of a linear probe (also the probe phase of lp_ft)
L2SP_ALPHA = 0.01  # alpha of recipe "l2sp" when fine_tune(l2sp=0)
LAYER_DECAY = 0.7  # per-stage LR multiplier of recipe "llrd", counted back from the head
UNFREEZE_UNTIL = 0.25  # recipe "gradual": all stages open by this fraction of the steps

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("full", "everything trains; head LR 10x the body LR",
               "Howard & Ruder, ULMFiT (ACL 2018): discriminative fine-tuning",
               lr=1e-2, body_lr=1e-3),
        Recipe("linear_probe", "frozen body; the head trains on features cached once",
               "Kornblith et al., Do Better ImageNet Models Transfer Better? (CVPR 2019)",
               lr=PROBE_LR, body_lr=None, caches_stages=False),
        Recipe("lp_ft", "linear probe first, then everything trains from the probed head",
               "Kumar et al., Fine-Tuning can Distort Pretrained Features (ICLR 2022)"),
        Recipe("gradual", "head first, then one stage at a time by optimizer step, last stage "
               "first, all open after a quarter of the run",
               "Howard & Ruder, ULMFiT (ACL 2018); fastai's fine_tune", caches_stages=False),
        Recipe("llrd", f"layer-wise LR decay: stage i from the top gets body_lr*{LAYER_DECAY}^i",
               "Clark et al., ELECTRA (ICLR 2020); Bao et al., BEiT (ICLR 2022)"),
        Recipe("bitfit", "biases and the head train, all other weights frozen",
               "Ben Zaken et al., BitFit (ACL 2022)", lr=1e-3, body_lr=1e-3,
               caches_stages=False),
        Recipe("l2sp", f"full, plus L2-SP toward the pretrained body (alpha={L2SP_ALPHA})",
               "Li, Grandvalet & Davoine, Explicit Inductive Bias for Transfer Learning "
               "with Convolutional Networks (ICML 2018)"),
    )
}


def list_recipes() -> list[str]:
    """Return the names of the recipes, in the order of the documentation."""
    return list(RECIPES)


def check_recipe(recipe: object) -> Recipe:
    """Return the :class:`Recipe` named ``recipe``.

    Raises:
        UnknownRecipeError: No recipe has that name (the closest one is suggested).
    """
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    raise UnknownRecipeError(
        f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}.{closest(str(recipe), RECIPES)}"
        " Pass one of them as fine_tune(..., recipe='lp_ft')."
    )
