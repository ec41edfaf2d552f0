"""What this machine can run: the search space restricted to it, derived from the declarations.

Nothing here names a runtime.  The removals come from:

* the pipeline: ``device: cuda`` without a CUDA device;
* each registered runtime's :meth:`~autotune.measure.runtimes.base.Runtime.available` (a runtime that
  cannot run here leaves ``runtime``'s choices) and
  :meth:`~autotune.measure.runtimes.base.Runtime.excluded` (values it cannot run here, with the reason
  and the condition under which they cannot: an unconditional exclusion removes the choices,
  a conditional one becomes an ``invalid`` rule of the space).

Each removal is a notice the user sees.  Two more kinds of removal work the same way:

* what the *job* cannot run (:func:`restrict_to_job`): a transform that needs what the job does not
  provide (gradient pruning without a loss and targets), from the transforms' ``needs``;
* what the *study* has learned (:func:`forbid_causes`): a trial that failed for a reason its
  configuration determines (:class:`~autotune.errors.TrialFailed` with a ``cause``) makes every
  configuration sharing the cause invalid for the rest of the study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from autotune.core.space import Invalid, SearchSpace
from autotune.errors import SpecError
from autotune.measure.runtimes import runtimes
from autotune.measure.runtimes.base import Exclusion
from autotune.measure.transforms.base import TRANSFORMS, get_transform
from autotune.measure.workloads.knobs import GENERATION_ENGINES, engine_unavailable

#: the study attribute holding the failure causes learned so far: [{"when", "reason", "trial"}]
CAUSES_ATTR = "invalid_causes"


def exclusions(caps: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """(runtimes available here, every exclusion of this machine)."""
    out: list[Exclusion] = []
    if not caps.get("cuda"):
        out.append(Exclusion("device", ("cuda",), "no CUDA device on this machine"))
    available = []
    for rt in runtimes():
        why = rt.available(caps)
        if why:
            out.append(Exclusion("runtime", (rt.name,), why))
            continue
        available.append(rt.name)
        out.extend(rt.excluded(caps))
    for name in GENERATION_ENGINES:  # text generation's engines besides torch
        why = engine_unavailable(name)
        if why:
            out.append(Exclusion("runtime", (name,), why))
    return available, out


def restrict_to_machine(space: SearchSpace, caps: Mapping[str, Any], *,
                        runtime_default: str | None = None) -> tuple[SearchSpace, list[str]]:
    """Remove choices this machine cannot run; each removal is a notice the user sees.

    Whole choices go (device cuda without a GPU, a runtime or execution provider that is not
    installed); choices that only some combinations cannot run become ``invalid`` rules (fp16 on
    a CPU without fp16 arithmetic, with torch), also with a notice.  ``runtime_default`` decides
    conditions on ``runtime`` when the space does not search it.
    """
    notices: list[str] = []
    _, excl = exclusions(caps)
    fixed = {"device": "cpu", "runtime": runtime_default}
    for e in excl:
        if not e.when:
            if e.param in space:
                allowed = [c for c in space[e.param].choices if c not in e.values]
                space, n = space.restrict(e.param, allowed, e.reason)
                if n:
                    notices.append(str(n))
            continue
        space, n2 = forbid(space, e.param, e.values, e.when, fixed, e.reason)
        if n2:
            notices.append(n2)
    return space, notices


def forbid(space: SearchSpace, name: str, values: Sequence[Any], when: Mapping[str, Any],
           fixed: Mapping[str, Any], reason: str) -> tuple[SearchSpace, str | None]:
    """Add an ``invalid`` rule: ``name`` in ``values`` cannot run when ``when`` holds.

    Conditions on parameters that are not in the space are decided with ``fixed`` (their
    value when unsearched; None: unknown, the condition is kept as always true)."""
    if name not in space:
        return space, None
    p = space[name]
    vals = tuple(v for v in values if p.contains(v))
    if not vals:
        return space, None
    cond: dict[str, tuple[Any, ...]] = {}
    for k, v in when.items():
        if k in space:
            if space[k].kind == "categorical" and not space[k].contains(v):
                return space, None  # the space never takes that value (a generation job's
                # runtime choices never include ONNX runtimes)
            cond[k] = (v,)
        elif fixed.get(k) is not None and fixed[k] != v:
            return space, None  # the condition can never hold
    new = replace(p, invalid=(*p.invalid, Invalid(vals, cond, reason)))
    space = replace(space, params=tuple(new if q.name == name else q for q in space.params))
    where = f" with {', '.join(f'{k}={v[0]}' for k, v in cond.items())}" if cond else ""
    return space, (f"search space: removed {name} = {', '.join(map(str, vals))}{where} "
                   f"({reason})")


def job_provides(job: Any) -> frozenset[str]:
    """What a model job gives the transforms that need something (``Transform.needs``): 'loss'
    (evaluation.loss, or the cross-entropy of metric 'accuracy') and 'targets' (a dataset)."""
    ev = getattr(job, "evaluation", None)
    out = set()
    if ev is not None and ev.dataset:
        out.add("targets")
    if ev is not None and (ev.loss or ev.metric == "accuracy"):
        out.add("loss")
    return frozenset(out)


def restrict_to_job(space: SearchSpace, job: Any) -> tuple[SearchSpace, list[str]]:
    """Remove the pruning methods whose transform needs what the job does not provide (gradient
    pruning without a loss and targets), each with a notice; a located :class:`SpecError` when no
    method is left."""
    if getattr(job, "is_custom", False) or getattr(job, "is_generation", False) \
            or "pruning_method" not in space:
        return space, []
    get_transform("prune_magnitude")  # imports the built-in transforms
    have, notices = job_provides(job), []
    for cls in list(TRANSFORMS.values()):
        method = getattr(cls, "pruning_method", None)
        missing = sorted(set(cls.needs) - have)
        if not method or not missing or method not in space["pruning_method"].choices:
            continue
        reason = (f"{method} pruning needs {' and '.join(missing)}, which this job does not "
                  "give: evaluation.loss (module:function(outputs, targets)) and a dataset, or "
                  "metric 'accuracy' with a dataset")
        allowed = [c for c in space["pruning_method"].choices if c != method]
        if not allowed:
            raise SpecError(f"{reason}.", file=getattr(job, "source", None),
                            path="search_space.parameters.pruning_method",
                            hint="Give the job a loss and a dataset, or search another pruning "
                                 "method.")
        space, n = space.restrict("pruning_method", allowed, reason)
        if n:
            notices.append(str(n))
    return space, notices


def learned_causes(raw: Any) -> list[dict[str, Any]]:
    """The well-formed causes of a study's :data:`CAUSES_ATTR` attribute."""
    out = []
    for c in raw if isinstance(raw, list) else []:
        if isinstance(c, Mapping) and isinstance(c.get("when"), Mapping) and c["when"]:
            out.append({"when": dict(c["when"]), "reason": str(c.get("reason") or ""),
                        "trial": c.get("trial")})
    return out


def forbid_causes(space: SearchSpace, causes: Sequence[Mapping[str, Any]]
                  ) -> tuple[SearchSpace, list[str]]:
    """``space`` with an ``invalid`` rule per learned cause (its first parameter in the space
    takes the rule, the others are its condition), and a notice for each."""
    notices = []
    for c in learned_causes(list(causes)):
        when = c["when"]
        name = next((k for k in when if k in space), None)
        if name is None:
            continue
        trial = f"trial {c['trial']}: " if c.get("trial") is not None else ""
        space, n = forbid(space, name, (when[name],), {k: v for k, v in when.items()
                                                       if k != name},
                          {}, f"learned from {trial}{c['reason'][:300]}")
        if n:
            notices.append(n)
    return space, notices


__all__ = ["CAUSES_ATTR", "exclusions", "forbid", "forbid_causes", "job_provides",
           "learned_causes", "restrict_to_job", "restrict_to_machine"]
