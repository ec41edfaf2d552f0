"""Deployable bundles: export a measured configuration, load it anywhere, serve it.

* :func:`autotune.deploy.export.export_bundle` writes a bundle folder (the transformed model file,
  ``deploy.yaml``, ``manifest.json``) and registers it in the MLflow Model Registry with an alias.
* :func:`load` verifies the bundle's checksums and returns a :class:`Predictor` configured as the
  trial was measured.
* :mod:`autotune.deploy.serve` serves a bundle (or ``models:/name@alias``) over HTTP with
  micro-batching and hot swap.

Importing this package is light (numpy and yaml at most); runtimes load on use.
"""

from autotune.deploy.bundle import (
    BundleError,
    HardwareMismatchWarning,
    Predictor,
    TamperedBundleError,
    load,
    verify,
)

__all__ = [
    "BundleError",
    "HardwareMismatchWarning",
    "Predictor",
    "TamperedBundleError",
    "load",
    "verify",
]
