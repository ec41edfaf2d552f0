"""Where the served model comes from, and what is being served: sources and :class:`Served`.

A source names the model to serve and tells when it changed:

* :class:`FolderSource` — a bundle folder, or a symbolic link to one.  The link is resolved at
  every poll, so flipping it (``ln -sfn v2 current``) swaps the model; the identity is the
  resolved folder plus the SHA-256 of its manifest (written last on export).
* :class:`RegistrySource` — ``models:/name@alias`` in an MLflow registry; the identity is the
  alias's version.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.deploy.bundle import MANIFEST, BundleError, mlflow_quiet
from autotune.errors import AutotuneError

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w.-]+)$")


class FolderSource:
    """A bundle folder (or a symlink to one, followed at every poll)."""

    def __init__(self, path: str | Path) -> None:
        self.link = Path(path).absolute()  # not resolved: a symlink is re-read at every poll
        self.path = self.link.resolve()
        self.uri = str(self.link)
        self._targets: dict[str, Path] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.link.name

    def current_id(self) -> str:
        target = self.link.resolve()
        if not target.is_dir():
            raise BundleError(f"no bundle folder at {self.link}"
                              + (f" (it links to {target})" if target != self.link else "")
                              + "; serve a folder written by `autotune export`, a symlink to one, "
                                "or models:/NAME@ALIAS.")
        try:
            manifest = hashlib.sha256((target / MANIFEST).read_bytes()).hexdigest()[:16]
        except OSError as exc:
            raise BundleError(f"cannot read {target / MANIFEST}: {exc}") from None
        ident = f"{manifest}-{hashlib.sha256(str(target).encode()).hexdigest()[:8]}"
        with self._lock:
            self._targets[ident] = target
            if len(self._targets) > 64:
                self._targets.pop(next(iter(self._targets)))
        return ident

    def fetch(self, ident: str) -> Path:
        with self._lock:
            target = self._targets.get(ident)
        self.path = target if target is not None else self.link.resolve()
        return self.path

    def release(self, path: Path) -> None:
        pass

    def version_label(self, ident: str) -> str:
        return f"manifest:{ident.split('-')[0]}"


class RegistrySource:
    """``models:/name@alias`` in an MLflow registry; its identity is the alias's version."""

    def __init__(self, uri: str, tracking_uri: str | None) -> None:
        m = _MODELS_URI.match(uri)
        if not m:
            raise AutotuneError(f"cannot read the model URI {uri!r}; expected models:/NAME@ALIAS.")
        mlflow_quiet()
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.name, self.alias = m["name"], m["alias"]
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def current_id(self) -> str:
        try:
            return str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except Exception as exc:
            raise BundleError(f"cannot resolve {self.uri} in {self.tracking_uri}: {exc}") from None

    def fetch(self, ident: str) -> Path:
        import mlflow

        tmp = Path(tempfile.mkdtemp(prefix=f"autotune-serve-{self.name}-v{ident}-"))
        with _registry(self.tracking_uri):
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.name}/{ident}", dst_path=str(tmp),
                tracking_uri=self.tracking_uri))
        found = sorted(local.rglob(MANIFEST))
        if not found:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"models:/{self.name}/{ident} holds no autotune bundle.")
        return found[0].parent

    def release(self, path: Path) -> None:
        for parent in path.parents:
            if parent.name.startswith("autotune-serve-"):
                shutil.rmtree(parent, ignore_errors=True)
                return

    def version_label(self, ident: str) -> str:
        return f"{self.name}/{ident}"


@contextlib.contextmanager
def _registry(uri: str) -> Any:
    import mlflow

    prev = mlflow.get_registry_uri()
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_registry_uri(prev)


def open_source(source: str, tracking_uri: str | None = None) -> FolderSource | RegistrySource:
    if source.startswith("models:/"):
        return RegistrySource(source, tracking_uri)
    return FolderSource(source)


def model_kind(model: Any) -> str:
    """What kind of model a loaded bundle is (``predict``: a :class:`Predictor`); the app serves
    the routes registered for that kind (:func:`autotune.deploy.serve.app.register_kind`)."""
    return str(getattr(model, "kind", None) or "predict")


@dataclass(frozen=True)
class Served:
    predictor: Any  # a Predictor (kind "predict"), or another kind's loaded model
    ident: str
    version: str
    loaded_at: float
    path: Path

    @property
    def kind(self) -> str:
        return model_kind(self.predictor)

    @property
    def batch_size(self) -> int:
        return int(getattr(self.predictor, "batch_size", 1) or 1)
