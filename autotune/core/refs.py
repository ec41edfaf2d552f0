"""Resolve ``package.module:function`` references given in job files."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autotune.errors import SpecError


def resolve(ref: str, *, search_paths: Sequence[str | Path] = (), field: str = "") -> Callable[..., Any]:
    """Import ``module:function``; the job file's folder is searched first."""
    module_name, _, attr = ref.partition(":")
    for p in reversed([str(Path(p).resolve()) for p in search_paths]):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            where = ", ".join(str(p) for p in search_paths) or "the Python path"
            raise SpecError(
                f"cannot import module '{module_name}' (searched {where} and the Python path).",
                path=field or None,
                hint="Put the module next to the job file or install its package.",
            ) from None
        raise
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise SpecError(
            f"module '{module_name}' has no attribute '{attr}'.", path=field or None
        ) from None
    if not callable(fn):
        raise SpecError(f"'{ref}' is not callable.", path=field or None)
    return fn
