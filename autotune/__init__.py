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
