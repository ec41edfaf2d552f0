"""MLflow "model from code" for autotune bundles (no pickled Python objects in the registry).

``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"bundle": <folder>})`` stores this
source file; loading the model runs it, and :class:`BundleModel` loads the bundle with
:func:`autotune.deploy.load` (checksums verified, settings as measured).

``predict``'s input is annotated ``np.ndarray``: a type MLflow infers no schema from (the signature
is the bundle's, given when the model is logged), and without any annotation MLflow 3 prints a
coloured "add type hints" warning whenever this file is loaded.

A text-generation bundle loads its engine as the server does
(:class:`autotune.deploy.genserve.GenerationService`: the tuned settings, the engine the trial
measured); ``predict`` takes prompts (a list of strings, a string, or a DataFrame whose
``prompt`` column, else first column, holds them, with an optional ``max_tokens`` column;
or ``params={"max_tokens": N}`` where the signature declares it; default 32) and
returns the greedy completions as a list of strings, all prompts submitted at once so that the
engine batches them as tuned.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class BundleModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from autotune.deploy.genserve import GenerationService, is_generation_bundle

        bundle = context.artifacts["bundle"]
        self.generator = None
        if is_generation_bundle(bundle):
            self.generator = GenerationService(bundle)
            return
        from autotune.deploy import load

        self.predictor = load(bundle)

    def predict(self, context, model_input: np.ndarray, params=None):
        # only the input is annotated, with a type MLflow reads no schema from (see above)
        if self.generator is not None:
            return self._generate(model_input, params or {})
        if hasattr(model_input, "to_numpy"):  # pandas DataFrame: one row per item
            model_input = model_input.to_numpy()
        return self.predictor.predict(model_input)

    def _generate(self, model_input: Any, params: dict) -> list[str]:
        limit = int(params.get("max_tokens") or 32)
        if hasattr(model_input, "columns"):  # pandas DataFrame
            col = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
            prompts = [str(p) for p in model_input[col]]
            limits = [int(n) for n in model_input["max_tokens"]] \
                if "max_tokens" in model_input.columns else [limit] * len(prompts)
        else:
            prompts = [model_input] if isinstance(model_input, str) else \
                [str(p) for p in np.asarray(model_input, dtype=object).ravel()]
            limits = [limit] * len(prompts)
        svc = self.generator
        tok = svc.tokenizer
        reqs = [svc.submit(tok(p)["input_ids"], n, lambda r, t: None, lambda r: None)
                for p, n in zip(prompts, limits, strict=True)]
        out = []
        for r in reqs:
            r.finished.wait()
            if r.error:
                raise RuntimeError(f"generation failed: {r.error}")
            out.append(tok.decode(r.tokens, skip_special_tokens=True))
        return out


mlflow.models.set_model(BundleModel())
