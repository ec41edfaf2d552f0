"""The bundle format and its loader.

A bundle is a folder::

    model.*         the runtime's artifact of the transformed model (model.onnx for ONNX Runtime,
                    model.safetensors for torch, model.xml/.bin for OpenVINO), not a recipe
    deploy.yaml     how to run it, generated from the trial's configuration by its runtime:
                    runtime, provider, threads, execution mode, batch size, ...
    manifest.json   measurements with their spread, constraints, hardware, versions, source,
                    named inputs/outputs, a SHA-256 and size for every other file, and ``integrity``:
                    the SHA-256 of the manifest itself (:func:`canonical_manifest`), optionally
                    an HMAC-SHA256 signature by a secret key (``autotune export --sign KEYFILE``)

:func:`load` refuses a bundle whose files do not match their checksums, warns when this machine's
hardware differs from the one the trial was measured on, and never unpickles anything: the
runtime named in deploy.yaml reads its files as bytes (after their checksum is verified).

Every file is read through :func:`read_bundle_file` (any runtime's loader calls it): names are
confined to the folder (no ``..``, no absolute path, no symlink, checked with ``lstat`` before
anything is opened, then opened with ``O_NOFOLLOW | O_NONBLOCK``), sizes are checked on the open
descriptor before a byte is read, and every refusal is a one-line :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.core.files import write_atomic
from autotune.errors import AutotuneError
from autotune.job.spec import Job
from autotune.measure.harness.hardware import fingerprint
from autotune.measure.harness.stats import measure
from autotune.measure.runtimes import get_runtime
from autotune.measure.runtimes.base import IOSpec
from autotune.measure.runtimes.ortsession import session_options as options

FORMAT = "autotune-bundle/1"
#: a language model's bundle (safetensors + tokenizer + generation settings; autotune.deploy.genserve)
GENERATION_FORMAT = "autotune-generation-bundle/1"
MANIFEST = "manifest.json"
DEPLOY = "deploy.yaml"
MODEL_ONNX = "model.onnx"
#: the manifest entry holding its own digest (and signature): ``{"sha256": ..., "signature": ...}``
INTEGRITY = "integrity"
SIGN_ALG = "hmac-sha256"

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


#: the manifest holds no model; anything larger is not one
MAX_MANIFEST_BYTES = 16 << 20
_HEX = frozenset("0123456789abcdef")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def canonical_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The bytes the manifest digest and signature cover: the manifest without its ``integrity``
    entry, as compact JSON with sorted keys (independent of how the file was indented)."""
    body = {k: v for k, v in manifest.items() if k != INTEGRITY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=str).encode()


