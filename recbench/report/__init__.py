"""Paper-style reports over recorded runs: ``python -m recbench.report``.

Why a separate package: a sweep leaves hundreds of MLflow runs (or run folders); the questions a
paper asks of them -- mean and spread over seeds per (dataset, backbone, method, size), does a
compressed method reach the full model, how quality trades against size -- are the same every time,
so they are answered here once, by pure functions on DataFrames (``tables``), which runs are seeds
of one result (``cells``), intervals and paired tests against the full model (``stats``), plots
(``plots``) and loaders that give both sources the same columns (``load``).
"""

from recbench.report.load import FolderSource, MlflowSource, ReportError

__all__ = ["FolderSource", "MlflowSource", "ReportError"]
