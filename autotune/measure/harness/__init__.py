"""Measurement harness: trustworthy latency statistics and a description of the machine.

* :mod:`autotune.measure.harness.stats` -- timing loops that stop when the median is known well enough,
  with percentiles and a confidence interval (numpy + stdlib only).
* :mod:`autotune.measure.harness.hardware` -- what machine this is (fingerprint, capabilities), its
  measured peak FLOP/s and default prices for cost metrics.

Importing this package is cheap; import the submodules where they are needed.
"""
