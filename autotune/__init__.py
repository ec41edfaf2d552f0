"""autotune: hardware-aware hyperparameter and deployment auto-tuning.

Importing this package is cheap: heavy backends (torch, onnxruntime, mlflow, stable-baselines3)
are imported where they are used.
"""

from autotune.errors import AutotuneError, DependencyError, SpecError, StudyError, TrialFailed

__version__ = "0.1.0"

__all__ = [
    "AutotuneError",
    "DependencyError",
    "SpecError",
    "StudyError",
    "TrialFailed",
    "__version__",
]
