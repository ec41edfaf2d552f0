"""The bundle format and its loader.

A bundle is a folder::

    model.*         the runtime's artifact of the transformed model (model.onnx for ONNX Runtime,
                    model.safetensors for torch, model.xml/.bin for OpenVINO), not a recipe
    deploy.yaml     how to run it, generated from the trial's configuration by its runtime:
                    runtime, provider, threads, execution mode, batch size, ...
    manifest.json   measurements with their spread, constraints, hardware, versions, source,
                    named inputs/outputs, and a SHA-256 for every other file

:func:`load` refuses a bundle whose files do not match their checksums, warns when this machine's
hardware differs from the one the trial was measured on, and never unpickles anything: the
runtime named in deploy.yaml reads its files as bytes (after their checksum is verified).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import AutotuneError
from autotune.runtimes.base import IOSpec

FORMAT = "autotune-bundle/1"
MANIFEST = "manifest.json"
DEPLOY = "deploy.yaml"
MODEL_ONNX = "model.onnx"

#: ONNX tensor type → numpy dtype name
ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}
GRAPH_LEVELS = ("disabled", "basic", "extended", "all")


class BundleError(AutotuneError):
    """A bundle is missing, incomplete or not readable."""


class TamperedBundleError(BundleError):
    """A bundle file does not match the SHA-256 its manifest recorded (or is not listed)."""


class HardwareMismatchWarning(UserWarning):
    """The bundle was measured on other hardware: its latency figures may not hold here."""


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    root = Path(bundle)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"no bundle folder at {root}.")
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: it has no {MANIFEST}.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path} is not an autotune bundle manifest (format {FORMAT!r} expected).")
    return data


def _checked_bytes(root: Path, name: str, files: Mapping[str, Any]) -> bytes:
    """The file's bytes, after checking them against the manifest (read once: no TOCTOU)."""
    if name not in files:
        raise TamperedBundleError(f"{root / name} is not listed in the bundle's {MANIFEST}.")
    path = root / name
    if not path.is_file():
        raise BundleError(f"the bundle file {path} is missing.")
    data = path.read_bytes()
    want = files[name]["sha256"]
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise TamperedBundleError(
            f"the bundle file {path} was modified: its SHA-256 is {got}, the manifest recorded "
            f"{want}. Refusing to load it; export the bundle again (autotune export)."
        )
    return data


def verify(bundle: str | Path) -> dict[str, Any]:
    """Check every file listed in the manifest; returns the manifest.  Raises on a mismatch."""
    root = Path(bundle)
    manifest = read_manifest(root)
    files = manifest.get("files") or {}
    for name in files:
        _checked_bytes(root, name, files)
    return manifest


def hardware_matches(manifest: Mapping[str, Any]) -> bool | None:
    """Whether this machine's hardware digest equals the recorded one (None: nothing recorded)."""
    want = (manifest.get("hardware") or {}).get("digest")
    if not want:
        return None
    from autotune.harness.hardware import fingerprint

    return fingerprint().digest() == want


#: one named input or output (name, dtype, shape; None: dynamic, the first axis is the batch)
InputSpec = IOSpec


@dataclass(frozen=True)
class Predictor:
    """A loaded bundle: ``predict(batch)`` runs the model as the trial was measured.

    ``batch`` is one array (single-input models), a sequence of arrays (one per input) or a
    mapping input name → array; the first axis is the batch.  :meth:`predict` returns the model's
    first output; :meth:`predict_all` every output by name (``outputs`` lists them).
    ``_session`` is the runtime's :class:`~autotune.runtimes.base.Runner`.
    """

    path: Path
    manifest: Mapping[str, Any]
    deploy: Mapping[str, Any]
    inputs: tuple[InputSpec, ...]
    _session: Any = field(repr=False)
    outputs: tuple[InputSpec, ...] = ()

    @property
    def batch_size(self) -> int:
        return int(self.deploy.get("batch_size") or 1)

    @property
    def runtime(self) -> str:
        return str(self.deploy["runtime"])

    @property
    def session_options(self) -> dict[str, Any]:
        """The settings this predictor actually runs with, read back from its runtime (for ONNX
        Runtime: threads, graph optimization level, execution mode, providers)."""
        return dict(self._session.settings())

    def as_inputs(self, batch: Any) -> list[np.ndarray]:
        """Normalize ``batch`` to one C-contiguous array per model input, in the model's dtypes."""
        if isinstance(batch, Mapping):
            missing = [s.name for s in self.inputs if s.name not in batch]
            if missing:
                raise BundleError(f"inputs {missing} are missing; the model takes "
                                  f"{[s.name for s in self.inputs]}.")
            arrays = [batch[s.name] for s in self.inputs]
        elif isinstance(batch, np.ndarray):
            arrays = [batch]
        elif isinstance(batch, Sequence) and batch and all(isinstance(a, np.ndarray) for a in batch):
            arrays = list(batch)  # one array per input
        elif len(self.inputs) == 1:
            arrays = [batch]  # nested lists: one input
        elif isinstance(batch, Sequence):
            arrays = list(batch)
        else:
            raise BundleError(f"cannot read a batch of type {type(batch).__name__}.")
        if len(arrays) != len(self.inputs):
            raise BundleError(f"the model takes {len(self.inputs)} inputs, got {len(arrays)}.")
        out = []
        for spec, a in zip(self.inputs, arrays, strict=True):
            arr = np.ascontiguousarray(np.asarray(a, dtype=spec.dtype))
            if arr.ndim == len(spec.shape) - 1:
                arr = arr[None]  # one item without its batch axis
            if arr.ndim != len(spec.shape):
                raise BundleError(f"input '{spec.name}' must have {len(spec.shape)} axes "
                                  f"(batch first, shape {list(spec.shape)}); got {list(arr.shape)}.")
            for i, (want, got) in enumerate(zip(spec.shape[1:], arr.shape[1:], strict=True)):
                if want is not None and want != got:
                    raise BundleError(f"input '{spec.name}' axis {i + 1} must be {want}; got {got}.")
            out.append(arr)
        return out

    def predict(self, batch: Any) -> np.ndarray:
        """The model's first output for ``batch``."""
        if type(batch) is np.ndarray and len(self.inputs) == 1:  # fast path: no copies, no checks
            spec = self.inputs[0]
            if (batch.dtype == spec.dtype and batch.ndim == len(spec.shape)
                    and batch.flags.c_contiguous
                    and all(w is None or w == g for w, g in zip(spec.shape[1:], batch.shape[1:],
                                                                strict=True))):
                return self._session.first({spec.name: batch})
        arrays = self.as_inputs(batch)
        return self._session.first({s.name: a for s, a in zip(self.inputs, arrays, strict=True)})

    def predict_all(self, batch: Any) -> dict[str, np.ndarray]:
        """Every output of the model for ``batch``, by its name."""
        arrays = self.as_inputs(batch)
        return self._session.run({s.name: a for s, a in zip(self.inputs, arrays, strict=True)})

    def __call__(self, batch: Any) -> np.ndarray:
        return self.predict(batch)


