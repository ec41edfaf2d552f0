"""autotune: hardware-aware hyperparameter and deployment auto-tuning.

Importing this package is cheap: heavy backends (torch, onnxruntime, mlflow, stable-baselines3)
are imported where they are used, and the API below is loaded on first use.

```python
import autotune

res = autotune.tune("experiments/digits-cpu.yaml")    # a path, a dict or a Job
res.to_frame()                                        # the trials as a pandas DataFrame
autotune.trials_frame("experiments/digits-cpu.yaml")  # the same, from the study, no tuning
```
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from autotune._version import __version__
from autotune.errors import AutotuneError, DependencyError, SpecError, StudyError, TrialFailed

#: public names loaded from autotune.api on first access (PEP 562); not imported for type
#: checkers either, since the layering test counts a TYPE_CHECKING import as a top-level edge
#: (that would make the package itself as heavy as autotune.api)
_LAZY = {"Results", "as_job", "job_schema", "load_results", "trials_frame", "tune"}

__all__ = [
    "AutotuneError",
    "DependencyError",
    "Results",
    "SpecError",
    "StudyError",
    "TrialFailed",
    "__version__",
    "as_job",
    "job_schema",
    "load_results",
    "trials_frame",
    "tune",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from autotune import api

        return getattr(api, name)
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)


# OLD-MODULE-NAMES-BEGIN (written by relayout.py)
#: module paths from before the stage packages (``autotune.tuner`` ...) keep working: importing one
#: gives the module at its new place itself (not a copy), loaded on first use
_MOVED = {
    "autotune.callbacks": "autotune.tuning.callbacks",
    "autotune.check": "autotune.job.check",
    "autotune.confirm": "autotune.tuning.confirm",
    "autotune.constraints": "autotune.core.constraints",
    "autotune.cron": "autotune.core.cron",
    "autotune.dashboard": "autotune.review.dashboard",
    "autotune.declared": "autotune.job.declared",
    "autotune.explore": "autotune.core.explore",
    "autotune.files": "autotune.core.files",
    "autotune.harness": "autotune.measure.harness",
    "autotune.harness.custom": "autotune.measure.workloads.objective",
    "autotune.harness.evaluate": "autotune.measure.workloads.forward",
    "autotune.harness.ortsession": "autotune.measure.runtimes.ortsession",
    "autotune.harness.workload": "autotune.measure.workloads.model",
    "autotune.liveness": "autotune.tuning.liveness",
    "autotune.loop": "autotune.tuning.loop",
    "autotune.machine": "autotune.job.machine",
    "autotune.metrics": "autotune.core.metrics",
    "autotune.optimize": "autotune.job.optimize",
    "autotune.pareto": "autotune.core.pareto",
    "autotune.plots": "autotune.review.plots",
    "autotune.portfolio": "autotune.job.portfolio",
    "autotune.refs": "autotune.core.refs",
    "autotune.report": "autotune.review.report",
    "autotune.runtimes": "autotune.measure.runtimes",
    "autotune.schedule": "autotune.retune.schedule",
    "autotune.space": "autotune.core.space",
    "autotune.spec": "autotune.job.spec",
    "autotune.study": "autotune.record.study",
    "autotune.tracking": "autotune.review.tracking",
    "autotune.transforms": "autotune.measure.transforms",
    "autotune.tuner": "autotune.tuning.tuner",
    "autotune.warmstart": "autotune.tuning.warmstart",
    "autotune.worker": "autotune.tuning.worker",
    "autotune.workloads": "autotune.measure.workloads",
    "autotune.yamlsrc": "autotune.core.yamlsrc",
}


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    @staticmethod
    def _target(name: str) -> str | None:
        for old in sorted(_MOVED, key=len, reverse=True):
            if name == old or name.startswith(old + "."):
                return _MOVED[old] + name[len(old):]
        return None

    def find_spec(self, name: str, path: object = None, target: object = None) -> Any:
        new = self._target(name) if name.startswith("autotune.") else None
        return importlib.util.spec_from_loader(name, self) if new else None

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        # the import system returns what sys.modules holds under the old name after this call
        sys.modules[module.__name__] = importlib.import_module(str(self._target(module.__name__)))


if not any(isinstance(f, _OldNames) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldNames())
# OLD-MODULE-NAMES-END
