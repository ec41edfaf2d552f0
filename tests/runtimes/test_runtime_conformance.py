"""Every registered runtime (built-in or installed plugin) passes autotune.testing.runtimes."""

from __future__ import annotations

import pytest

from autotune.measure.runtimes import registered
from autotune.testing.runtimes import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("runtime", list(registered()))
def test_runtime_conformance(runtime, check, tmp_path):
    from autotune.measure.runtimes import get_runtime

    why = get_runtime(runtime).available({})
    if why:
        pytest.skip(why)
    check(runtime, tmp_path)