def manifest_signature(manifest: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 (hex) of :func:`canonical_manifest` under ``key``."""
    return hmac.new(key, canonical_manifest(manifest), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name for a signing key (the start of its SHA-256), so a bundle signed with
    another key says so without revealing anything usable about the key."""
    return hashlib.sha256(b"autotune-bundle-key:" + key).hexdigest()[:16]


def read_key(path: str | Path) -> bytes:
    """A signing key file: its bytes (surrounding whitespace stripped), at least 16 of them."""
    p = Path(path)
    try:
        key = p.read_bytes().strip()
    except OSError as exc:
        raise BundleError(f"cannot read the signing key file {p}: {exc.strerror or exc}.") from None
    if len(key) < 16:
        raise BundleError(f"the signing key file {p} holds {len(key)} bytes; use at least 16 "
                          "random bytes (e.g. 'head -c 32 /dev/urandom | base64 > KEYFILE').")
    return key


def safe_path(bundle: str | Path, name: Any) -> Path:
    """The path of the bundle file ``name``, confined to the bundle folder.

    ``name`` must be a relative path of plain components (no ``..``, no absolute path, no
    backslash or NUL), and no component inside the bundle may be a symlink; checked with
    ``lstat`` before anything is opened.  Raises :class:`TamperedBundleError` (one line) else.
    """
    root = Path(bundle).resolve()
    safe_name(root, name)
    path = root
    for part in name.split("/"):
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise BundleError(f"the bundle file {root / name} is missing.") from None
        except OSError as exc:
            raise BundleError(f"cannot read the bundle file {root / name}: "
                              f"{exc.strerror or exc}.") from None
        if stat.S_ISLNK(st.st_mode):
            raise TamperedBundleError(f"the bundle file {path} is a symlink; bundle files must be "
                                      "plain files inside the bundle folder, refusing to read it.")
    if not path.resolve().is_relative_to(root):  # belt and braces (checked above)
        raise TamperedBundleError(f"the bundle file {name!r} lies outside {root}.")
    return path


def _read_regular(path: Path, limit: int, what: str) -> bytes:
    """Read a plain file without following a symlink, without blocking on a FIFO or device, and
    refusing one larger than ``limit`` bytes before reading it."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BundleError(f"the {what} {path} is missing.") from None
    except OSError as exc:  # ELOOP: a symlink appeared after the lstat
        raise TamperedBundleError(f"cannot open the {what} {path} as a plain file: "
                                  f"{exc.strerror or exc}.") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TamperedBundleError(f"the {what} {path} is not a plain file; refusing to read it.")
        if st.st_size > limit:
            raise TamperedBundleError(f"the {what} {path} has {st.st_size} bytes, more than the "
                                      f"{limit} expected; refusing to read it.")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TamperedBundleError(f"the {what} {path} grew past {limit} bytes while being read.")
    return data


def _check_files_section(path: Path, files: Any) -> dict[str, dict[str, Any]]:
    """``files``: a mapping name → {sha256: 64 hex digits, bytes: size}, every name safe."""
    if not isinstance(files, Mapping):
        raise BundleError(f"{path}: 'files' must be a mapping of file name to "
                          f"{{sha256, bytes}}, got {type(files).__name__}.")
    for name, entry in files.items():
        if not isinstance(entry, Mapping):
            raise BundleError(f"{path}: files[{name!r}] must be a mapping with 'sha256' and "
                              f"'bytes', got {type(entry).__name__}.")
        digest, size = entry.get("sha256"), entry.get("bytes")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise BundleError(f"{path}: files[{name!r}].sha256 must be 64 lowercase hex digits.")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BundleError(f"{path}: files[{name!r}].bytes must be a non-negative integer "
                              "(the file's size).")
        if not isinstance(name, str) or name in (MANIFEST,):
            raise TamperedBundleError(f"{path}: files names an invalid file {name!r}.")
        safe_name(path.parent, name)
    return {str(k): dict(v) for k, v in files.items()}


def safe_name(root: Path, name: Any) -> None:
    """Refuse a file name that could leave the bundle folder (checked on the name alone, before
    any file system access)."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise TamperedBundleError(f"the manifest of {root} names an invalid file {name!r}.")
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or "\0" in name
            or any(part in ("", ".", "..") for part in parts)):
        raise TamperedBundleError(f"the manifest of {root} names the file {name!r}, which is not "
                                  "inside the bundle folder; refusing to read it.")


_REQUIRED_KEY: list[bytes] = []  # set by require_signature: this process's trust policy


def require_signature(key: bytes | None) -> None:
    """From now on this process reads only bundles signed with ``key`` (``None``: no longer
    required); :func:`read_manifest` (so :func:`load`, :func:`verify` and the server's every
    swap) uses it when no key is passed.  ``autotune serve --verify-key`` sets it."""
    _REQUIRED_KEY[:] = [key] if key is not None else []


def seal_manifest(manifest: Mapping[str, Any], key: bytes | None = None) -> dict[str, Any]:
    """``manifest`` with its ``integrity`` entry: the SHA-256 of its canonical form
    (:func:`autotune.deploy.bundle.canonical_manifest`) and, with ``key``, an HMAC-SHA256
    signature of the same bytes.  The digest lives inside the manifest, so the one atomic write
    of ``manifest.json`` covers it (a reader never sees a manifest and a digest out of step)."""
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != INTEGRITY},
                                 default=str))  # as it will be read back
    integrity: dict[str, Any] = {
        "sha256": hashlib.sha256(canonical_manifest(body)).hexdigest(),
        "covers": "manifest.json without 'integrity', JSON with sorted keys, separators ',' ':'",
    }
    if key is not None:
        integrity["signature"] = {"alg": SIGN_ALG, "key_id": key_id(key),
                                  "value": manifest_signature(body, key)}
    return {**body, INTEGRITY: integrity}


def write_manifest(out: Path, manifest: Mapping[str, Any], *, key: bytes | None = None
                   ) -> dict[str, Any]:
    """Seal ``manifest`` (:func:`seal_manifest`) and write it atomically as ``out/manifest.json``;
    returns what was written."""
    sealed = seal_manifest(manifest, key)
    write_atomic(Path(out) / MANIFEST, json.dumps(sealed, indent=2).encode())
    return sealed


