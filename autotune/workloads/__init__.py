"""Workloads: what one measurement of a job is.  The forward pass
(:mod:`autotune.harness.evaluate`), text generation (:mod:`autotune.workloads.generation`: prompts
→ tokens at a concurrency) and the user's own objective (:mod:`autotune.harness.custom`);
:mod:`autotune.workloads.registry` chooses one for a job."""
