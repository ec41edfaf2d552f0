"""Workloads: what one measurement of a job is.  :mod:`autotune.workloads.generation` measures
text generation (prompts → tokens at a concurrency); the single-forward workload lives in
:mod:`autotune.harness.evaluate`."""