def read_manifest(bundle: str | Path, *, key: bytes | None = None) -> dict[str, Any]:
    """The bundle's manifest, checked: a plain file inside the folder, its ``integrity`` digest
    matching its content, a well-formed ``files`` section with safe names and, when ``key`` is
    given (or set by :func:`require_signature`), a valid signature by that key (an unsigned
    bundle is then refused)."""
    if key is None and _REQUIRED_KEY:
        key = _REQUIRED_KEY[0]
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"no bundle folder at {root}.")
    root = root.resolve()
    path = root / MANIFEST
    if not os.path.lexists(path):
        raise BundleError(f"{root} is not a bundle: it has no {MANIFEST}.")
    if os.path.islink(path):
        raise TamperedBundleError(f"{path} is a symlink; refusing to read it.")
    raw = _read_regular(path, MAX_MANIFEST_BYTES, "bundle manifest")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path} is not readable JSON: {_one_line(str(exc))}") from None
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, GENERATION_FORMAT):
        raise BundleError(f"{path} is not an autotune bundle manifest (format {FORMAT!r} or "
                          f"{GENERATION_FORMAT!r} expected).")
    integrity = data.get(INTEGRITY)
    if not isinstance(integrity, Mapping) or not isinstance(integrity.get("sha256"), str):
        raise TamperedBundleError(f"{path} carries no manifest digest ('{INTEGRITY}.sha256'): it "
                                  "was modified or written by an older autotune; export the "
                                  "bundle again (autotune export).")
    if not hmac.compare_digest(hashlib.sha256(canonical_manifest(data)).hexdigest(),
                               integrity["sha256"]):
        raise TamperedBundleError(f"{path} was modified after export: its content does not match "
                                  "its recorded digest; export the bundle again (autotune export).")
    data["files"] = _check_files_section(path, data.get("files", {}))
    model = data.get("model", MODEL_ONNX)
    safe_name(root, model)
    if key is not None:
        sig = integrity.get("signature")
        if not isinstance(sig, Mapping) or not isinstance(sig.get("value"), str):
            raise TamperedBundleError(f"{root} is not signed, and a signing key was given; refusing "
                                      "it (export it with 'autotune export --sign KEYFILE').")
        if sig.get("alg") != SIGN_ALG:
            raise TamperedBundleError(f"{root} is signed with {sig.get('alg')!r}; only {SIGN_ALG} "
                                      "is supported.")
        if not hmac.compare_digest(manifest_signature(data, key), sig["value"]):
            other = "" if sig.get("key_id") == key_id(key) else \
                f" (it was signed with key {sig.get('key_id')!r}, the given key is {key_id(key)!r})"
            raise TamperedBundleError(f"{root} has an invalid signature{other}; refusing it.")
    return data


def read_bundle_file(bundle: str | Path, name: str, files: Mapping[str, Any]) -> bytes:
    """The bytes of the bundle file ``name``, checked against the manifest's ``files`` entry.

    The one safe reader for every runtime's loader: the name must be listed and confined to the
    folder (:func:`safe_path`: no ``..``, absolute path or symlink), the file must be a plain
    file whose size (``fstat`` on the descriptor opened with ``O_NOFOLLOW``) equals the recorded
    size before a byte is read, and its SHA-256 must match.  Read once: no check-then-use gap.
    """
    root = Path(bundle).resolve()
    safe_name(root, name)
    if name not in files:
        raise TamperedBundleError(f"{root / name} is not listed in the bundle's {MANIFEST}.")
    entry = files[name]
    if not isinstance(entry, Mapping) or not isinstance(entry.get("bytes"), int):
        raise BundleError(f"{root / MANIFEST}: files[{name!r}] has no recorded size.")
    path = safe_path(root, name)
    data = _read_regular(path, int(entry["bytes"]), "bundle file")
    if len(data) != entry["bytes"]:
        raise TamperedBundleError(f"the bundle file {path} was modified: it has {len(data)} bytes, "
                                  f"the manifest recorded {entry['bytes']}.")
    want = entry.get("sha256")
    got = hashlib.sha256(data).hexdigest()
    if not isinstance(want, str) or not hmac.compare_digest(got, want):
        raise TamperedBundleError(
            f"the bundle file {path} was modified: its SHA-256 is {got}, the manifest recorded "
            f"{want}. Refusing to load it; export the bundle again (autotune export)."
        )
    return data


def read_bundle_yaml(bundle: str | Path, name: str, files: Mapping[str, Any]) -> dict[str, Any]:
    """A YAML mapping from the bundle (e.g. ``deploy.yaml``), read by :func:`read_bundle_file`
    and parsed with ``yaml.safe_load``; anything else is a one-line :class:`BundleError`."""
    import yaml

    data = read_bundle_file(bundle, name, files)
    try:
        value = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BundleError(f"{Path(bundle) / name} is not readable YAML: "
                          f"{_one_line(str(exc))}") from None
    if not isinstance(value, dict):
        raise BundleError(f"{Path(bundle) / name} must be a mapping.")
    return value


