"""Reviewing a study: fronts, ranks and tables (:mod:`.front`), plots, the HTML report, the
optuna-dashboard launcher and the MLflow view (:mod:`.tracking`)."""

from typing import Any

from autotune.review import front


def __getattr__(name: str) -> Any:
    """``from autotune.review import front_table`` (the module before the stage packages) still
    works: the names of :mod:`autotune.review.front`."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return getattr(front, name)
    except AttributeError:
        raise AttributeError(f"module 'autotune.review' has no attribute {name!r}") from None