def session_options(deploy: Mapping[str, Any]) -> Any:
    """ONNX Runtime session options from ``deploy.yaml`` (the same settings the harness used)."""
    from autotune.harness.ortsession import session_options as options

    try:
        return options(deploy)
    except ValueError as exc:
        raise BundleError(f"deploy.yaml: {exc}.") from None


def load(bundle: str | Path, *, check_hardware: bool = True) -> Predictor:
    """Load a bundle folder into a ready :class:`Predictor`.

    Verifies every file's SHA-256 first (:class:`TamperedBundleError` names the file that does
    not match), then hands the files to the bundle's runtime (deploy.yaml ``runtime``;
    :meth:`~autotune.runtimes.base.Runtime.load_bundle`), which runs them with the measured
    settings.  When the hardware
    differs from the recorded fingerprint a :class:`HardwareMismatchWarning` is issued.
    """
    import yaml

    root = Path(bundle).resolve()
    manifest = read_manifest(root)
    files = manifest.get("files") or {}
    for name in files:  # every file, not only the ones read below
        if name not in (DEPLOY, manifest.get("model")):
            _checked_bytes(root, name, files)
    deploy = yaml.safe_load(_checked_bytes(root, DEPLOY, files).decode())
    if not isinstance(deploy, dict):
        raise BundleError(f"{root / DEPLOY} must be a mapping.")
    model_name = deploy.get("model", MODEL_ONNX)
    if model_name != manifest.get("model"):
        raise TamperedBundleError(f"{root / DEPLOY} names the model file {model_name!r}, the "
                                  f"manifest {manifest.get('model')!r}.")
    runtime_name = deploy.get("runtime")
    from autotune.runtimes import get_runtime

    try:
        runtime = get_runtime(str(runtime_name))
    except AutotuneError as exc:
        raise BundleError(f"{root / DEPLOY}: runtime {runtime_name!r} cannot be loaded here: "
                          f"{exc}") from None
    if check_hardware and hardware_matches(manifest) is False:
        hw = manifest.get("hardware") or {}
        warnings.warn(
            f"the bundle {root.name} was measured on other hardware ({hw.get('summary', '?')}, "
            f"digest {hw.get('digest')}); its latency and cost figures may not hold on this "
            "machine.", HardwareMismatchWarning, stacklevel=2,
        )
    io = ([IOSpec.from_dict(d) for d in manifest.get("inputs") or []],
          [IOSpec.from_dict(d) for d in manifest.get("outputs") or []])
    try:
        runner = runtime.load_bundle(lambda name: _checked_bytes(root, name, files), deploy, io)
    except BundleError:
        raise
    except Exception as exc:  # a corrupt model that still matches its checksum, a missing EP
        raise BundleError(f"{runtime.name} cannot load {root / model_name}: {exc}") from None
    inputs = tuple(runner.inputs) or tuple(io[0])
    outputs = tuple(runner.outputs) or tuple(io[1])
    return Predictor(path=root, manifest=manifest, deploy=deploy, inputs=inputs, _session=runner,
                     outputs=outputs)


def benchmark(predictor: Predictor, batch: Any = None, **measure_kwargs: Any) -> Any:
    """Latency of ``predictor`` at its tuned batch size (``autotune.harness.stats.measure``).

    Without ``batch``, random inputs of the recorded input shapes are used.
    """
    from autotune.harness.stats import measure

    if batch is None:
        rng = np.random.default_rng(0)
        batch = [rng.random((predictor.batch_size, *[d or 1 for d in s.shape[1:]])).astype(s.dtype)
                 for s in predictor.inputs]
    arrays = predictor.as_inputs(batch)
    return measure(lambda: predictor.predict(arrays), **measure_kwargs)
