"""A user's own objective (``objective: module:function``) in place of a model.

The callable takes the configuration (a dict of the active parameters) and returns a dict of
metrics.  Like a model it runs inside the measuring process (:class:`IsolatedHarness`), so a crash,
a hang or too much memory fails only that trial; a raised exception is a failed trial with the
exception as the reason.  The vocabulary is open: a metric named by the job's objectives or
constraints that the result lacks fails the trial and says which.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from autotune.core.refs import resolve
from autotune.errors import TrialFailed
from autotune.measure.harness.hardware import fingerprint
from autotune.measure.harness.result import TrialResult

if TYPE_CHECKING:
    from autotune.job.spec import Job


def check_result(result: Any, required: list[str], ref: str) -> dict[str, float]:
    """The metrics of one call, or :class:`TrialFailed` saying what is wrong with them."""
    if not isinstance(result, Mapping):
        raise TrialFailed(f"the objective {ref} returned {type(result).__name__}, not a dict of metrics")
    metrics: dict[str, float] = {}
    for k, v in result.items():
        if isinstance(v, bool) or (not isinstance(v, int | float) and not hasattr(v, "__float__")):
            raise TrialFailed(f"the objective {ref} returned a non-numeric value for '{k}': {v!r}")
        metrics[str(k)] = float(v)
    missing = [m for m in required if m not in metrics]
    if missing:
        got = ", ".join(sorted(metrics)) or "nothing"
        raise TrialFailed(
            f"the objective {ref} returned no value for {', '.join(map(repr, missing))} (named in "
            f"the job's objectives/constraints); it returned: {got}"
        )
    bad = [m for m in required if not math.isfinite(metrics[m])]
    if bad:
        raise TrialFailed(f"the objective {ref} returned non-finite {', '.join(bad)}")
    return metrics


class ObjectiveEvaluator:
    """Calls the job's objective; same methods as :class:`~autotune.measure.workloads.forward.Evaluator`."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._fn: Callable[[dict[str, Any]], Any] | None = None

    @property
    def fn(self) -> Callable[[dict[str, Any]], Any]:
        if self._fn is None:
            self._fn = resolve(str(self.job.objective), search_paths=[self.job.base_dir],
                               field="objective")
        return self._fn

    def evaluate(self, config: Mapping[str, Any]) -> TrialResult:
        t0 = time.perf_counter()
        try:
            result = self.fn(dict(config))
        except TrialFailed:
            raise
        except Exception as exc:
            raise TrialFailed(f"the objective raised {type(exc).__name__}: {exc}") from exc
        metrics = check_result(result, self.job.required_metrics, str(self.job.objective))
        return TrialResult(metrics=metrics, details={"elapsed_s": time.perf_counter() - t0})

    def capabilities(self) -> dict[str, Any]:
        return {}  # the user's code decides what runs where; nothing is removed from the space

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint().to_dict()
