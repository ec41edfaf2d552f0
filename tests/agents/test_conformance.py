"""Every registered agent (Optuna, scikit-optimize, reinforcement learning, ...) passes the
shipped conformance checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.agents import AGENTS
from autotune.errors import DependencyError
from autotune.testing.agents import CHECKS, make


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_agent_conformance(name: str, check, tmp_path: Path) -> None:
    try:
        make(name)
    except DependencyError as exc:
        pytest.skip(f"agent '{name}' is not available: {exc}")
    check(name, tmp_path)
