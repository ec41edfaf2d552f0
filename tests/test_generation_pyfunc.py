"""MLflow's pyfunc loads a text-generation bundle: the registered model generates the same greedy
text as the bundle's engine (tiny GLM-4, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.job.spec import load_job
from tests.test_generation import one_thread, write_job

__all__ = ["one_thread"]

pytestmark = pytest.mark.slow


def test_pyfunc_loads_a_generation_bundle(tmp_path: Path) -> None:
    import mlflow

    from autotune.deploy.export import export_bundle, register_bundle
    from autotune.deploy.genserve import GenerationService
    from autotune.measure.workloads.generation import GenerationEvaluator
    from autotune.tuning.tuner import run

    job = load_job(write_job(tmp_path))
    job = job.model_copy(update={"tracking": job.tracking.model_copy(update={"enabled": False}),
                                 "budget": job.budget.model_copy(update={"max_trials": 1})})
    run(job, harness=GenerationEvaluator(job))
    bundle = export_bundle(job, 0, out=tmp_path / "bundle", register=False).bundle
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = register_bundle(bundle, tracking_uri=uri, name="gen-test", alias="champion",
                          artifacts=tmp_path / "mlartifacts")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/gen-test@champion")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    prompts = [". a robot sees the trees", ". the small birds see"]
    import pandas as pd

    got = model.predict(pd.DataFrame({"prompt": prompts, "max_tokens": [5, 5]}))
    assert isinstance(got, list) and len(got) == 2 and all(got)
    svc = GenerationService(bundle)
    try:
        want = []
        for p in prompts:
            r = svc.submit(svc.tokenizer(p)["input_ids"], 5, lambda r, t: None, lambda r: None)
            r.finished.wait()
            want.append(svc.tokenizer.decode(r.tokens, skip_special_tokens=True))
    finally:
        svc.close()
    assert got == want
    assert reg.model_uri.startswith("models:/gen-test/")
