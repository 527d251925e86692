"""Report a run: a Markdown report, its confusion matrix and PNG plots.

- :mod:`~transferkit.report.markdown`: :func:`write_report`;
- :mod:`~transferkit.report.confusion`: :func:`confusion_matrix` and its checks;
- :mod:`~transferkit.report.plots`: training curves, LR sweep, confusion matrix,
  misclassified images (matplotlib, optional);
- :mod:`~transferkit.report.run`: the report of one fine-tuning run (:func:`write_run_report`).

This layer knows histories, tensors and files, not models or training: it imports only
the base modules.
"""

from __future__ import annotations

from transferkit.report.confusion import confusion_matrix
from transferkit.report.markdown import write_report
from transferkit.report.plots import (
    PLOTS_SKIPPED,
    matplotlib_available,
    plot_confusion,
    plot_history,
    plot_lr_find,
    plot_misclassified,
)
from transferkit.report.run import write_multilabel_run_report, write_run_report

__all__ = [
    "PLOTS_SKIPPED",
    "confusion_matrix",
    "matplotlib_available",
    "plot_confusion",
    "plot_history",
    "plot_lr_find",
    "plot_misclassified",
    "write_multilabel_run_report",
    "write_report",
    "write_run_report",
]
