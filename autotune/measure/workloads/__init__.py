"""Workloads: what one measurement of a job is.  The forward pass
(:mod:`autotune.measure.workloads.forward`), text generation (:mod:`autotune.measure.workloads.generation`:
prompts
→ tokens at a concurrency) and the user's own objective (:mod:`autotune.measure.workloads.objective`);
:mod:`autotune.measure.workloads.registry` chooses one for a job."""
