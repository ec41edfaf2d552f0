"""Which workload measures a job: the registry the isolated harness is handed
(``IsolatedHarness(job, evaluator=evaluator_for)``), so the harness never chooses from below."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autotune.measure.runtimes import parameter_table
from autotune.measure.workloads.forward import Evaluator
from autotune.measure.workloads.generation import GenerationEvaluator, harness_params
from autotune.measure.workloads.objective import ObjectiveEvaluator

if TYPE_CHECKING:
    from autotune.job.spec import Job


def evaluator_for(job: Job) -> Any:
    """The evaluator measuring ``job``'s trials: the user's own objective (``objective:``), text
    generation (prompts → tokens at a concurrency, :mod:`autotune.measure.workloads.generation`) for
    ``model.task: text-generation``, else one forward pass per measurement
    (:class:`~autotune.measure.workloads.forward.Evaluator`)."""
    if job.is_custom:
        return ObjectiveEvaluator(job)
    if job.is_generation:
        return GenerationEvaluator(job)
    return Evaluator(job)


def harness_params_for(job: Job) -> Mapping[str, tuple[str, Any]]:
    """The configuration keys ``job``'s evaluator understands (name → (meaning, default))."""
    if job.is_generation:
        return harness_params()
    return parameter_table()