def _checked_bytes(root: Path, name: str, files: Mapping[str, Any]) -> bytes:
    """The file's bytes, after checking them against the manifest (see :func:`read_bundle_file`)."""
    return read_bundle_file(root, name, files)


def verify(bundle: str | Path, *, key: bytes | None = None) -> dict[str, Any]:
    """Check the manifest and every file it lists; returns the manifest.  Raises on a mismatch."""
    root = Path(bundle)
    manifest = read_manifest(root, key=key)
    files = manifest["files"]
    for name in files:
        read_bundle_file(root, name, files)
    return manifest


def hardware_matches(manifest: Mapping[str, Any]) -> bool | None:
    """Whether this machine's hardware digest equals the recorded one (None: nothing recorded)."""
    want = (manifest.get("hardware") or {}).get("digest")
    if not want:
        return None
    return fingerprint().digest() == want


#: one named input or output (name, dtype, shape; None: dynamic, the first axis is the batch)
InputSpec = IOSpec


@dataclass(frozen=True)
class Predictor:
    """A loaded bundle: ``predict(batch)`` runs the model as the trial was measured.

    ``batch`` is one array (single-input models), a sequence of arrays (one per input) or a
    mapping input name → array; the first axis is the batch.  :meth:`predict` returns the model's
    first output; :meth:`predict_all` every output by name (``outputs`` lists them).
    ``_session`` is the runtime's :class:`~autotune.measure.runtimes.base.Runner`.
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
    try:
        return options(deploy)
    except ValueError as exc:
        raise BundleError(f"deploy.yaml: {exc}.") from None


def load(bundle: str | Path, *, check_hardware: bool = True,
         key: bytes | str | Path | None = None) -> Predictor:
    """Load a bundle folder into a ready :class:`Predictor`.

    Verifies the manifest's digest and every file's size and SHA-256 first
    (:class:`TamperedBundleError` names the file that does not match; no path outside the folder
    is ever opened), then hands the files to the bundle's runtime (deploy.yaml ``runtime``;
    :meth:`~autotune.measure.runtimes.base.Runtime.load_bundle`), which runs them with the measured
    settings.  With ``key`` (the key's bytes, or the path of a key file) the bundle must carry a
    valid signature by that key.  When the hardware differs from the recorded fingerprint a
    :class:`HardwareMismatchWarning` is issued.
    """

    root = Path(bundle).resolve()
    manifest = read_manifest(root, key=read_key(key) if isinstance(key, str | Path) else key)
    files = manifest.get("files") or {}
    for name in files:  # every file, not only the ones read below
        if name not in (DEPLOY, manifest.get("model")):
            _checked_bytes(root, name, files)
    deploy = read_bundle_yaml(root, DEPLOY, files)
    model_name = deploy.get("model", MODEL_ONNX)
    if model_name != manifest.get("model"):
        raise TamperedBundleError(f"{root / DEPLOY} names the model file {model_name!r}, the "
                                  f"manifest {manifest.get('model')!r}.")
    runtime_name = deploy.get("runtime")
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
    """Latency of ``predictor`` at its tuned batch size (``autotune.measure.harness.stats.measure``).

    Without ``batch``, random inputs of the recorded input shapes are used.
    """
    if batch is None:
        rng = np.random.default_rng(0)
        batch = [rng.random((predictor.batch_size, *[d or 1 for d in s.shape[1:]])).astype(s.dtype)
                 for s in predictor.inputs]
    arrays = predictor.as_inputs(batch)
    return measure(lambda: predictor.predict(arrays), **measure_kwargs)


# ------------------------------------------------- manifest helpers (shared by export and genserve)
def redact_url(url: str) -> str:
    return re.sub(r"://[^/@]*@", "://***@", url)


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("autotune", "onnx", "onnxruntime", "torch", "safetensors", "openvino", "numpy",
                 "mlflow", "optuna"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def constraint_report(job: Job, view: Any, baseline: Mapping[str, float] | None
                 ) -> list[dict[str, Any]]:
    """Each of ``job``'s constraints against the trial ``view`` (an
    :class:`autotune.record.study.TrialView`, not imported here: it would load Optuna)."""
    out = []
    for c in job.parsed_constraints:
        try:
            bound: float | None = c.bound(baseline)
        except KeyError:
            bound = None
        value = view.metrics.get(c.metric)
        out.append({"constraint": c.text, "metric": c.metric, "op": c.op, "bound": bound,
                    "value": value, "satisfied": c.satisfied(view.metrics, baseline)
                    if bound is not None else None})
    return out


def mlflow_quiet() -> None:
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
