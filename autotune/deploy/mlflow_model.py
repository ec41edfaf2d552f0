"""MLflow "model from code" for autotune bundles (no pickled Python objects in the registry).

``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"bundle": <folder>})`` stores this
source file; loading the model runs it, and :class:`BundleModel` loads the bundle with
:func:`autotune.deploy.load` (checksums verified, settings as measured).

``predict``'s input is annotated ``np.ndarray``: a type MLflow infers no schema from (the signature
is the bundle's, given when the model is logged), and without any annotation MLflow 3 prints a
coloured "add type hints" warning whenever this file is loaded.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class BundleModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from autotune.deploy import load

        self.predictor = load(context.artifacts["bundle"])

    def predict(self, context, model_input: np.ndarray, params=None):
        # only the input is annotated, with a type MLflow reads no schema from (see above)
        if hasattr(model_input, "to_numpy"):  # pandas DataFrame: one row per item
            model_input = model_input.to_numpy()
        return self.predictor.predict(model_input)


mlflow.models.set_model(BundleModel())
