"""MLflow "model from code" for autotune bundles (no pickled Python objects in the registry).

``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"bundle": <folder>})`` stores this
source file; loading the model runs it, and :class:`BundleModel` loads the bundle with
:func:`autotune.deploy.load` (checksums verified, settings as measured).
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class BundleModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from autotune.deploy import load

        self.predictor = load(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        # no type hints: MLflow would read them as an input schema
        if hasattr(model_input, "to_numpy"):  # pandas DataFrame: one row per item
            model_input = model_input.to_numpy()
        return self.predictor.predict(model_input)


mlflow.models.set_model(BundleModel())
